"""Where a dataset's rows come from, and a fingerprint of their bytes for DVC.

A source is a local file (jsonl/json/parquet/csv, possibly gzip/bzip2/xz-compressed: rows.jsonl.gz)
or a hub id + config + split. With a mirror set, a hub id resolves to
`<mirror>/<owner>/<name>/<config>/<split>.jsonl`, so air-gapped machines run unchanged. Without one,
the hub is used at the pinned revision. A local file must lie in the project directory or the mirror
(`datasets.<ds>.allow_outside` lifts that). A compressed file is read unpacked; its fingerprint is
still the sha256 of its bytes. A .zip (.zst, .7z, .rar) is refused with how to unpack it.

A JSON row may nest at most `MAX_JSON_DEPTH` levels (a deeper .jsonl row is quarantined, so nothing
later recurses through it); a JSON number that a float cannot hold keeps its text (`JsonFloat`).

When too many rows fail, `explain_rejections` says why: the most frequent reasons and, where the
whole file has one, the cause (compressed, binary, plain text, a JSON array in a .jsonl, a missing
or mistyped column, rows of another format) with its fix.
"""

from __future__ import annotations

import bz2
import codecs
import difflib
import gzip
import io
import json
import lzma
import math
import re
import sys
import unicodedata
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from sdd.cache import file_digest
from sdd.config.datasets import COMPRESSED_SUFFIXES, FORMATS, DatasetParams
from sdd.data.adapters import Adapted, JsonFloat, RawRow, formats_that_fit
from sdd.errors import InputError, MissingInput

# How deep a JSON row may nest (its object is level 1). Python reads JSON, and the adapters walk it,
# by recursion: a deeper row (an ignored field nested 100,000 levels) would end the stage.
MAX_JSON_DEPTH = 100


def resolve(ds: DatasetParams, mirror: Path | None, root: Path | None = None) -> Path | None:
    """The local file holding the rows, or None when they come from the hub.

    A local source must lie (symlinks followed) inside `root`, the project directory (default: the
    working directory, where params.yaml is), or inside the mirror, unless `ds.allow_outside`.
    """
    if ds.is_local:
        path = Path(ds.source).expanduser()
        if not path.is_file():
            raise MissingInput(f"dataset source {ds.source!r} does not exist; fix `source` in params.yaml")
        _check_inside(path, ds, mirror, Path.cwd() if root is None else root)
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


def _check_inside(path: Path, ds: DatasetParams, mirror: Path | None, root: Path) -> None:
    """Rejected rows are copied (up to 2,000 characters each) into an artifact `dvc push` uploads."""
    real = path.resolve()
    allowed = [root.resolve(), *([mirror.resolve()] if mirror is not None else [])]
    if ds.allow_outside or any(real.is_relative_to(folder) for folder in allowed):
        return
    mirror_text = f" or the dataset mirror {allowed[1]}" if mirror is not None else ""
    raise InputError(
        f"dataset source {ds.source!r} resolves to {real}, outside the project directory {allowed[0]}{mirror_text}; "
        "rejected rows are copied (up to 2,000 characters each) into the quarantine file that `dvc push` uploads. "
        "Move the file into the project or the mirror, or set `allow_outside: true` in this dataset's entry in "
        "params.yaml if its rows may be uploaded"
    )


def fingerprint(ds: DatasetParams, mirror: Path | None) -> dict:
    """What identifies the source's content: the file's sha256, or the hub commit it resolves to."""
    path = resolve(ds, mirror)
    if path is not None:
        # No path: the same bytes found at another location (a moved mirror) are the same source.
        return {"kind": "file", "name": path.name, "bytes": path.stat().st_size, "sha256": file_digest([path])}
    from sdd.hub import hub_commit  # hub access only when no mirror/local file is used

    sha = hub_commit("dataset", ds.source, ds.revision, f"dataset source {ds.source!r}")
    return {
        "kind": "hub",
        "repo": ds.source,
        "config": ds.config,
        "split": ds.split,
        "revision": ds.revision,
        "sha": sha,
    }


