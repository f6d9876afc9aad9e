"""How redundant is each block of consecutive decoder layers? Scores from one pass over calibration text.

    batches = make_batches(sequences, positions, pad_id, batch_size=8)
    states = [residual_stream(model, b) for b in batches]       # raw residual stream, (L+1, B, T, D)
    table = proxy_table(states, batches, max_n=8)                # metric -> (max_n, L) tensor, NaN = no block
    fidelity = kl_to_base(model, states, batches, n=6, starts=[3, 10, 13])

`h_l` is the input of decoder layer `l` (and `h_L` the raw output of the last layer, before the
final norm: `output_hidden_states` would give the normed one there). Block (start, n) removes
layers [start, start + n). Pure tensor code: the stage reads files, picks dtype and device.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from sdd.errors import InputError
from sdd.model.logits import kl_per_token, position_ids, top1_agreement
from sdd.model.pruning import decoder_of


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 1 = real token
    positions: torch.Tensor  # (B,) index of the token that `angular_last_token` reads in each row


def make_batches(
    sequences: list[list[int]], positions: list[int], pad_id: int, batch_size: int, side: str = "right"
) -> list[Batch]:
    """Pad token sequences into batches; `positions[i]` indexes sequence i before padding."""
    if side not in ("left", "right"):
        raise InputError(f"padding side must be 'left' or 'right', got {side!r}")
    batches = []
    for lo in range(0, len(sequences), batch_size):
        seqs, pos = sequences[lo : lo + batch_size], positions[lo : lo + batch_size]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        shifted = []
        for row, (seq, p) in enumerate(zip(seqs, pos)):
            offset = 0 if side == "right" else width - len(seq)
            ids[row, offset : offset + len(seq)] = torch.tensor(seq)
            mask[row, offset : offset + len(seq)] = 1
            shifted.append(offset + p)
        batches.append(Batch(ids, mask, torch.tensor(shifted)))
    return batches


def decoder_layers(model) -> torch.nn.ModuleList:
    return decoder_of(model).layers  # a clear error for an architecture the pruner does not know


def _hidden(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _forward(model, batch: Batch, device) -> torch.Tensor:
    mask = batch.attention_mask.to(device)
    return model(
        input_ids=batch.input_ids.to(device), attention_mask=mask, position_ids=position_ids(mask), use_cache=False
    ).logits


@torch.no_grad()
def residual_stream(model, batch: Batch) -> torch.Tensor:
    """(L+1, B, T, D) residual stream from forward hooks: h_l = input of layer l, h_L = raw last output."""
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []
    handles = [
        layer.register_forward_pre_hook(lambda m, a, k: states.append(_hidden(a, k)), with_kwargs=True)
        for layer in layers
    ]
    handles.append(
        layers[-1].register_forward_hook(lambda m, a, out: states.append(out[0] if isinstance(out, tuple) else out))
    )
    try:
        _forward(model, batch, next(model.parameters()).device)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(states)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def angle(cos: torch.Tensor) -> torch.Tensor:
    """arccos(cos) / pi in [0, 1]: the angular distance of two vectors from their cosine."""
    return torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / pi in [0, 1] over the last dimension.

    Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers", eq. 7.
    """
    return angle(cosine(a, b))


