"""Every call to the Hugging Face hub goes through here, so a machine that cannot reach it gets one
clear message naming what was asked for and how to run without the hub, never a network traceback.

    sha = hub_commit("dataset", "openai/gsm8k", "main", "datasets.gsm8k.source")
    with reaching_hub("dataset", "openai/gsm8k", "datasets.gsm8k.source"):
        datasets.load_dataset(...)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from sdd.errors import InputError

Kind = Literal["dataset", "model"]


def _network_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a hub call raises when the hub cannot be reached or refuses the request."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    found: list[type[BaseException]] = [HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled, ConnectionError]
    for module in ("httpx", "httpx2", "requests"):  # huggingface_hub's HTTP client, by version
        try:
            mod = __import__(module)
        except ImportError:
            continue
        found += [getattr(mod, "HTTPError", None) or getattr(mod, "RequestException")]  # noqa: B009
    return tuple(found)


def fixes(kind: Kind, key: str) -> str:
    if kind == "dataset":
        return (
            "run with an offline copy: set SDD_DATA_MIRROR (or `data_mirror` in params.yaml, or link it as "
            "data/mirror) to a folder laid out as <owner>/<name>/<config>/<split>.jsonl, or set its `source` "
            "in params.yaml to a local .jsonl/.json/.parquet/.csv file"
        )
    return (
        f"download the model where the hub is reachable and set {key} to its local folder "
        "(or use bundled:smollm2-135m-instruct, which ships with the project)"
    )


@contextmanager
def reaching_hub(kind: Kind, repo: str, key: str) -> Iterator[None]:
    """Turn a failed hub request for `repo` (named by params key `key`) into an InputError with the fixes."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError, GatedRepoError) as err:
        raise InputError(
            f"{key}: the hub has no {kind} {repo!r} this machine may read ({type(err).__name__}); check the id and "
            f"revision, log in (huggingface-cli login) for a gated {kind}, or {fixes(kind, key)}"
        ) from err
    except _network_errors() as err:
        raise InputError(
            f"{key}: {kind} {repo!r} is on the Hugging Face hub, which this machine cannot reach "
            f"({type(err).__name__}); {fixes(kind, key)}"
        ) from err


def hub_commit(kind: Kind, repo: str, revision: str | None, key: str) -> str:
    """The commit sha `revision` of a hub dataset or model resolves to."""
    from huggingface_hub import HfApi

    with reaching_hub(kind, repo, key):
        info = (HfApi().dataset_info if kind == "dataset" else HfApi().model_info)(repo, revision=revision)
    return str(info.sha)
