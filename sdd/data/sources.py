"""Where a dataset's rows come from, and a fingerprint of their bytes for DVC.

A source is a local file (jsonl/json/parquet/csv) or a hub id + config + split. With a mirror
set, a hub id resolves to `<mirror>/<owner>/<name>/<config>/<split>.jsonl`, so air-gapped
machines run unchanged. Without one, the hub is used at the pinned revision.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sdd.cache import file_digest
from sdd.config.datasets import DatasetParams
from sdd.data.adapters import RawRow
from sdd.errors import InputError, MissingInput


def resolve(ds: DatasetParams, mirror: Path | None) -> Path | None:
    """The local file holding the rows, or None when they come from the hub."""
    if ds.is_local:
        path = Path(ds.source).expanduser()
        if not path.is_file():
            raise MissingInput(f"dataset source {ds.source!r} does not exist; fix `source` in params.yaml")
        return path
    if mirror is None:
        return None
    path = mirror / ds.source / ds.config / f"{ds.split}.jsonl"
    if not path.is_file():
        present = (
            sorted(str(p.relative_to(mirror)) for p in (mirror / ds.source).rglob("*.jsonl"))
            if (mirror / ds.source).is_dir()
            else []
        )
        raise MissingInput(
            f"the mirror has no {path} for {ds.source} config={ds.config!r} split={ds.split!r}; "
            f"present for this id: {present or 'nothing'}. Fix config/split in params.yaml or the mirror"
        )
    return path


def fingerprint(ds: DatasetParams, mirror: Path | None) -> dict:
    """What identifies the source's content: the file's sha256, or the hub commit it resolves to."""
    path = resolve(ds, mirror)
    if path is not None:
        # No path: the same bytes found at another location (a moved mirror) are the same source.
        return {"kind": "file", "name": path.name, "bytes": path.stat().st_size, "sha256": file_digest([path])}
    from huggingface_hub import HfApi  # hub access only when no mirror/local file is used

    info = HfApi().dataset_info(ds.source, revision=ds.revision)
    return {
        "kind": "hub",
        "repo": ds.source,
        "config": ds.config,
        "split": ds.split,
        "revision": ds.revision,
        "sha": info.sha,
    }


def read_rows(ds: DatasetParams, mirror: Path | None) -> list[RawRow]:
    path = resolve(ds, mirror)
    if path is None:
        return _read_hub(ds)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".parquet":
        import pandas as pd

        return _from_records(pd.read_parquet(path).to_dict("records"))
    import pandas as pd

    return _from_records(pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records"))


def _read_jsonl(path: Path) -> list[RawRow]:
    """One row per non-blank line; undecodable bytes and malformed JSON become rejected rows."""
    rows = []
    with path.open("rb") as fh:
        for index, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                rows.append(
                    RawRow(
                        index,
                        error=f"invalid utf-8: line {index + 1}, byte {err.start}",
                        text=line.decode("utf-8", "replace"),
                    )
                )
                continue
            try:
                rows.append(RawRow(index, value=json.loads(text), text=text))
            except json.JSONDecodeError as err:
                rows.append(RawRow(index, error=f"malformed json: line {index + 1}: {err.msg}", text=text))
    return rows


def _read_json(path: Path) -> list[RawRow]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path} is not a valid UTF-8 JSON file ({err}); use .jsonl to keep the readable rows"
        ) from err
    if not isinstance(data, list):
        raise InputError(f"{path} must hold a JSON array of objects, got {type(data).__name__}")
    return [RawRow(i, value=v) for i, v in enumerate(data)]


def _from_records(records: list[dict]) -> list[RawRow]:
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    return [RawRow(i, value=r) for i, r in enumerate(clean)]


def _read_hub(ds: DatasetParams) -> list[RawRow]:
    import datasets

    table = datasets.load_dataset(
        ds.source, ds.config if ds.config != "default" else None, split=ds.split, revision=ds.revision
    )
    return [RawRow(i, value=row) for i, row in enumerate(table)]