def _masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension where mask is true; padded positions may hold NaN and are never read."""
    return torch.where(mask.bool(), values, torch.zeros((), dtype=values.dtype)).sum(-1)


def proxy_table(states: list[torch.Tensor], batches: list[Batch], max_n: int) -> dict[str, torch.Tensor]:
    """Every proxy for every block: metric -> (max_n, L) tensor, row n-1, column start; NaN where start+n > L.

    - angular_last_token: d(h_start, h_start+n) at each row's chosen position, averaged over rows.
    - angular_mean_token: d averaged over every real token of every row.
    - block_influence: ShortGPT scores single layers (n = 1, mean over real tokens); a block of n layers
      scores the sum of its layers' influences (our contiguous extension: the block whose layers matter least).
    """
    num_layers = states[0].shape[0] - 1
    if not 1 <= max_n < num_layers:
        raise InputError(f"max_n={max_n} but the model has {num_layers} layers; choose 1..{num_layers - 1}")
    last = torch.zeros(max_n, num_layers, dtype=torch.float64)
    mean = torch.zeros(max_n, num_layers, dtype=torch.float64)
    influence = torch.zeros(num_layers, dtype=torch.float64)
    rows = tokens = 0
    for h, batch in zip(states, batches):
        mask = batch.attention_mask
        unit = torch.nn.functional.normalize(h.float(), dim=-1)  # cosines below are dot products of these
        picked = unit[:, torch.arange(unit.shape[1]), batch.positions]  # (L+1, B, D)
        for n in range(1, max_n + 1):
            starts = num_layers + 1 - n
            last[n - 1, :starts] += angle((picked[:starts] * picked[n:]).sum(-1)).double().sum(-1)
            cos = (unit[:starts] * unit[n:]).sum(-1)
            mean[n - 1, :starts] += _masked_sum(angle(cos), mask).double().sum(-1)
            if n == 1:
                influence += _masked_sum(1.0 - cos, mask).double().sum(-1)
        rows += mask.shape[0]
        tokens += int(mask.sum())
    influence /= tokens
    blocks = torch.full((max_n, num_layers), math.nan, dtype=torch.float64)
    for n in range(1, max_n + 1):
        blocks[n - 1, : num_layers + 1 - n] = influence.unfold(0, n, 1).sum(-1)
    invalid = torch.isnan(blocks)
    return {
        "angular_last_token": (last / rows).masked_fill(invalid, math.nan),
        "angular_mean_token": (mean / tokens).masked_fill(invalid, math.nan),
        "block_influence": blocks,
    }


def best_starts(scores: torch.Tensor) -> dict[int, int]:
    """n -> the start with the smallest score (ties: the earliest start)."""
    return {n: int(torch.nan_to_num(row, nan=math.inf).argmin()) for n, row in enumerate(scores, start=1)}


def ranked_starts(scores: torch.Tensor, n: int) -> list[int]:
    """Starts of n-layer blocks from least to most important by a proxy table."""
    row = scores[n - 1]
    valid = [s for s in range(row.shape[0]) if not math.isnan(float(row[s]))]
    return sorted(valid, key=lambda s: (float(row[s]), s))


@contextmanager
def replaced_input(module: torch.nn.Module, hidden: torch.Tensor):
    """Feed `hidden` to `module` in place of whatever the forward pass computed before it."""

    def hook(m, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def suffix_logits(model, batch: Batch, h_start: torch.Tensor, resume_at: int) -> torch.Tensor:
    """Logits when the residual stream `h_start` enters layer `resume_at` directly.

    Only layers [resume_at, L) run (plus the embedding lookup, discarded, and the final norm and LM
    head): the layer list is swapped for its suffix, and a pre-hook replaces the first one's input.
    resume_at = L runs no layer: the base model's logits from its cached last raw state.
    """
    decoder = decoder_of(model)
    layers = decoder.layers
    target = layers[resume_at] if resume_at < len(layers) else decoder.norm
    decoder.layers = torch.nn.ModuleList(list(layers)[resume_at:])
    try:
        with replaced_input(target, h_start):
            return _forward(model, batch, h_start.device)
    finally:
        decoder.layers = layers


@dataclass(frozen=True)
class Fidelity:
    kl: float  # mean KL(base || pruned) per real token, nats
    top1: float  # fraction of real tokens where both models' most likely next token agree


@torch.no_grad()
def kl_to_base(
    model, states: list[torch.Tensor], batches: list[Batch], n: int, starts: list[int], progress: Callable | None = None
) -> dict[int, Fidelity]:
    """Measured fidelity of cutting each n-layer block [start, start + n), from the cached residual stream.

    The cut model's residual stream equals the base one up to layer `start`, so each candidate runs
    only layers [start + n, L) on the cached h_start; mean over every real token of the calibration set.
    """
    device = next(model.parameters()).device
    num_layers = len(decoder_layers(model))
    bad = [s for s in starts if not 0 <= s <= num_layers - n]
    if bad:
        raise InputError(f"block starts {bad} with n={n} run past the {num_layers} layers; choose 0..{num_layers - n}")
    kl = {s: 0.0 for s in starts}
    top1 = {s: 0.0 for s in starts}
    tokens = 0
    for h, batch in zip(states, batches):
        mask = batch.attention_mask.to(device).bool()
        base = suffix_logits(model, batch, h[num_layers].to(device), num_layers).float()
        for s in starts:
            cut = suffix_logits(model, batch, h[s].to(device), s + n).float()
            kl[s] += float(_masked_sum(kl_per_token(base, cut), mask).sum())
            top1[s] += float(_masked_sum(top1_agreement(base, cut), mask).sum())
            if progress:
                progress()
        tokens += int(mask.sum())
    return {s: Fidelity(kl[s] / tokens, top1[s] / tokens) for s in starts}


def rank_correlation(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks); None when undefined (< 3 points or a constant)."""
    import pandas as pd

    if len(x) < 3:
        return None
    rho = pd.Series(x).rank().corr(pd.Series(y).rank())
    return None if rho != rho else round(float(rho), 4)
