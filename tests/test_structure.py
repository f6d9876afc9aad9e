"""The code's shape, checked: the core never imports the stages, no import circles, every stage's
`deps` in dvc.yaml cover the project modules it runs (transitively, from the AST), every stage's
`params` cover the keys it reads, section defaults equal params.yaml, stages stay thin."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from sdd.config import Params, load_params

from conftest import REPO

PACKAGES = ("sdd", "stages")


def module_file(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(path: Path) -> set[str]:
    """Project modules a file imports (anywhere in it, function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name):
                found.add(name)
    return found


def closure(module: str) -> set[str]:
    """`module` and every project module it imports, transitively (a package's __init__ included)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i]))]
        todo += sorted(imports_of(module_file(name)))
    return seen


def all_modules() -> list[str]:
    files = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    names = [".".join(p.relative_to(REPO).with_suffix("").parts) for p in files]
    return sorted(n.removesuffix(".__init__") for n in names)


def test_core_never_imports_stages():
    offenders = {
        m: sorted(i for i in imports_of(module_file(m)) if i.startswith("stages"))
        for m in all_modules()
        if m.startswith("sdd")
    }
    assert not {m: i for m, i in offenders.items() if i}


def test_no_import_cycles():
    modules = all_modules()
    graph = {m: {i for i in imports_of(module_file(m)) if i in modules and i != m} for m in modules}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_module(spec: dict) -> str:
    cmd = (spec.get("do") or spec)["cmd"]
    return re.search(r"python -m (stages\.\w+)", cmd).group(1)


@pytest.mark.parametrize("stage", sorted(stages()))
def test_stage_deps_cover_the_code_it_runs(stage):
    spec = stages()[stage]
    deps = [d for d in (spec.get("do") or spec)["deps"] if not d.startswith("${")]
    files = {module_file(m).relative_to(REPO).as_posix() for m in closure(stage_module(spec))}
    files = {f for f in files if (REPO / f).stat().st_size > 0}  # an empty package marker runs nothing
    uncovered = sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
    assert not uncovered, f"dvc.yaml stage {stage!r} runs {uncovered} but does not list it (or its folder) in deps"


@pytest.mark.parametrize(
    "section",
    [
        "paths",
        "base_model",
        "prepare",
        "layer_scores",
        "prune",
        "distill",
        "merge",
        "speculate",
        "finetune",
        "evaluate",
        "report",
    ],
)
def test_section_defaults_equal_params_yaml(section):
    """params.yaml is the documentation and the defaults of the models are the same values: one source."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    from_file = getattr(load_params(REPO / "params.yaml"), section)
    default = Params.model_fields[section].default
    assert section in raw
    assert default == from_file, f"{section}: the pydantic defaults differ from params.yaml"


def test_stages_are_thin():
    long = {p.name: n for p in (REPO / "stages").glob("*.py") if (n := len(p.read_text().splitlines())) > 90}
    assert not long, f"stage modules over 90 lines (move logic into sdd/): {long}"


def test_each_name_list_has_one_source():
    """Params choices (pydantic Literals) and the registries that implement them name the same things."""
    from sdd.config.datasets import FORMATS
    from sdd.config.evaluate import EVAL_TASKS
    from sdd.config.layer_scores import METRICS, PROXIES
    from sdd.data.adapters import ADAPTERS
    from sdd.eval.tasks import TASKS

    assert set(ADAPTERS) == set(FORMATS)
    assert set(TASKS) == set(EVAL_TASKS)
    assert METRICS == (*PROXIES, "kl_to_base")
