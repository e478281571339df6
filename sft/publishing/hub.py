"""Publishing a finished run to a hub (the library behind `python -m sft.push` and
`push_to_hub=true`).

Uploads, in one commit through `huggingface_hub`: the model and its tokenizer / processor (from
<run>/model), config.yaml, metrics.json, plots/ and a model card (README.md, see card.py). The
token comes from HF_TOKEN or `hf auth login`; it is never written anywhere. HF_ENDPOINT points
at another hub (a company mirror, or a test server).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import tempfile
from pathlib import Path

from sft.errors import SftError, first_line
from sft.publishing.card import model_card
from sft.runs.directory import RunDir
from sft.validation import check_repo_id

log = logging.getLogger(__name__)


def check_online() -> None:
    """An SftError now, before training, if the hub cannot be reached by configuration or no
    token is set (the hub would refuse the upload)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise SftError(
            "push_to_hub=true but HF_HUB_OFFLINE=1 is set: unset it, or push later with "
            "python -m sft.push <run_dir> --repo-id ..."
        )
    if _no_token():
        raise SftError(
            "push_to_hub=true but no hub token is set: set HF_TOKEN to a token with write "
            "access or run `hf auth login`, or push later with python -m sft.push <run_dir> "
            "--repo-id ..."
        )


def _no_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is None  # from HF_TOKEN, or the file `hf auth login` writes


def push_finished(run: RunDir, repo_id: str, private: bool) -> str:
    """`push` at the end of training: a failure says the run itself is safe, and how to retry."""
    try:
        return push(run.root, repo_id, private)
    except SftError as err:
        raise SftError(
            f"the run finished in {run.root}, but the push failed: {err}. Retry with "
            f"python -m sft.push {run.root} --repo-id {repo_id}"
        ) from err


def push(run_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload the finished run in `run_dir` to `repo_id`; returns the commit's URL."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    check_repo_id(repo_id, "--repo-id")
    run = RunDir(run_dir)
    run.read_finished()  # a finished run, or a clear error
    if not run.model.is_dir():
        raise SftError(f"{run.root} has no model/ directory: the run did not save a model")
    if constants.is_offline_mode():
        raise SftError(
            "HF_HUB_OFFLINE=1 is set, so nothing can be pushed; unset it (and HF_ENDPOINT, if "
            "set, must name a reachable hub)"
        )
    if _no_token():
        raise SftError(
            "no hub token is set, so the hub would refuse the upload; set HF_TOKEN to a token "
            "with write access, or run `hf auth login`"
        )
    api = HfApi()
    with tempfile.TemporaryDirectory(prefix="sft-push-") as tmp:
        staged = _stage(run, repo_id, Path(tmp))
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staged,
                commit_message=f"Upload {run.root.name} (sft)",
            )
        except HfHubHTTPError as err:
            status = err.response.status_code if err.response is not None else None
            if status in (401, 403):
                raise SftError(
                    f"the hub at {api.endpoint} refused the upload to {repo_id} (HTTP {status}); "
                    f"set HF_TOKEN to a token with write access, or run `hf auth login`"
                ) from err
            raise SftError(
                f"the hub at {api.endpoint} answered HTTP {status} to the upload to {repo_id} "
                f"({first_line(err)}); retry later, or check HF_ENDPOINT"
            ) from err
        except _connection_errors() as err:  # refused, DNS, timeouts
            raise SftError(
                f"cannot reach the hub at {api.endpoint} ({type(err).__name__}); check the network "
                f"or HF_ENDPOINT"
            ) from err
    log.info("pushed %s to %s", run.root, commit.commit_url)
    return commit.commit_url


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when it reaches no server: OSError, and its HTTP library's
    transport errors (httpx2 under huggingface_hub 2, httpx under 1), which are not OSErrors."""
    found: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _stage(run: RunDir, repo_id: str, into: Path) -> Path:
    """The repository's files: model/ at the top, the run's files and plots beside it."""
    staged = into / "repo"
    shutil.copytree(run.model, staged)
    for path in (run.config, run.metrics):
        shutil.copy2(path, staged / path.name)
    if run.plots.is_dir():
        shutil.copytree(run.plots, staged / run.plots.name)
    (staged / "README.md").write_text(model_card(run, repo_id))
    return staged
