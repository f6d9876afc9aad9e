"""The per-prompt fidelity records of evaluate@<model> (`<paths.eval>/<model>.fidelity.parquet`):
the contract, apart from the fidelity code so the report reads them without importing torch.

    read_parquet(per_prompt_file(paths.eval, "sdd"), FIDELITY_PER_PROMPT, "evaluate@sdd")
"""

from __future__ import annotations

from pathlib import Path

import pandera.pandas as pa
from pandera.pandas import Check, Column

# One row per fidelity prompt and evaluated model (evaluate@<model>): the token count and the sums
# behind the token-weighted means, so comparisons resample prompts (paired over the same prompts).
FIDELITY_PER_PROMPT = pa.DataFrameSchema(
    {
        "prompt_set": Column(str),
        "id": Column(str, checks=Check(lambda s: s.str.len() > 0, element_wise=False)),
        "tokens": Column(int, Check.ge(0)),
        "kl_sum": Column(float, Check.ge(-1e-6)),  # KL(reference || model) summed over the continuation's tokens
        "top1_sum": Column(float, Check.ge(0)),  # tokens whose argmax agrees
        "nll_sum": Column(float, Check.ge(0)),  # the model's negative log-likelihood of the continuation
        "ref_nll_sum": Column(float, Check.ge(0)),  # ... the reference's
    },
    checks=[Check(lambda df: (df["top1_sum"] <= df["tokens"] + 1e-9).all(), element_wise=False, name="top1_le_tokens")],
    strict=True,
    ordered=True,
    name="fidelity_per_prompt",
    metadata={"version": 1},
)


def per_prompt_file(eval_dir: str | Path, model: str) -> Path:
    return Path(eval_dir) / f"{model}.fidelity.parquet"
