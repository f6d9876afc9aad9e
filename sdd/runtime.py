"""What every stage entry point shares: logging set-up, the resolved-params log line, the device."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager

log = logging.getLogger("sdd")


def setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("SDD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def log_params(stage: str, section) -> None:
    """Log the resolved params a stage runs with (pydantic model or plain dict)."""
    data = section.model_dump() if hasattr(section, "model_dump") else section
    log.info("%s params: %s", stage, json.dumps(data, sort_keys=True, default=str))


@contextmanager
def timed(stage: str):
    """Time a stage; the caller adds its one-line summary to the yielded dict."""
    summary: dict = {}
    start = time.perf_counter()
    yield summary
    summary["seconds"] = round(time.perf_counter() - start, 2)
    log.info("%s done: %s", stage, ", ".join(f"{k}={v}" for k, v in summary.items()))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_stage(main) -> None:
    """Run a stage's main(); a ValueError/FileNotFoundError is bad input: print it plainly, exit 2."""
    setup_logging()
    try:
        main(sys.argv[1:])
    except (ValueError, FileNotFoundError) as err:
        log.error("%s", err)
        sys.exit(2)
