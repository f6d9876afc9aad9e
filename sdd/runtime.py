"""What every stage entry point shares: argument parsing, logging set-up, the resolved-params log
line, timing, the device, and the split between user errors and bugs.

    def main(argv):
        name = stage_args(argv, __doc__, "arm", "a key of finetune.arms").arm
        ...
    if __name__ == "__main__":
        run_stage(main)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdd.errors import InputError

log = logging.getLogger("sdd")


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("SDD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def stage_args(
    argv: list[str], doc: str | None, name: str | None = None, help: str = "", flags: dict[str, str] | None = None
) -> argparse.Namespace:
    """Parse a stage's command line: no argument, or one positional `name` (a dataset, arm, ...),
    plus optional boolean `--<flag>`s (name -> help)."""
    lines = (doc or "").strip().splitlines()
    usage = next((line.strip() for line in lines if line.strip().startswith("python -m ")), None)
    parser = argparse.ArgumentParser(
        prog=usage.split("  ")[0].rsplit(" ", 1)[0] if usage and name else None, description=lines[0] if lines else None
    )
    if name:
        parser.add_argument(name, help=help)
    for flag, flag_help in (flags or {}).items():
        parser.add_argument(f"--{flag}", action="store_true", help=flag_help)
    return parser.parse_args(argv)


def log_params(stage: str, section: Any) -> None:
    """Log the resolved params a stage runs with (pydantic model or plain dict)."""
    data = section.model_dump() if hasattr(section, "model_dump") else section
    log.info("%s params: %s", stage, json.dumps(data, sort_keys=True, default=str))


@contextmanager
def timed(stage: str) -> Iterator[dict]:
    """Time a stage; the caller adds its one-line summary to the yielded dict."""
    summary: dict = {}
    start = time.perf_counter()
    yield summary
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s done: %s", stage, ", ".join(f"{k}={v}" for k, v in summary.items()))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main(). An InputError (bad params, data or model) is printed plainly and exits
    2; Ctrl-C (SIGINT) stops it like a kill, with a line saying the re-run resumes, and exits 130
    (outputs are written atomically at the end, so none is half-written); any other exception is a
    bug and propagates with its traceback."""
    setup_logging()
    try:
        main(sys.argv[1:])
    except InputError as err:
        log.error("%s", err)
        sys.exit(2)
    except KeyboardInterrupt:
        stage = os.environ.get("DVC_STAGE") or Path(sys.argv[0]).stem
        log.error("%s interrupted; no output was written. Run it again to resume from its last checkpoint", stage)
        sys.exit(INTERRUPTED)
