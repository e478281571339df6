"""Pushing over real HTTP: a local server speaking the Hub API receives the run (model,
tokenizer, config, metrics, plots, model card); `pipeline()` loads it back by repo id from that
server with the local model's predictions, and so does `python -m sft.predict`. Token and
offline-mode handling.

One push and the prediction by repo id run as `python -m` processes, as a user runs them; every
other push runs the command in this process (`run_cli`), in the environment `hub_env` gives a
child, set here by `use_hub_env`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.hub_server import HubServer

pytestmark = pytest.mark.slow

TOKEN = "hf_test_secret_token_123"
TEXTS = ["the striker scored a late goal", "shares fell after the profit warning", "a new phone"]


@pytest.fixture
def finished_run(trained_text_run):
    return trained_text_run[0]  # pushing reads the run directory only


@pytest.fixture
def hub():
    # One server per test (a thread, started in milliseconds): tests read its requests.
    with HubServer(TOKEN) as server:
        yield server


def hub_env(hub: HubServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def use_hub_env(monkeypatch, hub: HubServer, tmp_path: Path, **extra: str) -> None:
    """This process's environment made what `hub_env` gives a child, until the test ends: for
    the commands run in this process. huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME
    (where a saved token lies) once, into `huggingface_hub.constants`, when first imported: its
    constants are read again from this environment, as a new process would read them."""
    env = hub_env(hub, tmp_path, **extra)
    for key in [k for k in os.environ if k not in env]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from huggingface_hub import constants

    spec = importlib.util.spec_from_file_location("hub_constants_read_again", constants.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    for name, value in vars(fresh).items():
        if name.isupper() and getattr(constants, name, None) != value:
            monkeypatch.setattr(constants, name, value)  # undone when the test ends
    assert env["HF_ENDPOINT"].rstrip("/") == constants.ENDPOINT


def push(run_dir: Path, *args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m sft.push` in a new process with `env` (see `hub_env`)."""
    return subprocess.run(
        [sys.executable, "-m", "sft.push", str(run_dir), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def push_here(run_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`sft.push` run in this process (in the environment `use_hub_env` set)."""
    return run_cli(str(run_dir), *args, cwd=cwd, module="sft.push")


def test_push_then_load_by_repo_id_gives_identical_predictions(
    tmp_path, hub, finished_run, monkeypatch
):
    # The command as a user runs it: a process of its own, its answer on stdout.
    env = hub_env(hub, tmp_path, HF_TOKEN=TOKEN)
    result = push(finished_run, "--repo-id", "me/tiny-news", "--private", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(hub.requests)
    assert result.stdout.strip().startswith(f"{hub.url}/me/tiny-news/commit/")

    repo = hub.repos["me/tiny-news"]
    assert repo.private
    expected = {"model.safetensors", "config.json", "tokenizer.json", "README.md", "config.yaml",
                "metrics.json", "plots/loss.png", "plots/confusion_matrix.png"}  # fmt: skip
    assert expected <= set(repo.files)
    assert repo.files["metrics.json"] == (finished_run / "metrics.json").read_bytes()

    # `pipeline()` by repo id, downloading from the server (into this test's HF_HOME).
    from transformers import pipeline

    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN)
    hub.requests.clear()
    from_hub, local = (
        pipeline("text-classification", model=model)(TEXTS, top_k=None)
        for model in ("me/tiny-news", str(finished_run / "model"))
    )
    for hub_scores, local_scores in zip(from_hub, local, strict=True):
        assert [s["label"] for s in hub_scores] == [s["label"] for s in local_scores]
        for a, b in zip(hub_scores, local_scores, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert any(r.startswith("GET /me/tiny-news/resolve/") for r in hub.requests)

    # sft.predict takes the hub id as well, and answers as the local model does.
    predicted = subprocess.run(
        [sys.executable, "-m", "sft.predict", "me/tiny-news", *TEXTS, "--top-k", "1",
         "--output", str(tmp_path / "hub.json"), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    rows = json.loads((tmp_path / "hub.json").read_text())
    assert [r["label"] for r in rows] == [scores[0]["label"] for scores in local]

    # The token went to the server only: not into logs, the run directory or the repository.
    assert TOKEN not in result.stdout + result.stderr
    assert not any(TOKEN.encode() in data for data in repo.files.values())
    for path in finished_run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_model_card_carries_hub_metadata_and_the_runs_results(
    tmp_path, hub, finished_run, monkeypatch
):
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN)
    pushed = push_here(finished_run, "--repo-id", "me/card", cwd=tmp_path)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    card = hub.repos["me/card"].files["README.md"].decode()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    meta = yaml.safe_load(front)
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-classification"
    result = meta["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values == {"accuracy": round(metrics["accuracy"], 4), "f1": round(metrics["f1"], 4)}
    assert "base_model" not in meta  # a local checkpoint is no hub id
    assert "![Confusion matrix](plots/confusion_matrix.png)" in body
    assert 'pipeline("text-classification", model="me/card")' in body
    for label in metrics["labels"]:
        assert f"| {label} |" in body  # the per-class report
    assert "| `optimizer.lr` |" in body


def test_offline_mode_is_a_clear_error(tmp_path, hub, finished_run, monkeypatch):
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    result = push_here(finished_run, "--repo-id", "me/offline", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: HF_HUB_OFFLINE=1 is set")
    assert not hub.requests


def test_a_refused_token_is_a_clear_error(tmp_path, hub, finished_run, monkeypatch):
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN="hf_wrong")
    result = push_here(finished_run, "--repo-id", "me/denied", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "refused the upload to me/denied (HTTP 401)" in last and "HF_TOKEN" in last
    assert "hf_wrong" not in result.stderr + result.stdout


def test_an_unreachable_hub_is_a_clear_error(tmp_path, hub, finished_run, monkeypatch):
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN, HF_ENDPOINT="http://127.0.0.1:9")
    result = push_here(finished_run, "--repo-id", "me/nowhere", cwd=tmp_path)  # discard port
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: cannot reach the hub at http://127.0.0.1:9")
        and "HF_ENDPOINT" in last
    )


def test_a_hub_server_error_is_a_clear_error(tmp_path, hub, finished_run, monkeypatch):
    hub.fail_with = 500
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN)
    result = push_here(finished_run, "--repo-id", "me/broken", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "answered HTTP 500 to the upload to me/broken" in last and "retry later" in last


def test_an_unfinished_run_is_not_pushed(tmp_path, hub, monkeypatch):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 1\n")
    use_hub_env(monkeypatch, hub, tmp_path)
    result = push_here(tmp_path / "half", "--repo-id", "me/half", cwd=tmp_path)
    assert result.returncode == 2
    assert "has no metrics.json: not the directory of a finished sft run" in result.stderr


def test_push_to_hub_at_the_end_of_training(
    tmp_path, hub, tiny_checkpoint, text_corpus, monkeypatch
):
    run_dir = tmp_path / "run"
    use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN)
    result = run_cli(
        "recipe=bert_news", f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}",
        f"output_dir={run_dir}", "trainer.epochs=1", "trainer.progress=false",
        "push_to_hub=true", "hub.repo_id=me/trained", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:] + "\n".join(hub.requests)
    files = hub.repos["me/trained"].files
    assert files["metrics.json"] == (run_dir / "metrics.json").read_bytes()
    assert "README.md" in files and "model.safetensors" in files
    assert TOKEN not in (run_dir / "config.yaml").read_text() + result.stdout + result.stderr


def test_push_to_hub_without_a_repo_id_fails_before_training(tmp_path, tiny_checkpoint):
    result = run_cli(
        "recipe=bert_news", f"model.checkpoint={tiny_checkpoint}", "push_to_hub=true",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "push_to_hub=True is not allowed: it needs hub.repo_id=<user/name>" in result.stderr
