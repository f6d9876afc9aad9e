"""Teacher logits: the base model's top-k next-token log-probabilities at every response token of
the training text, computed once and stored as a checked artifact the `kd` objective reads.

    for piece in topk_pieces(model, examples, k=64, batch_tokens=4096, device="cpu"): ...
    write_shard(path, pieces)                # safetensors: tokens, topk_ids, topk_logprobs, rest_logmass, offsets
    store = TeacherStore.open(folder)        # checks the manifest and every shard, then store.get(row_id)

Layout of a folder (`teacher_logits@<ds>` writes `<paths.teacher>/<ds>/<kind>/`): `manifest.json`
(format, dataset, kind, top_k, vocab size, model digest, rows and tokens, shard files with the
row ids they hold, in order) and `shard-NNNNN.safetensors`, whose tensors concatenate the rows:
`tokens` int32 [T] (the response token each position predicts: the alignment check),
`topk_ids` int32 [T, k], `topk_logprobs` float16 [T, k] (descending), `rest_logmass` float32 [T]
(log of the probability outside the top k) and `offsets` int64 [rows + 1].
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdd.data.examples import IGNORE
from sdd.errors import InputError

FORMAT = "sdd.teacher_logits/1"
MANIFEST = "manifest.json"
TENSORS = {
    "tokens": torch.int32,
    "topk_ids": torch.int32,
    "topk_logprobs": torch.float16,
    "rest_logmass": torch.float32,
    "offsets": torch.int64,
}


def topk_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids [N, k], log-probs [N, k] descending, log of the remaining mass [N]) from logits [N, V].

    The remaining mass is a log-sum-exp over the tokens outside the top k (exact, no 1 - sum)."""
    if not 0 < k < logits.shape[-1]:
        raise InputError(
            f"teacher_logits.top_k={k} must be between 1 and the vocabulary size - 1 ({logits.shape[-1] - 1})"
        )
    logp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = logp.topk(k, dim=-1)
    rest = logp.scatter(-1, ids, float("-inf")).logsumexp(dim=-1)
    return ids, values, rest


def response_positions(labels: list[int]) -> list[int]:
    """Positions whose next token is a response token: the logits there predict labels[j + 1]."""
    return [j - 1 for j in range(1, len(labels)) if labels[j] != IGNORE]


def packs(examples: list[dict], batch_tokens: int) -> Iterator[list[dict]]:
    """Consecutive examples whose tokens fit `batch_tokens` (an example longer than that alone)."""
    pack: list[dict] = []
    size = 0
    for ex in examples:
        n = len(ex["input_ids"])
        if pack and size + n > batch_tokens:
            yield pack
            pack, size = [], 0
        pack.append(ex)
        size += n
    if pack:
        yield pack


@torch.no_grad()
def topk_pieces(model: Any, examples: list[dict], k: int, batch_tokens: int, device: str) -> Iterator[dict]:
    """One dict per example (id, tokens, topk_ids, topk_logprobs, rest_logmass), in order.

    Examples are packed into one row with position ids restarting per example, the layout the
    padding-free collator trains with (without a KV cache transformers keeps each example's attention
    to itself); only
    the logits at response positions are computed (`logits_to_keep`), so the vocabulary projection
    costs as many tokens as the responses have.
    """
    for pack in packs(examples, batch_tokens):
        ids: list[int] = []
        positions: list[int] = []
        keep: list[int] = []
        for ex in pack:
            keep += [len(ids) + j for j in response_positions(ex["labels"])]
            ids += ex["input_ids"]
            positions += list(range(len(ex["input_ids"])))
        if not keep:
            for ex in pack:
                yield _piece(ex, *(t[:0] for t in _empty(k)))
            continue
        out = model(
            input_ids=torch.tensor([ids], device=device),
            position_ids=torch.tensor([positions], device=device),
            logits_to_keep=torch.tensor(keep, device=device),
            use_cache=False,  # with a cache transformers ignores the packing and attends across examples
        )
        top_ids, top_logp, rest = topk_logprobs(out.logits[0], k)
        start = 0
        for ex in pack:
            n = len(response_positions(ex["labels"]))
            yield _piece(ex, top_ids[start : start + n], top_logp[start : start + n], rest[start : start + n])
            start += n


