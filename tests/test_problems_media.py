"""Multi-label and regression on images and speech, through the same loop and commands as text:
synthesised pictures holding one or two colours (tags: the colours; score: the brightness) and
clips holding one or two tones (tags: the tones; score: the loudness), on tiny ViT and wav2vec2
models; one run caches frozen features (finetune=head_only). Each run's saved model answers
`pipeline()` with its own sigmoid scores or values, and `sft.predict` agrees. Each run is
trained once, in this process, and read by both checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from sft.problems import PROBLEMS
from tests.conftest import run_cli
from tests.helpers.browser import needs_chromium, render
from tests.test_audio import tiny_wav2vec2  # noqa: F401 (fixture)
from tests.test_image import tiny_vit  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
TONES = {"low": 220.0, "high": 1760.0}


def tag_sets(names: list[str], n: int, seed: int) -> list[list[str]]:
    """n label sets of one or two of `names`, every one of them present in some."""
    rng = np.random.default_rng(seed)
    return [sorted(set(rng.choice(names, size=1 + i % 2).tolist())) for i in range(n)]


@pytest.fixture(scope="module")
def tagged_pictures(tmp_path_factory):
    """train/test .jsonl manifests of PNGs: the left and right halves take the colours of the
    row's tags; score: the mean brightness (0..1)."""
    root = tmp_path_factory.mktemp("data") / "pictures"
    (root / "img").mkdir(parents=True)
    for split, (n, seed) in {"train": (30, 0), "test": (9, 1)}.items():
        rows = []
        for i, tags in enumerate(tag_sets(list(COLOURS), n, seed)):
            rng = np.random.default_rng(seed * 1000 + i)
            light = rng.uniform(0.3, 1.0)
            left, right = COLOURS[tags[0]], COLOURS[tags[-1]]
            pixels = np.zeros((24, 24, 3))
            pixels[:, :12], pixels[:, 12:] = left, right
            pixels = np.clip(pixels * light + rng.integers(-10, 10, pixels.shape), 0, 255)
            name = f"img/{split}{i}.png"
            Image.fromarray(pixels.astype("uint8"), "RGB").save(root / name)
            score = float(pixels.mean() / 255)
            rows.append({"image": name, "tags": tags, "colour": tags[0], "score": score})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def tagged_clips(tmp_path_factory):
    """train/test .jsonl manifests of WAVs: the sum of the row's tones; score: the amplitude."""
    root = tmp_path_factory.mktemp("data") / "clips"
    (root / "wav").mkdir(parents=True)
    rate = 16000
    t = np.arange(int(0.4 * rate)) / rate
    for split, (n, seed) in {"train": (24, 0), "test": (8, 1)}.items():
        rows = []
        for i, tags in enumerate(tag_sets(list(TONES), n, seed)):
            rng = np.random.default_rng(seed * 1000 + i)
            amplitude = rng.uniform(0.1, 0.5)
            wave = sum(np.sin(2 * np.pi * TONES[tag] * t) for tag in tags) / len(tags)
            wave = amplitude * wave + 0.01 * rng.standard_normal(len(t))
            name = f"wav/{split}{i}.wav"
            soundfile.write(root / name, wave.astype(np.float32), rate)
            rows.append({"audio": name, "tags": tags, "tone": tags[0], "score": float(amplitude)})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


RUNS = {  # recipe, model and data fixtures, the input column, the pipeline's task
    "image": ("vit_fashion_mnist", "tiny_vit", "tagged_pictures", "image", "image-classification"),
    "speech": ("wav2vec2_digits", "tiny_wav2vec2", "tagged_clips", "audio", "audio-classification"),
}
TARGETS = {  # the label column of each problem, by modality
    "single_label": {"image": "colour", "speech": "tone"},
    "multi_label": {"image": "tags", "speech": "tags"},
    "regression": {"image": "score", "speech": "score"},
}