def read_rows(ds: DatasetParams, mirror: Path | None, root: Path | None = None) -> list[RawRow]:
    """The source's rows; `root` is the project directory a local source must lie in (see `resolve`).

    A compressed local file (rows.jsonl.gz, .bz2, .xz) is read unpacked; other compression is refused.
    """
    path = resolve(ds, mirror, root)
    if path is None:
        return _read_hub(ds)
    suffix, compression = _suffixes(path)
    if compression and compression not in _UNPACK:
        kind, tool = _UNREADABLE[compression]
        raise InputError(
            f"{path}: {kind} input is not supported (gzip, bzip2 and xz are: .gz, .bz2, .xz). Unpack it "
            f"(`{tool.format(name=path.name, inner=path.stem)}`) and point `source` at the unpacked {suffix} file"
        )
    with _unpacking(path):
        return _read(path, suffix)


def _read(path: Path, suffix: str) -> list[RawRow]:
    """The rows of local file `path` holding `suffix` data (unpacked by `_open` when compressed)."""
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        return _read_json(path)
    import pandas as pd

    if suffix == ".parquet":
        source: Path | io.BytesIO = path  # pyarrow reads a plain file itself, and needs to seek
        if _suffixes(path)[1]:
            with _open(path) as fh:
                source = io.BytesIO(fh.read())
        try:
            table = pd.read_parquet(source)
        except Exception as err:  # pyarrow raises several types for a corrupt file
            raise InputError(f"{path} is not a readable Parquet file ({err}){_because(path)}") from err
        return _from_records(table.to_dict("records"))
    try:
        with _open(path) as fh:
            frame = pd.read_csv(fh, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return []
    except (UnicodeDecodeError, pd.errors.ParserError) as err:
        raise InputError(f"{path} is not a readable UTF-8 CSV file ({err}){_because(path)}") from err
    return _from_records(frame.to_dict("records"))


# Compression read (`_open`), by extension, as messages name it.
_UNPACK = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".lzma": "xz"}
# Compression not read (the rest of COMPRESSED_SUFFIXES): what it is, and the command that unpacks it.
_UNREADABLE = {
    ".zip": ("zip-compressed", "unzip -p {name} > {inner}"),
    ".zst": ("zstd-compressed", "zstd -dc {name} > {inner}"),
    ".7z": ("7z-compressed", "7z e {name}"),
    ".rar": ("rar-compressed", "unrar e {name}"),
}


def _suffixes(path: Path) -> tuple[str, str]:
    """The data extension and the compression extension ('' when none): rows.jsonl.gz -> ('.jsonl', '.gz')."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSED_SUFFIXES:
        return Path(path.stem).suffix.lower(), suffix
    return suffix, ""


def _open(path: Path) -> io.BufferedIOBase:
    """`path` opened for reading bytes, unpacked when its name says gzip, bzip2 or xz."""
    compression = _suffixes(path)[1]
    if compression == ".gz":
        return gzip.open(path, "rb")
    if compression == ".bz2":
        return bz2.open(path, "rb")
    if compression in (".xz", ".lzma"):
        return lzma.open(path, "rb")
    return path.open("rb")


@contextmanager
def _unpacking(path: Path) -> Iterator[None]:
    """Turn a compressed file that cannot be unpacked (corrupt, cut short, not compressed) into an InputError."""
    compression = _suffixes(path)[1]
    try:
        yield
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        if not compression:
            raise
        raise InputError(_unpack_failure(path, err)) from err


def _unpack_failure(path: Path, err: BaseException) -> str:
    """Why a compressed file could not be unpacked, and what to do."""
    kind = _UNPACK[_suffixes(path)[1]]
    return (
        f"{path} cannot be unpacked as {kind} ({type(err).__name__}: {err}): if it is cut short, copy or download it "
        f"again; if it is not {kind}-compressed, rename it to {path.stem} (and `source` with it)"
    )


class _Ambiguous(dict):
    """A JSON object that repeats a key: which of the values is meant is unknown."""

    duplicate = ""


def _object(pairs: list[tuple[str, object]]) -> dict:
    """`object_pairs_hook`: a plain dict, or an `_Ambiguous` one naming the first repeated key."""
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            ambiguous = _Ambiguous(pairs)
            ambiguous.duplicate = key
            return ambiguous
        obj[key] = value
    return obj


def _duplicate_key(value: object) -> str | None:
    """The first repeated key anywhere inside a decoded JSON value, or None."""
    if isinstance(value, _Ambiguous):
        return value.duplicate
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((key for item in items if (key := _duplicate_key(item)) is not None), None)


def _decoded(index: int, value: object, text: str = "") -> RawRow:
    key = _duplicate_key(value)
    if key is not None:
        return RawRow(index, error=f"duplicate key {key!r}: ambiguous row", text=text or json.dumps(value, default=str))
    return RawRow(index, value=value, text=text)


class _NumberTooLong(ValueError):
    """A JSON integer longer than Python reads (`sys.get_int_max_str_digits`)."""


def _json_int(literal: str) -> int:
    """`parse_int`: the integer, or `_NumberTooLong` past Python's digit limit (4300 by default)."""
    limit = sys.get_int_max_str_digits()
    if limit and len(literal.lstrip("-")) > limit:
        raise _NumberTooLong(f"JSON integer with more than {limit} digits")
    return int(literal)