def _empty(k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k), torch.zeros(0)


def _piece(ex: dict, ids: torch.Tensor, logp: torch.Tensor, rest: torch.Tensor) -> dict:
    tokens = [t for t in ex["labels"][1:] if t != IGNORE]
    return {
        "id": ex["id"],
        "tokens": torch.tensor(tokens, dtype=torch.int32),
        "topk_ids": ids.to("cpu", torch.int32),
        "topk_logprobs": logp.to("cpu", torch.float16),
        "rest_logmass": rest.to("cpu", torch.float32),
    }


def write_shard(path: Path, pieces: list[dict]) -> None:
    """One safetensors file holding `pieces` concatenated (offsets mark where each row starts)."""
    from safetensors.torch import save_file

    lengths = torch.tensor([0] + [len(p["tokens"]) for p in pieces], dtype=torch.int64)
    tensors = {name: torch.cat([p[name] for p in pieces]).contiguous() for name in TENSORS if name != "offsets"}
    save_file({**tensors, "offsets": lengths.cumsum(0)}, str(path))


@dataclass(frozen=True)
class Row:
    tokens: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    rest_logmass: torch.Tensor


class TeacherStore:
    """A checked teacher-logits folder; `get(row_id)` returns that row's tensors."""

    def __init__(self, folder: Path, manifest: dict, shards: list[dict[str, torch.Tensor]]):
        self.folder, self.manifest, self.shards = folder, manifest, shards
        self.index = {row: (s, i) for s, shard in enumerate(manifest["shards"]) for i, row in enumerate(shard["ids"])}

    @property
    def top_k(self) -> int:
        return int(self.manifest["top_k"])

    @classmethod
    def open(cls, folder: str | Path, producer: str) -> TeacherStore:
        folder = Path(folder)
        fix = f"re-run `dvc repro {producer}`"
        if not (folder / MANIFEST).is_file():
            raise InputError(f"{folder / MANIFEST} not found; run `dvc repro {producer}`")
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except json.JSONDecodeError as err:
            raise InputError(f"{folder / MANIFEST} is not valid JSON ({err}); {fix}") from err
        if manifest.get("format") != FORMAT:
            raise InputError(f"{folder / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}; {fix}")
        shards = [_load_shard(folder / s["file"], len(s["ids"]), manifest, fix) for s in manifest["shards"]]
        rows = sum(len(s["ids"]) for s in manifest["shards"])
        tokens = sum(int(s["offsets"][-1]) for s in shards)
        if (rows, tokens) != (manifest["rows"], manifest["tokens"]):
            raise InputError(
                f"{folder}: shards hold {rows} rows / {tokens} tokens, the manifest says "
                f"{manifest['rows']} / {manifest['tokens']}; {fix}"
            )
        return cls(folder, manifest, shards)

    def get(self, row_id: str) -> Row:
        if row_id not in self.index:
            raise InputError(
                f"{self.folder}: no teacher logits for row {row_id!r}; the data changed after they were "
                f"computed: re-run `dvc repro` (teacher_logits stages)"
            )
        s, i = self.index[row_id]
        shard = self.shards[s]
        a, b = int(shard["offsets"][i]), int(shard["offsets"][i + 1])
        return Row(*(shard[name][a:b] for name in ("tokens", "topk_ids", "topk_logprobs", "rest_logmass")))