CASES = pytest.mark.parametrize(
    "modality, problem, finetune",
    [
        ("image", "multi_label", "full"),
        ("image", "regression", "head_only"),  # frozen features cached, the head trained
        ("speech", "multi_label", "full"),
        ("speech", "regression", "full"),
    ],
)


@pytest.fixture(scope="module")
def finished(request, tmp_path_factory):
    """(modality, problem, finetune) -> (run directory, data folder), trained on first use."""
    runs = {}

    def run_of(modality: str, problem: str, finetune: str):
        key = (modality, problem, finetune)
        if key not in runs:
            recipe, checkpoint, data, _, _ = RUNS[modality]
            checkpoint, data = request.getfixturevalue(checkpoint), request.getfixturevalue(data)
            base = tmp_path_factory.mktemp(f"{modality}-{problem}")
            column = f"data.label_column={TARGETS[problem][modality]}"
            # Regression: validation examples enough (>= 9) for a 90% prediction interval.
            held_out = (
                "data.eval_fraction=0.4" if problem == "regression" else "data.eval_fraction=0.1"
            )
            result = run_cli(
                f"recipe={recipe}",
                f"model.checkpoint={checkpoint}",
                f"data.path={data}",
                f"problem={problem}",
                column,
                held_out,
                f"finetune={finetune}",
                "augment=none",  # (features are cached only where no augmentation changes them)
                "trainer.epochs=2",  # a second epoch reads the cached features
                "trainer.batch_size=8",
                "optimizer.lr=3e-3",
                "trainer.progress=false",
                f"output_dir={base / 'run'}",
                cwd=base,
            )
            assert result.returncode == 0, result.stderr[-4000:]
            runs[key] = base / "run", data
        return runs[key]

    return run_of


@CASES
def test_images_and_speech_train_as_text_does(finished, modality, problem, finetune):
    run_dir, _ = finished(modality, problem, finetune)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["problem"] == problem and metrics["split"] == "test"
    assert all(key in metrics for key in PROBLEMS[problem].metrics)
    if finetune == "head_only":
        assert metrics["feature_cache_seconds"] >= 0  # the frozen body ran once per example
    plot = "per_label.png" if problem == "multi_label" else "predicted.png"
    assert (run_dir / "plots" / plot).exists()


@CASES
def test_the_saved_model_answers_pipeline_and_sft_predict(
    tmp_path, finished, modality, problem, finetune
):
    """The saved model in pipeline(): sigmoid scores (multi-label) or the values (regression);
    sft.predict labels by the run's threshold, or gives the value."""
    from transformers import (
        AutoFeatureExtractor,
        AutoImageProcessor,
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        pipeline,
    )

    run_dir, data = finished(modality, problem, finetune)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, _, _, input_column, task = RUNS[modality]
    model_dir = str(run_dir / "model")
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    file = str(data / rows[0][input_column])
    image = modality == "image"
    auto = AutoModelForImageClassification if image else AutoModelForAudioClassification
    model = auto.from_pretrained(model_dir).eval()
    assert model.config.problem_type == PROBLEMS[problem].problem_type
    if image:
        processor = AutoImageProcessor.from_pretrained(model_dir)
        inputs = processor(Image.open(file).convert("RGB"), return_tensors="pt")
        given = file
    else:
        wave, rate = soundfile.read(file, dtype="float32")
        processor = AutoFeatureExtractor.from_pretrained(model_dir)
        inputs = processor(wave, sampling_rate=rate, return_tensors="pt")
        given = {"raw": wave, "sampling_rate": rate}  # (a file name needs ffmpeg)
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    expected = logits.sigmoid() if problem == "multi_label" else logits
    scores = pipeline(task, model=model_dir, device="cpu")(given, top_k=None)
    by_label = {s["label"]: s["score"] for s in scores}
    for i, label in model.config.id2label.items():
        assert by_label[label] == pytest.approx(expected[i].item(), rel=1e-4, abs=1e-6)

    out = tmp_path / "predictions.json"  # in fp32, as the pipeline above
    predicted = run_cli(str(run_dir), file, "--output", str(out), "--precision", "fp32",
                        cwd=tmp_path, module="sft.predict")  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    [row] = json.loads(out.read_text())
    if problem == "multi_label":
        threshold = metrics["multi_label_threshold"]
        assert sorted(row["labels"]) == sorted(k for k, s in by_label.items() if s > threshold)
    else:  # with the 90% interval from the validation residuals
        assert row["score"] == pytest.approx(by_label["score"], rel=1e-4)
        [half] = metrics["interval_half_width"]
        assert row["score_high"] - row["score"] == pytest.approx(half, rel=1e-4)
        assert row["score"] - row["score_low"] == pytest.approx(half, rel=1e-4)