def _json_float(literal: str) -> float:
    """`parse_float`: the float, or a `JsonFloat` keeping the text when the float does not hold the
    number exactly (more significant digits than a float keeps, or out of its range)."""
    number = float(literal)
    if len(literal) <= 15 and "e" not in literal.lower():  # at most 15 significant digits: a float holds them
        return number
    if math.isfinite(number) and Decimal(repr(number)) == Decimal(literal):
        return number
    return JsonFloat(literal)


def _loads(text: str) -> object:
    """`json.loads` with this module's hooks: repeated keys, over-long integers, inexact floats."""
    return json.loads(text, object_pairs_hook=_object, parse_int=_json_int, parse_float=_json_float)


_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays and objects in JSON `text` nest deeper than `limit` (brackets inside strings
    do not count). Reads the text without recursion; cheap when it has few brackets."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > limit:
            return True
    return False


def _read_jsonl(path: Path) -> list[RawRow]:
    """One row per non-blank line; undecodable bytes, malformed JSON, a row nested deeper than
    `MAX_JSON_DEPTH` and an integer too long to read become rejected rows.

    A UTF-8 byte-order mark before the first line is skipped.
    """
    rows = []
    with _open(path) as fh:
        for index, line in enumerate(fh):
            if index == 0:
                line = line.removeprefix(codecs.BOM_UTF8)
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
            if _too_deep(text):
                rows.append(
                    RawRow(index, error=f"JSON nested deeper than {MAX_JSON_DEPTH} levels: line {index + 1}", text=text)
                )
                continue
            try:
                rows.append(_decoded(index, _loads(text), text))
            except json.JSONDecodeError as err:
                rows.append(RawRow(index, error=f"malformed json: line {index + 1}: {err.msg}", text=text))
            except _NumberTooLong as err:
                rows.append(RawRow(index, error=f"number too long: {err}: line {index + 1}", text=text))
    return rows


def _read_json(path: Path) -> list[RawRow]:
    """The rows of a JSON array; a file that cannot be read whole is an InputError."""
    with _open(path) as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8-sig")
        if _too_deep(text, MAX_JSON_DEPTH + 1):  # the array is one more level
            raise InputError(
                f"{path} has a row nested deeper than {MAX_JSON_DEPTH} levels of JSON arrays and objects: "
                "flatten or remove the deep field, or write the rows as JSON lines (.jsonl), "
                "where such a row is set aside and the others are kept"
            )
        data = _loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{path} is not a valid UTF-8 JSON file ({err})"
            + (_because(path) or "; use .jsonl to keep the readable rows")
        ) from err
    except _NumberTooLong as err:
        raise InputError(
            f"{path} has a {err}, more than Python reads: write that number as a string, or the rows as "
            "JSON lines (.jsonl), where such a row is set aside and the others are kept"
        ) from err
    if not isinstance(data, list):
        raise InputError(f"{path} must hold a JSON array of objects, got {type(data).__name__}")
    return [_decoded(i, v) for i, v in enumerate(data)]