def _load_shard(path: Path, rows: int, manifest: dict, fix: str) -> dict[str, torch.Tensor]:
    """The shard's tensors after the contract checks: names, dtypes, shapes, offsets, value ranges."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        shard = load_file(str(path))
    except (FileNotFoundError, SafetensorError, OSError) as err:
        raise InputError(f"{path}: unreadable teacher-logits shard ({err}); {fix}") from err
    problems = [f"missing tensor {n!r}" for n in TENSORS if n not in shard]
    problems += [
        f"{n} is {shard[n].dtype}, expected {d}" for n, d in TENSORS.items() if n in shard and shard[n].dtype != d
    ]
    if not problems:
        k, vocab, offsets = manifest["top_k"], manifest["vocab_size"], shard["offsets"]
        total = len(shard["tokens"])
        if len(offsets) != rows + 1 or offsets[0] != 0 or offsets[-1] != total or bool((offsets.diff() < 0).any()):
            problems.append(f"offsets do not split {total} tokens into {rows} rows")
        if shard["topk_ids"].shape != (total, k) or shard["topk_logprobs"].shape != (total, k):
            problems.append(f"top-k tensors are {tuple(shard['topk_ids'].shape)}, expected ({total}, {k})")
        elif total and (shard["topk_ids"].min() < 0 or shard["topk_ids"].max() >= vocab):
            problems.append(f"token ids outside the vocabulary [0, {vocab})")
        elif total and bool((shard["topk_logprobs"].float() > 1e-3).any()):
            problems.append("log-probabilities above 0")
        if shard["rest_logmass"].shape != (total,):
            problems.append(f"rest_logmass has shape {tuple(shard['rest_logmass'].shape)}, expected ({total},)")
    if problems:
        raise InputError(f"{path}: not a valid teacher-logits shard: {'; '.join(problems)}; {fix}")
    return shard


def build(
    rows: list[dict], model_dir: Path, cfg: Any, out: Path, scratch: Path, device: str, source: dict, rendering: str
) -> dict:
    """Compute a dataset's teacher logits into `out` (resumable per shard under `scratch`); returns
    the stage's metrics. `cfg` is the `teacher_logits` section; `source` names the dataset and kind;
    `rendering` is finetune's (the teacher sees the text the student trains on)."""
    import shutil
    import time

    from sdd.artifacts import atomic_path, write_json
    from sdd.cache import fingerprint, keyed_dir, tree_digest
    from sdd.data.examples import encode_rows
    from sdd.model.checkpoint import load_model

    model, tok = load_model(model_dir, cfg.dtype, device)
    examples = encode_rows(rows, tok, max_seq_len=1 << 30, overlong="truncate", rendering=rendering)[0]  # every token
    model_digest = tree_digest(model_dir, scratch.parent.parent)  # stat-cached under paths.scratch
    texts = [[r["id"], r["instruction"], r["context"], r["response"]] for r in rows]
    settings = {**cfg.model_dump(), "rendering": rendering}
    key = fingerprint({"format": FORMAT, "model": model_digest, "rows": texts, "settings": settings})
    work = keyed_dir(scratch, key)
    shards: list[dict[str, Any]] = []
    reused, seconds, forward_tokens = 0, 0.0, 0
    for number, start in enumerate(range(0, len(examples), cfg.rows_per_shard)):
        chunk = examples[start : start + cfg.rows_per_shard]
        ids = [e["id"] for e in chunk]
        path, done = work / f"shard-{number:05d}.safetensors", work / f"shard-{number:05d}.ids.json"
        if path.is_file() and done.is_file() and json.loads(done.read_text()) == ids:
            reused += 1
        else:
            began = time.perf_counter()
            pieces = list(topk_pieces(model, chunk, cfg.top_k, cfg.batch_tokens, device))
            seconds += time.perf_counter() - began
            forward_tokens += sum(len(e["input_ids"]) for e in chunk)
            with atomic_path(path) as tmp:
                write_shard(tmp, pieces)
            done.write_text(json.dumps(ids))  # last: marks the shard complete
        shards.append({"file": path.name, "ids": ids})
    response_tokens = sum(len(response_positions(e["labels"])) for e in examples)
    manifest = {
        "format": FORMAT,
        **source,
        "top_k": cfg.top_k,
        "dtype": cfg.dtype,
        "rendering": rendering,
        "vocab_size": int(model.config.vocab_size),
        "model_digest": model_digest,
        "rows": len(examples),
        "tokens": response_tokens,
        "shards": shards,
    }
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for shard in shards:
            shutil.copyfile(work / shard["file"], tmp / shard["file"])
        write_json(tmp / MANIFEST, manifest)
    size = sum(f.stat().st_size for f in out.iterdir())
    return {
        **source,
        "rows": len(examples),
        "response_tokens": response_tokens,
        "top_k": cfg.top_k,
        "shards": len(shards),
        "shards_reused": reused,
        "bytes": size,
        "bytes_per_1000_rows": round(size * 1000 / max(1, len(examples))),
        "forward_seconds": round(seconds, 2),
        "forward_tokens_per_second": round(forward_tokens / seconds, 1) if seconds else None,
    }
