"""Self-data distillation: the base model rewrites a prepared SFT dataset in its own words.

    python -m stages.distill gsm8k       (dvc.yaml: distill@gsm8k, one per `distill.datasets`)

Reads `<paths.prepared>/<ds>.parquet` and the base model, writes `<paths.distilled>/<ds>.parquet`
(pandera `DISTILLED`) and `<paths.metrics>/distill/<ds>.json`. Generation runs in chunks saved
under `<paths.scratch>/distill/<ds>/<fingerprint>/`, so a killed run resumes where it stopped;
the fingerprint covers the model, the input rows, the template and the sampling/engine settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from sdd.answers import apply_selection
from sdd.generation import Generation
from sdd.io import atomic_path, read_parquet, to_frame, tree_digest, write_json, write_parquet
from sdd.modelio import check_model_dir
from sdd.params import load_params
from sdd.prompts import build_messages, fingerprint as template_fingerprint, render, template_for
from sdd.runtime import device, log_params, run_stage, timed
from sdd.schemas import DISTILLED, PREPARED

log = logging.getLogger(__name__)


def run_fingerprint(model_digest: str, rows: list[dict], template, cfg) -> str:
    """Cache key of the generations: what changes any generated text changes this key."""
    settings = {"engine": cfg.engine, "engine_args": cfg.engine_args.model_dump(), "sampling": cfg.sampling.model_dump(),
                "chunk_size": cfg.chunk_size, "hf_batch_size": cfg.hf_batch_size if cfg.engine == "hf" else None}
    blob = json.dumps({"model": model_digest, "template": template_fingerprint(template), "settings": settings,
                       "rows": [[r["id"], r["instruction"], r["context"], r["response"]] for r in rows]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def request_seed(seed: int, row_id: str) -> int:
    """Per-row sampling seed: the same row samples the same way whatever its batch or chunk."""
    return int(hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()[:8], 16)


def load_chunk(path: Path, ids: list[str]) -> list[list[Generation]] | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("ids") != ids:
        log.warning("%s holds other rows than expected; regenerating it", path)
        return None
    return [[Generation(**g) for g in cands] for cands in data["generations"]]


class Engine:
    """Builds the chosen engine on first use (so a fully resumed run starts no engine)."""

    def __init__(self, cfg, model_dir: Path):
        self.cfg, self.model_dir, self.impl, self.start_seconds = cfg, model_dir, None, 0.0

    def generate(self, prompt_ids: list[list[int]], row_ids: list[str], chunk: int) -> list[list[Generation]]:
        from sdd import generation

        cfg = self.cfg
        if self.impl is None:
            start = time.perf_counter()
            if cfg.engine == "vllm":
                self.impl = generation.build_vllm(self.model_dir, cfg.engine_args)
            else:
                from sdd.modelio import load_model

                self.impl = load_model(self.model_dir, cfg.engine_args.dtype, device())
            self.start_seconds = time.perf_counter() - start
        if cfg.engine == "vllm":
            # Per-row seeds make sampling independent of batching; greedy decoding needs none.
            sampled = cfg.sampling.temperature > 0
            seeds = [request_seed(cfg.engine_args.seed, i) for i in row_ids] if sampled else None
            return generation.generate_vllm(self.impl, prompt_ids, cfg.sampling, seeds)
        model, tok = self.impl
        return generation.generate_hf(model, tok, prompt_ids, cfg.sampling, cfg.hf_batch_size,
                                      seed=cfg.engine_args.seed + 100_003 * chunk)

    def close(self) -> None:
        """Shut a vLLM engine down before the stage exits (see generation.shutdown_vllm)."""
        if self.cfg.engine == "vllm" and self.impl is not None:
            from sdd import generation

            generation.shutdown_vllm(self.impl)
            self.impl = None


def main(argv: list[str]) -> None:
    (name,) = argv
    params = load_params()
    cfg, paths = params.distill, params.paths
    if name not in cfg.datasets:
        raise ValueError(f"dataset {name!r} is not in distill.datasets {cfg.datasets}; add it there (params.yaml)")
    template = template_for(params.dataset(name).format)
    log_params(f"distill@{name}", cfg)
    started = time.perf_counter()
    with timed(f"distill@{name}") as summary:
        df = read_parquet(paths.prepared_file(name), PREPARED, f"prepare@{name}")
        rows = df.astype(object).where(df.notna(), None).to_dict("records")
        model_dir = paths.model_dir("base")
        check_model_dir(model_dir)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompts = [tokenizer(render(tokenizer, build_messages(r, template)), add_special_tokens=False).input_ids
                   for r in rows]
        fits = [len(p) + cfg.sampling.max_tokens <= cfg.engine_args.max_model_len for p in prompts]
        if not all(fits):
            log.warning("%d of %d prompts + max_tokens exceed distill.engine_args.max_model_len=%d; those rows keep "
                        "their original response (reason prompt_too_long)", fits.count(False), len(rows),
                        cfg.engine_args.max_model_len)

        key = run_fingerprint(tree_digest(model_dir), rows, template, cfg)
        root = Path(paths.scratch) / "distill" / name
        for stale in (p for p in root.glob("*") if p.is_dir() and p.name != key):
            log.info("removing chunks of an older fingerprint: %s", stale)
            shutil.rmtree(stale)
        chunk_dir = root / key
        engine = Engine(cfg, model_dir)
        generations: list[list[Generation]] = []
        reused = gen_seconds = new_tokens = 0
        try:
            for c, start in enumerate(range(0, len(rows), cfg.chunk_size)):
                part = range(start, min(start + cfg.chunk_size, len(rows)))
                ids = [rows[i]["id"] for i in part]
                path = chunk_dir / f"chunk-{c:05d}.json"
                chunk = load_chunk(path, ids)
                if chunk is not None:
                    reused += 1
                else:
                    todo = [i for i in part if fits[i]]
                    t0 = time.perf_counter()
                    made = iter(engine.generate([prompts[i] for i in todo], [rows[i]["id"] for i in todo], c))
                    chunk = [next(made) if fits[i] else [] for i in part]
                    gen_seconds += time.perf_counter() - t0
                    new_tokens += sum(g.generated_tokens for cands in chunk for g in cands)
                    with atomic_path(path) as tmp:
                        tmp.write_text(json.dumps({"ids": ids, "generations": [[vars(g) for g in cands] for cands in chunk]}))
                    log.info("chunk %d: %d rows generated in %.1f s", c, len(todo), time.perf_counter() - t0)
                generations.extend(chunk)
        finally:
            engine.close()

        out = apply_selection(rows, generations, template.kind == "math", cfg.leak_phrases, cfg.min_length_ratio)
        written = write_parquet(to_frame(out, DISTILLED), paths.distilled_file(name), DISTILLED)
        metrics = summarize(written, cfg.engine, reused, -(-len(rows) // cfg.chunk_size), gen_seconds, new_tokens,
                            engine.start_seconds, key)
        metrics["wall_seconds"] = round(time.perf_counter() - started, 2)
        write_json(paths.metrics_file("distill", name), metrics)
        summary.update(rows=len(written), kept_distilled=metrics["kept_distilled_fraction"],
                       tokens_per_s=metrics["generated_tokens_per_s"], chunks_reused=reused)


def summarize(df, engine: str, reused: int, chunks: int, gen_seconds: float, new_tokens: int,
              start_seconds: float, key: str) -> dict:
    kept = int((df["selected"] == "distilled").sum())
    return {
        "rows": len(df),
        "kept_distilled": kept,
        "kept_distilled_fraction": round(kept / len(df), 4) if len(df) else 0.0,
        "fallbacks_by_reason": {k: int(v) for k, v in df.loc[df["selected"] == "original", "reason"].value_counts().items()},
        "prompt_tokens": int(df["prompt_tokens"].sum()),
        "generated_tokens": int(df["generated_tokens"].sum()),
        "truncated": int((df["finish_reason"] == "length").sum()),
        "engine": engine,
        "engine_start_seconds": round(start_seconds, 2),
        "generation_seconds": round(gen_seconds, 2),
        "generated_tokens_this_run": new_tokens,
        "generated_tokens_per_s": round(new_tokens / gen_seconds, 2) if gen_seconds else None,
        "chunks": chunks,
        "chunks_reused": reused,
        "fingerprint": key,
    }


if __name__ == "__main__":
    run_stage(main)
