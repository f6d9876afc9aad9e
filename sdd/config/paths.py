"""`paths`: artifact directories; `dvc.yaml` templates the same values with `${paths.*}`."""

from __future__ import annotations

from pathlib import Path

from sdd.config.base import Section


class Paths(Section):
    sources: str = "data/sources"
    prepared: str = "data/prepared"
    distilled: str = "data/distilled"
    teacher: str = "data/teacher"
    models: str = "data/models"
    metrics: str = "metrics"
    reports: str = "reports"
    eval: str = "data/eval"
    scratch: str = ".sdd-scratch"
    mirror: str = "data/mirror"  # an offline dataset mirror linked into the project (git-ignored), used when present

    def datasets_source_file(self) -> Path:
        """Every dataset's content fingerprint, one file (its name has a dot: no dataset can be called so)."""
        return Path(self.sources) / "datasets.inputs.json"

    def model_source_file(self) -> Path:
        """The base model's content fingerprint (a dot in the name: no dataset can be called that)."""
        return Path(self.sources) / "model.base.json"

    def eval_source_file(self) -> Path:
        """The evaluation inputs' content fingerprints (lm-eval task files, fidelity prompt sources)."""
        return Path(self.sources) / "eval.inputs.json"

    def prepared_file(self, ds: str) -> Path:
        return Path(self.prepared) / f"{ds}.parquet"

    def rejected_file(self, ds: str) -> Path:
        return Path(self.prepared) / f"{ds}.rejected.parquet"

    def distilled_file(self, ds: str) -> Path:
        return Path(self.distilled) / f"{ds}.parquet"

    def teacher_dir(self, ds: str, kind: str) -> Path:
        """Top-k teacher log-probabilities over a dataset's `original` or `distilled` responses."""
        return Path(self.teacher) / ds / kind

    def model_dir(self, name: str) -> Path:
        return Path(self.models) / name

    def report_file(self, name: str) -> Path:
        return Path(self.reports) / name

    def eval_samples_file(self, name: str) -> Path:
        return Path(self.eval) / f"{name}.parquet"

    def metrics_file(self, stage: str, name: str | None = None) -> Path:
        """A stage's details (settings, timings, per-item breakdowns): a plain output other stages read."""
        return Path(self.metrics) / stage / f"{name or stage}.json"

    def headline_file(self, stage: str, name: str | None = None) -> Path:
        """A stage's headline numbers: the few flat values dvc.yaml declares as `metrics`."""
        return Path(self.metrics) / stage / f"{name or stage}.headline.json"
