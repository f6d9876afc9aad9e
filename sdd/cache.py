"""One mechanism for "was this computed from the same inputs?": fingerprints of settings, digests
of files and folders, and a resumable store of finished pieces of work.

    key = fingerprint({"model": tree_digest(model_dir), "settings": cfg.model_dump()})
    store = PieceStore(scratch / "distill" / "gsm8k", key)    # drops pieces of any other key
    store.load("chunk-00000", ids) or store.save("chunk-00000", ids, payload)

DVC caches whole stage outputs; this caches the pieces *inside* a long stage (generation chunks,
evaluation tasks, training checkpoints), so a killed run resumes with what it had finished and
never reuses a piece made from other inputs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdd.artifacts import atomic_path

log = logging.getLogger(__name__)


def fingerprint(obj: Any, length: int = 16) -> str:
    """The first `length` hex digits of sha256 over `obj` as canonical JSON (sorted keys, UTF-8)."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def _update(digest: Any, path: Path) -> None:
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)


def file_digest(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 (hex) over the bytes of `paths`, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        _update(digest, Path(path))
    return digest.hexdigest()


def tree_digest(directory: str | os.PathLike, cache: str | os.PathLike | None = None) -> str:
    """sha256 (hex) over every file of a directory (relative names and their sha256): the key of what
    was computed from a model, so a piece is reused only for the very same weights and tokenizer.
    With `cache`, see `cached_manifest`."""
    manifest = cached_manifest(directory, cache)
    return fingerprint([(e["path"], e["sha256"]) for e in manifest], length=64)


def cached_manifest(directory: str | os.PathLike, cache: str | os.PathLike | None = None) -> list[dict]:
    """`tree_manifest` of a directory. With `cache` (a folder, e.g. paths.scratch), the manifest is
    kept there between runs and a file whose size and mtime are unchanged is not read again: an
    unchanged multi-GB model costs a `stat` per file instead of reading every byte on each run. The
    mtimes stay in that machine-local cache, never in an artifact."""
    directory = Path(directory)
    store = None
    if cache is not None:
        name = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
        store = Path(cache) / "digests" / f"{name}.json"
    previous = None
    if store is not None and store.is_file():
        try:
            previous = json.loads(store.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None  # a damaged cache is only a slower digest
    manifest = tree_manifest(directory, previous)
    if store is not None and manifest != previous:
        with atomic_path(store) as tmp:
            tmp.write_text(json.dumps(manifest), encoding="utf-8")
    return manifest


class PieceStore:
    """Finished pieces of one stage run, as JSON files in `root/<key>/`.

    Opening a store for `key` removes the folders of every other key under `root` (work made from
    other inputs). Each piece records the item ids it covers and is read back only if they match.
    """

    def __init__(self, root: str | os.PathLike, key: str):
        self.root, self.key = Path(root), key
        self.dir = self.root / key
        for stale in (p for p in self.root.glob("*") if p.is_dir() and p.name != key):
            log.info("removing pieces made from other inputs: %s", stale)
            shutil.rmtree(stale)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def load(self, name: str, ids: list[Any]) -> Any | None:
        """The payload saved for `name` if it covers exactly `ids`, else None."""
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            log.warning("ignoring unreadable piece %s (%s); recomputing it", path, err)
            return None
        if not isinstance(data, dict) or data.get("ids") != ids:
            log.warning("%s holds other items than expected; recomputing it", path)
            return None
        return data["payload"]

    def save(self, name: str, ids: list[Any], payload: Any) -> Any:
        with atomic_path(self.path(name)) as tmp:
            tmp.write_text(json.dumps({"ids": ids, "payload": payload}, default=str), encoding="utf-8")
        return payload


def keyed_dir(run_dir: str | os.PathLike, key: str) -> Path:
    """A folder for resumable state (e.g. Trainer checkpoints) kept only while `key` is unchanged:
    if it was written for another key it is emptied first."""
    run_dir = Path(run_dir)
    stamp = run_dir / "fingerprint"
    if run_dir.exists() and (not stamp.is_file() or stamp.read_text() != key):
        log.info("inputs changed since the state in %s was written; starting over", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(key)
    return run_dir


def tree_manifest(directory: str | os.PathLike, previous: list[dict] | None = None) -> list[dict]:
    """Every file of a directory with its size, mtime and sha256, sorted by relative path. A file
    whose path, size and mtime match an entry of `previous` keeps that entry's sha256 unread (as DVC
    does), so re-fingerprinting an unchanged multi-GB model folder costs only a `stat` per file."""
    directory = Path(directory)
    known = {(e["path"], e["bytes"], e["mtime_ns"]): e["sha256"] for e in previous or []}
    out = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        rel, stat = path.relative_to(directory).as_posix(), path.stat()
        sha = known.get((rel, stat.st_size, stat.st_mtime_ns)) or file_digest([path])
        out.append({"path": rel, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha})
    return out
