"""`python -m sft.push` over real HTTP: a local server speaking the Hub API receives the run
(model, tokenizer, config, metrics, plots, model card); `pipeline()` loads it back by repo id
from that server with the local model's predictions. Token and offline-mode handling."""

from __future__ import annotations

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
    with HubServer(TOKEN) as server:
        yield server


def hub_env(hub: HubServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home"), **extra}


def push(run_dir: Path, *args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sft.push", str(run_dir), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


LOAD_BOTH = """
import json, sys
from transformers import pipeline
texts = json.loads(sys.argv[3])
models = sys.argv[1:3]
print(json.dumps([pipeline("text-classification", model=m)(texts, top_k=None) for m in models]))
"""


def test_push_then_load_by_repo_id_gives_identical_predictions(tmp_path, hub, finished_run):
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

    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_BOTH, "me/tiny-news", str(finished_run / "model"),
         json.dumps(TEXTS)],
        env=hub_env(hub, tmp_path, HF_TOKEN=TOKEN),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:] + "\n".join(hub.requests)
    from_hub, local = json.loads(loaded.stdout.strip().splitlines()[-1])
    for hub_scores, local_scores in zip(from_hub, local, strict=True):
        assert [s["label"] for s in hub_scores] == [s["label"] for s in local_scores]
        for a, b in zip(hub_scores, local_scores, strict=True):
            assert a["score"] == pytest.approx(b["score"], abs=1e-6)
    assert any(r.startswith("GET /me/tiny-news/resolve/") for r in hub.requests)

    # sft.predict takes the hub id as well, and answers as the local model does.
    predicted = subprocess.run(
        [sys.executable, "-m", "sft.predict", "me/tiny-news", *TEXTS, "--top-k", "1",
         "--output", str(tmp_path / "hub.json"), "--no-progress"],
        env=hub_env(hub, tmp_path, HF_TOKEN=TOKEN), capture_output=True, text=True, timeout=300,
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


def test_model_card_carries_hub_metadata_and_the_runs_results(tmp_path, hub, finished_run):
    env = hub_env(hub, tmp_path, HF_TOKEN=TOKEN)
    assert push(finished_run, "--repo-id", "me/card", env=env, cwd=tmp_path).returncode == 0
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


def test_offline_mode_is_a_clear_error(tmp_path, hub, finished_run):
    env = hub_env(hub, tmp_path, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    result = push(finished_run, "--repo-id", "me/offline", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: HF_HUB_OFFLINE=1 is set")
    assert not hub.requests


def test_a_refused_token_is_a_clear_error(tmp_path, hub, finished_run):
    env = hub_env(hub, tmp_path, HF_TOKEN="hf_wrong")
    result = push(finished_run, "--repo-id", "me/denied", env=env, cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "refused the upload to me/denied (HTTP 401)" in last and "HF_TOKEN" in last
    assert "hf_wrong" not in result.stderr + result.stdout


def test_an_unreachable_hub_is_a_clear_error(tmp_path, hub, finished_run):
    env = hub_env(hub, tmp_path, HF_TOKEN=TOKEN, HF_ENDPOINT="http://127.0.0.1:9")  # discard port
    result = push(finished_run, "--repo-id", "me/nowhere", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: cannot reach the hub at http://127.0.0.1:9")
        and "HF_ENDPOINT" in last
    )


def test_a_hub_server_error_is_a_clear_error(tmp_path, hub, finished_run):
    hub.fail_with = 500
    result = push(
        finished_run,
        "--repo-id",
        "me/broken",
        env=hub_env(hub, tmp_path, HF_TOKEN=TOKEN),
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "answered HTTP 500 to the upload to me/broken" in last and "retry later" in last


def test_an_unfinished_run_is_not_pushed(tmp_path, hub):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("seed: 1\n")
    result = push(
        tmp_path / "half", "--repo-id", "me/half", env=hub_env(hub, tmp_path), cwd=tmp_path
    )
    assert result.returncode == 2
    assert "has no metrics.json: not the directory of a finished sft run" in result.stderr


def test_push_to_hub_at_the_end_of_training(tmp_path, hub, tiny_checkpoint, text_corpus):
    run_dir = tmp_path / "run"
    env = hub_env(hub, tmp_path, HF_TOKEN=TOKEN)
    result = subprocess.run(
        [sys.executable, "-m", "sft.train", "recipe=bert_news",
         f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}",
         f"output_dir={run_dir}", "trainer.epochs=1", "trainer.progress=false",
         "push_to_hub=true", "hub.repo_id=me/trained"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
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