@pytest.mark.parametrize(
    "modality, problem, finetune",
    [
        ("image", "single_label", "full"),
        ("image", "multi_label", "full"),
        ("image", "regression", "head_only"),
        ("speech", "single_label", "full"),
        ("speech", "multi_label", "full"),
        ("speech", "regression", "full"),
    ],
)
@needs_chromium
def test_report_pages_show_the_examples_in_chromium(
    tmp_path, finished, modality, problem, finetune
):
    """The page each run writes renders whole; `sft.report` on the test examples with every
    target made wrong lists them as mistakes, each with its picture shown or its clip playable."""
    run_dir, data = finished(modality, problem, finetune)
    shown = render(run_dir / "report.html", tmp_path / "browser")
    assert shown["sections"][0] == "scores" and shown["sections"][-1] == "mistakes"
    assert shown["images"] and all(i["decoded"] and i["shown"] for i in shown["images"])

    _, _, _, column, _ = RUNS[modality]
    target = TARGETS[problem][modality]
    names = sorted(COLOURS if modality == "image" else TONES)
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    with (wrong / "test.jsonl").open("w") as out:
        for row in rows:
            value = row[target]
            if problem == "single_label":  # the next name along
                value = names[(names.index(value) + 1) % len(names)]
            elif problem == "multi_label":  # the names it lacks, or one where it has them all
                value = [n for n in names if n not in value] or names[:1]
            else:
                value = value + 10.0
            out.write(json.dumps({column: str(data / row[column]), target: value}) + "\n")
    result = run_cli(str(run_dir), f"data.path={wrong}", "--output-dir", str(tmp_path / "out"),
                     "--no-progress", cwd=tmp_path, module="sft.report")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    shown = render(tmp_path / "out" / "report.html", tmp_path / "browser")
    assert 0 < len(shown["mistakes"]) <= len(rows)
    if problem == "regression":  # every example, the largest residual (> 9) first
        assert len(shown["mistakes"]) == len(rows) and float(shown["mistakes"][0][-1]) > 9
    pictures = [i for i in shown["images"] if i["inMistakes"]]
    assert all(i["decoded"] for i in shown["images"])
    if modality == "image":
        assert len(pictures) == len(shown["mistakes"]) and all(i["shown"] for i in pictures)
    else:
        assert not pictures and len(shown["clips"]) == len(shown["mistakes"])
        assert all(c["error"] is None and c["duration"] > 0.3 for c in shown["clips"])


@pytest.mark.parametrize("modality", ["image", "speech"])
def test_int8_export_of_image_and_speech_runs(tmp_path, finished, modality):
    """ViT and wav2vec2 quantize too (their linear layers; wav2vec2's convolutions stay fp32)
    and are scored on the run's validation split, multi-label threshold and all."""
    run_dir, _ = finished(modality, "multi_label", "full")
    out = tmp_path / "onnx"
    result = run_cli(str(run_dir), "--onnx", "--quantize", "int8", "--max-drop", "1",
                     "--output", str(out), cwd=tmp_path, module="sft.export")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    gate = json.loads((out / "export.json").read_text())["int8"]
    assert gate["kept"] and (out / "model.int8.onnx").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert gate["fp32"]["validation"] == pytest.approx(metrics["validation"]["f1"], abs=1e-6)
