"""Artifact I/O: atomic writes (a killed stage never leaves a half-written file), JSON metrics,
and Parquet validated against a pandera schema on the way out and on the way in.

pandas and pandera are imported by the Parquet functions only: the always-run fingerprint stages
need just JSON, and the import costs ~0.4 s of each no-op `dvc repro`'s ~0.7 s per such stage."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sdd.errors import InputError, MissingInput

if TYPE_CHECKING:
    import pandas as pd
    import pandera.pandas as pa
    from pandera.errors import SchemaError, SchemaErrors

log = logging.getLogger(__name__)


@contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary sibling path; rename it onto `final` only if the block succeeds.

    Works for files and directories. The rename is atomic on POSIX within one filesystem. If the block
    fails (a full disk included) the temporary copy is removed and `final` is left as it was; a full
    disk is reported as an InputError naming the path (free space and re-run: nothing is half-written).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    target = tmp / final.name
    try:
        yield target
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        elif final.exists() or final.is_symlink():
            final.unlink()
        os.replace(target, final)
    except OSError as err:
        if not disk_full(err):
            raise
        raise InputError(
            f"no space left on the device while writing {final} ({err.strerror}); the previous {final.name} "
            f"is untouched and no partial file remains. Free space under {final.parent} (or move paths.* in "
            "params.yaml to a larger disk) and run the stage again"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full(err: OSError) -> bool:
    """Whether `err` says the disk (or the user's quota) is full; pyarrow's writer reports it in the
    message only."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike):
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path} not found; run the stage that writes it first (dvc repro)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); delete it and re-run the stage that writes it") from err


def _describe(path: Path, err: SchemaError | SchemaErrors) -> str:
    from pandera.errors import SchemaErrors

    if isinstance(err, SchemaErrors):
        cases = err.failure_cases.head(10)
        rows = "; ".join(_violation(r) for _, r in cases.iterrows())
        return f"{path}: {len(err.failure_cases)} schema violation(s): {rows}"
    return f"{path}: {err}"


def _violation(case) -> str:
    if case.check == "column_in_dataframe":
        return f"missing column {case.failure_case!r}"
    if case.check == "column_in_schema":
        return f"unexpected column {case.failure_case!r}"
    return f"column {case.column!r} check {case.check!r} row {case['index']} value {case.failure_case!r}"


def to_frame(rows: list[dict], schema: pa.DataFrameSchema) -> pd.DataFrame:
    """Rows -> a DataFrame with the schema's columns, in order, cast to the schema's dtypes."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(schema.columns))
    return df.astype({name: col.dtype.type for name, col in schema.columns.items()})


def write_parquet(df: pd.DataFrame, path: str | os.PathLike, schema: pa.DataFrameSchema) -> pd.DataFrame:
    from pandera.errors import SchemaError, SchemaErrors

    path = Path(path)
    try:
        df = schema.validate(df, lazy=True)
    except (SchemaError, SchemaErrors) as err:
        raise InputError(f"refusing to write invalid data. {_describe(path, err)}") from None
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return df


def read_parquet(path: str | os.PathLike, schema: pa.DataFrameSchema, producer: str) -> pd.DataFrame:
    """Read an artifact and check it against the contract of the stage that `producer` names."""
    import pandas as pd
    from pandera.errors import SchemaError, SchemaErrors

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path} not found; run `dvc repro {producer}` first")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path} is not a readable Parquet file ({err}); re-run `dvc repro {producer}`") from err
    try:
        return schema.validate(df, lazy=True)
    except (SchemaError, SchemaErrors) as err:
        raise InputError(
            f"{path} does not match the {schema.name} contract (version {schema.metadata['version']}): "
            f"{_describe(path, err)}. Re-create it with `dvc repro {producer}`"
        ) from None
