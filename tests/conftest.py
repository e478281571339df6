"""Shared fixtures: a tiny BERT checkpoint built from a config, a small learnable text corpus, and
the commands run in this process (`run_cli`) or in a new one (`run_process`). Nothing is
downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A corpus with a learnable signal: each class has its own words, mixed with shared filler.
CLASS_WORDS = {
    "sport": ["match", "goal", "team", "coach", "league", "score"],
    "tech": ["chip", "software", "robot", "laptop", "network", "code"],
    "politics": ["vote", "minister", "party", "election", "law", "senate"],
}
FILLER = ["the", "a", "today", "news", "report", "said", "new", "big", "week", "people"]


def make_rows(n_per_class: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(n_per_class):
            tokens = rng.sample(words, 3) + rng.sample(FILLER, 4)
            rng.shuffle(tokens)
            rows.append({"text": " ".join(tokens), "label": label})
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT (random weights) with a WordPiece tokenizer, saved like a hub
    checkpoint: config.json, model.safetensors, tokenizer.json."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=backend, model_max_length=512)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,  # as BERT: recipes' data.max_length fits
    )
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_text_corpus(root: Path) -> Path:
    """`root` made a directory with train.csv (60 rows) and test.csv (15 rows), columns
    text,label: the `text_corpus` fixture's, for module- and session-scoped runs too."""
    root.mkdir(parents=True)
    pd.DataFrame(make_rows(20, seed=1)).to_csv(root / "train.csv", index=False)
    pd.DataFrame(make_rows(5, seed=2)).to_csv(root / "test.csv", index=False)
    return root


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    return write_text_corpus(tmp_path / "corpus")


# What every finished run leaves in its directory (the processor's file varies by modality).
RUN_FILES = (
    "config.yaml",
    "param_groups.json",
    "history.jsonl",
    "metrics.json",
    "plots/loss.png",
    "plots/accuracy.png",
    "plots/confusion_matrix.png",
    "model/config.json",
    "model/model.safetensors",
)


def assert_run_outputs(run_dir: Path, *extra: str) -> None:
    for name in (*RUN_FILES, *extra):
        assert (run_dir / name).is_file(), name


def pytest_configure(config) -> None:
    """Under pytest-xdist (`make test` runs two workers on the two cores): one torch thread per
    worker, and in every process a test starts, or the workers oversubscribe the cores and slow
    each other several times over."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


# Every command in this process runs offline, as in the child processes the tests start.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(OFFLINE)


def run_cli(*args: str, cwd: Path, module: str = "sft.train") -> subprocess.CompletedProcess:
    """`python -m <module> <args>` run inside this process: the command's own `main(argv)`, in
    `cwd`, with its stdout, stderr (logging included) and exit status captured as a process's
    would be. For every test whose subject is what a command does, not the process it runs in
    (most): no interpreter start, no second import of torch and transformers."""
    import importlib
    import logging
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    command = importlib.import_module(module)
    out, err = StringIO(), StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level, sys.argv, os.getcwd()
    root.handlers.clear()  # the command sets up its own logging to its stderr, as in a process
    status = 0
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            command.main(list(args))
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], sys.argv = saved[0], saved[2]
        root.setLevel(saved[1])
        os.chdir(saved[3])
        _forget_the_run()
    return subprocess.CompletedProcess([module, *args], status, out.getvalue(), err.getvalue())


def _forget_the_run() -> None:
    """What a process would drop on exit: Accelerate's process-wide state (a next run may ask
    for another precision), and a finished run's open handles (its run directory's lock)."""
    import gc

    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    gc.collect()


def run_process(*args: str, cwd: Path, module: str = "sft.train", **env: str):
    """`python -m <module> <args>` in a new process, offline, as a user would run it: for the
    tests whose subject is the process (its exit status, signals, a fresh interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, **OFFLINE, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


# Tiny classifiers beside BERT: the task and how many blocks sft should find in each.
KINDS = {
    "vit": ("image-classification", 4),
    "resnet": ("image-classification", 4),
    "efficientnet": ("image-classification", 7),
    "wav2vec2": ("audio-classification", 2),
    "whisper": ("audio-classification", 2),
}


@pytest.fixture(scope="session")
def models(tmp_path_factory, tiny_checkpoint):
    """A loader of fresh tiny classifiers (3 labels) by kind: bert, vit, resnet, ..."""
    import torch

    from sft import modalities
    from sft.prepare import tiny_model
    from sft.training.model import load_classifier

    paths = {"bert": (str(tiny_checkpoint), "text-classification")}
    for kind, (task, _) in KINDS.items():
        torch.manual_seed(0)
        paths[kind] = (str(tiny_model(kind, tmp_path_factory.mktemp(kind))), task)

    def load(kind: str, **kwargs):
        path, task = paths[kind]
        return load_classifier(path, ["a", "b", "c"], modalities.get(task), **kwargs)

    return load


# Tiny settings: the 2-layer model learns the keyword corpus in ~80 steps of milliseconds each.
FAST = [
    "trainer.epochs=10",
    "trainer.batch_size=16",
    "trainer.log_every=2",
    "optimizer.lr=5e-3",
    "data.max_length=32",
    "trainer.progress=false",
]


@pytest.fixture(scope="session")
def trained_text_run(tmp_path_factory, tiny_checkpoint):
    """A finished run of the tiny BERT on the keyword corpus (train.csv, test.csv): (run
    directory, corpus). Shared: tests that write into the run directory copy it first."""
    base = tmp_path_factory.mktemp("cli")
    corpus = base / "corpus"
    corpus.mkdir()
    pd.DataFrame(make_rows(40, seed=1)).to_csv(corpus / "train.csv", index=False)
    pd.DataFrame(make_rows(10, seed=2)).to_csv(corpus / "test.csv", index=False)
    return run_tiny_text(base, tiny_checkpoint, corpus, *FAST)[1], corpus


def run_tiny_text(tmp_path, checkpoint, corpus, *overrides: str):
    """The CLI on the tiny BERT and text corpus with `overrides`; asserts it succeeded."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "recipe=bert_news",
        f"model.checkpoint={checkpoint}",
        f"data.path={corpus}",
        f"output_dir={run_dir}",
        *overrides,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, run_dir
