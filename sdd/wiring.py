"""dvc.yaml's code dependencies, generated from the import graph.

    python -m sdd.wiring --write     # rewrite every stage's code deps in dvc.yaml
    python -m sdd.wiring --check     # exit 1 and show the difference when dvc.yaml is out of date

Each stage's command runs one module (`python -m stages.<name>`); its code deps are that module and
every project module it imports, transitively (function-local imports included, read from the
AST), as files, or as a folder when the stage runs every module in it. Exactly these: a module the
stage does not run is not a dep (no re-run when it changes), and a new import needs no hand edit.
The other deps (data, models, configs) are written by hand and kept as they are, comments included.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sdd", "stages")
CODE_DEP = re.compile(r"^\s+- ((?:sdd|stages)(?:/[\w.]+)*)\s*$")
STAGE = re.compile(r"^  ([\w-]+):\s*$")
COMMAND = re.compile(r"python -m (stages\.\w+)")


def module_file(name: str, root: Path = REPO) -> Path | None:
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def imports_of(path: Path, root: Path = REPO) -> frozenset[str]:
    """Project modules a file imports (anywhere in it, function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n, root)}
    return frozenset(found)


def closure(module: str, root: Path = REPO) -> set[str]:
    """`module` and every project module it imports, transitively (a package's __init__ included)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i]), root)]
        path = module_file(name, root)
        assert path is not None, name
        todo += sorted(imports_of(path, root))
    return seen


def code_deps(module: str, root: Path = REPO) -> list[str]:
    """The files `module` runs, relative to `root`, a folder standing for all of its modules."""
    files = {module_file(m, root).relative_to(root).as_posix() for m in closure(module, root)}  # type: ignore[union-attr]
    files = {f for f in files if (root / f).stat().st_size > 0}  # an empty package marker runs nothing
    deps: set[str] = set()
    for folder in sorted({str(Path(f).parent) for f in files}):
        if folder in PACKAGES:  # the top-level packages: always file by file
            continue
        members = {p.relative_to(root).as_posix() for p in (root / folder).glob("*.py") if p.stat().st_size > 0}
        if members <= files and len(members) > 1:
            deps.add(folder)
    covered = {f for f in files if str(Path(f).parent) in deps}
    return sorted(deps | (files - covered))


def wired(text: str, root: Path = REPO) -> str:
    """`text` (a dvc.yaml) with each stage's code deps replaced by the generated ones, placed first."""
    out: list[str] = []
    stage_cmd: str | None = None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if STAGE.match(line):
            block = "".join(lines[i + 1 : next((j for j in range(i + 1, len(lines)) if STAGE.match(lines[j])), None)])
            found = COMMAND.search(block)
            stage_cmd = found.group(1) if found else None
        if CODE_DEP.match(line):
            continue  # replaced below, after the `deps:` line
        out.append(line)
        if stage_cmd and line.strip() == "deps:":
            indent = " " * (len(line) - len(line.lstrip()) + 2)
            out += [f"{indent}- {dep}\n" for dep in code_deps(stage_cmd, root)]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdd.wiring", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml")
    mode.add_argument("--check", action="store_true", help="fail when dvc.yaml differs from the generated deps")
    parser.add_argument("--file", type=Path, default=REPO / "dvc.yaml")
    args = parser.parse_args(argv)
    text = args.file.read_text(encoding="utf-8")
    new = wired(text, args.file.resolve().parent)
    if args.write:
        if new != text:
            args.file.write_text(new, encoding="utf-8")
        return 0
    if new != text:
        diff = difflib.unified_diff(text.splitlines(), new.splitlines(), str(args.file), "generated", lineterm="")
        print("\n".join(diff))
        print(f"{args.file}: code deps are out of date; run: python -m sdd.wiring --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