def _from_records(records: list[dict]) -> list[RawRow]:
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in records]
    return [RawRow(i, value=r) for i, r in enumerate(clean)]


def _read_hub(ds: DatasetParams) -> list[RawRow]:
    import datasets

    from sdd.hub import reaching_hub

    with reaching_hub("dataset", ds.source, f"dataset source {ds.source!r}"):
        table = datasets.load_dataset(
            ds.source, ds.config if ds.config != "default" else None, split=ds.split, revision=ds.revision
        )
    return [RawRow(i, value=row) for i, row in enumerate(table)]


# Compressed data under a data extension: the first bytes give it away.
_COMPRESSED = {
    b"\x1f\x8b": ("gzip-compressed", "gzip -dc", ""),
    b"PK\x03\x04": ("a zip archive", "unzip -p", "; a spreadsheet (.xlsx) is one too: export the sheet as CSV"),
    b"BZh": ("bzip2-compressed", "bzip2 -dc", ""),
    b"\xfd7zXZ\x00": ("xz-compressed", "xz -dc", ""),
    b"(\xb5/\xfd": ("zstd-compressed", "zstd -dc", ""),
}


def whole_file_cause(path: Path) -> str | None:
    """Why no row of `path` can be read, judged from its first bytes (unpacked, for a compressed
    file); None when they look right."""
    suffix, compression = _suffixes(path)
    name = f"{path.name} (unpacked)" if compression else path.name
    try:
        with _open(path) as fh:
            head = fh.read(4096)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:
        if not compression:
            raise
        return _unpack_failure(path, err)
    for magic, (kind, tool, note) in _COMPRESSED.items():
        if head.startswith(magic) and compression:
            return (
                f"{name} is {kind} again (it starts with bytes {magic.hex(' ')}), not {suffix} data: "
                f"compress the {suffix} file once, or point `source` at it uncompressed"
            )
        if head.startswith(magic):
            return (
                f"{path.name} is {kind} (it starts with bytes {magic.hex(' ')}), not {suffix} data: decompress it "
                f"(`{tool} {path.name} > {path.stem}.unpacked{suffix}`) and point `source` at the result{note}"
            )
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return f"{name} is UTF-16 text: save it as UTF-8"
    binary = _binary(head) if suffix != ".parquet" else None  # Parquet is binary
    text = head.decode("utf-8-sig", "replace").lstrip()
    start = text.splitlines()[0][:60] if text else ""
    if suffix == ".parquet" and not head.startswith(b"PAR1"):
        shown = repr(start) if start and _binary(head) is None else f"bytes {head[:8].hex(' ')}"
        return (
            f"{name} is not Parquet (no 'PAR1' header; it starts with {shown}): "
            "point `source` at the Parquet file, or give the file the extension of its format"
        )
    if binary == _UTF16:
        return f"{name} is UTF-16 text without a byte-order mark (every other byte is 00): save it as UTF-8"
    if binary:
        return (
            f"{name} is binary data, not text ({binary}; it starts with bytes {head[:8].hex(' ')}), "
            f"so it is not {suffix} data, which is UTF-8 text: point `source` at the {suffix} file, or export the "
            "rows from the program that wrote this file as JSON lines (.jsonl) or CSV"
        )
    if suffix == ".jsonl" and text.startswith("["):
        return (
            f"{name} holds a JSON array, not one JSON object per line: rename it to .json "
            "(and `source` with it), or write one object per line"
        )
    if suffix in (".jsonl", ".json") and text and text[0] not in "{[":
        return (
            f"{name} is plain text, not JSON (it starts with {start!r}): point `source` at the JSON data, "
            "or convert the file to one JSON object per line"
        )
    return None


_UTF16 = "UTF-16"


def _binary(head: bytes) -> str | None:
    """Why the first bytes of a file are not text, `_UTF16` for UTF-16 without a byte-order mark,
    or None for text. Text has few control characters (other than tab, newlines, form feed) and
    little that is not UTF-8; a stray one (a Latin-1 "é") does not make a file binary."""
    if not head:
        return None
    half = len(head) // 2
    if half and max(head[0::2].count(0), head[1::2].count(0)) >= 0.9 * half:
        return _UTF16
    text = head.decode("utf-8", "replace")
    odd = sum(ch == "\ufffd" or (ch not in "\t\n\r\f" and unicodedata.category(ch) == "Cc") for ch in text)
    if odd <= 0.1 * len(text):
        return None
    return f"{odd / len(text):.0%} of its first {len(head)} bytes are control characters or not UTF-8"


def _because(path: Path) -> str:
    cause = whole_file_cause(path)
    return f". Likely cause: {cause}" if cause else ""


def explain_rejections(
    name: str, ds: DatasetParams, mirror: Path | None, raw: list[RawRow], adapted: Adapted, max_fraction: float
) -> str:
    """The "too many rows rejected" message: the file, the expected format, the most frequent
    reasons with their first rows, and the likely cause with its fix when one is found."""
    path = resolve(ds, mirror)
    where = str(path) if path is not None else f"{ds.source} (hub, config={ds.config!r}, split={ds.split!r})"
    fraction = len(adapted.rejected) / len(raw)
    # A .jsonl row is its line (counted from 1, as in the reasons); other rows count from 0 (`row`).
    unit, offset = ("line", 1) if path is not None and _suffixes(path)[0] == ".jsonl" else ("row", 0)
    reasons = "; ".join(
        f"{kind!r} ({count} row{'s' * (count > 1)}; first at {unit} {', '.join(str(r + offset) for r in rows)})"
        for kind, count, rows in adapted.top_reasons()
    )
    cause = _likely_cause(name, ds, path, raw, adapted)
    return (
        f"dataset {name!r}: {len(adapted.rejected)} of {len(raw)} rows rejected ({fraction:.1%} > "
        f"prepare.max_rejected_fraction={max_fraction}) reading {where} as format {ds.format!r} "
        f"(`datasets.{name}.format`).\nMost frequent reasons: {reasons}.\n"
        + (
            f"Likely cause: {cause}."
            if cause
            else f"Check that `datasets.{name}.format` ({ds.format}) matches the source."
        )
    )


def _likely_cause(name: str, ds: DatasetParams, path: Path | None, raw: list[RawRow], adapted: Adapted) -> str | None:
    if path is not None and (cause := whole_file_cause(path)):
        return cause
    objects = [r.value for r in raw if r.error is None and isinstance(r.value, dict)][:200]
    fits = formats_that_fit(raw, len(objects))
    best = max(fits, key=lambda fmt: fits[fmt])
    if best != ds.format and fits[best] > fits[ds.format] and 2 * fits[best] >= len(objects):
        return (
            f"the rows have the fields of format {best!r} ({sorted(objects[0])}; {best!r} reads {fits[best]} of "
            f"{len(objects)} sampled rows, {ds.format!r} reads {fits[ds.format]}): set `datasets.{name}.format: {best}`"
        )
    kind, count, _ = adapted.top_reasons(1)[0]
    noun = "column" if path is not None and _suffixes(path)[0] in (".csv", ".parquet") else "field"
    present = sorted({key for obj in objects for key in obj})
    missing = re.fullmatch(r"missing field: '([^']*)'", kind)
    if missing and objects and missing[1] not in present:  # no row has it: the file's layout
        close = difflib.get_close_matches(missing[1], present, n=1)
        fix = f"rename {noun} {close[0]!r} to {missing[1]!r}" if close else f"add a {noun} {missing[1]!r}"
        return (
            f"the rows have no {noun} {missing[1]!r} ({noun}s present: {present}): {fix}, "
            f"or set `datasets.{name}.format` to this file's format (one of {list(FORMATS)})"
        )
    typed = re.fullmatch(r"wrong type: field '([^']*)' must be text, got (\w+)", kind)
    if typed and 2 * count >= len(adapted.rejected):
        return (
            f"{noun} {typed[1]!r} holds {typed[2]} values, but format {ds.format!r} needs text there: "
            "convert it to strings"
        )
    if kind.startswith("invalid utf-8"):
        return "the file is not UTF-8 (Latin-1 or Windows-1252?): re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
    return None
