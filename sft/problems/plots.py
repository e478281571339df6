"""PNG plots of a run: loss and score curves from the history, and the drawings each problem
type (sft/problems/) picks for an evaluation: a confusion matrix, scores per label, or
predicted against true values."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np


def plot_curves(history: list[dict], out_dir: Path) -> list[Path]:
    """loss.png (train and eval loss by step) and the validation scores by step: accuracy.png
    (accuracy and F1s) for classification, scores.png (R², Pearson, Spearman) for regression."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in history if r["kind"] == "train"]
    evals = [r for r in history if r["kind"] == "eval"]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    ax.plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation")
    _finish(ax, "loss", "loss")
    fig.savefig(out_dir / "loss.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    keys = [k for k in SCORES if evals and k in evals[0]]
    scores = out_dir / ("accuracy.png" if "accuracy" in keys else "scores.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=SCORES[key])
    _finish(ax, "validation scores", "score")
    fig.savefig(scores, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [out_dir / "loss.png", scores]


# The scores drawn by step (all on a 0..1 scale, or -1..1): MSE and MAE have their own units.
SCORES = {"accuracy": "accuracy", "f1": "macro-F1", "f1_micro": "micro-F1", "r2": "R²",
          "pearson": "Pearson", "spearman": "Spearman"}  # fmt: skip


def plot_predicted(
    predictions: np.ndarray, references: np.ndarray, targets: list[str], title: str, path: Path
) -> Path:
    """Predicted against true value, one panel per target, with the diagonal where a perfect
    model's points would lie (at most 5,000 points a panel, evenly picked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    predictions = np.asarray(predictions).reshape(len(predictions), -1)
    references = np.asarray(references).reshape(len(references), -1)
    keep = np.linspace(0, len(predictions) - 1, min(len(predictions), 5000)).astype(int)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4.2), squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], targets, strict=True)):
        true, predicted = references[keep, j], predictions[keep, j]
        ax.scatter(true, predicted, s=6, alpha=0.4)
        low, high = min(true.min(), predicted.min()), max(true.max(), predicted.max())
        ax.plot([low, high], [low, high], color="grey", linewidth=1, label="predicted = true")
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.set_title(f"{title}: {name}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_confusion(matrix: list[list[int]], labels: list[str], title: str, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    counts = np.asarray(matrix)
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = counts.max() / 2 if counts.size else 0
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > threshold else "black")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_per_label(
    per_class: dict[str, dict[str, float]], title: str, path: Path, most: int = 30
) -> Path:
    """Precision, recall and F1 of each label as grouped horizontal bars, worst F1 on top: where
    a multi-label model falls short, at a glance. Of many labels, the `most` worst (the rest
    are in metrics.json and report.html's table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(per_class, key=lambda n: per_class[n]["f1"])
    if len(names) > most:
        title, names = f"{title}: the {most} worst of {len(names)}", names[:most]
    rows = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 0.5 * max(len(names), 2) + 1.2))
    for k, key in enumerate(("precision", "recall", "f1")):
        values = [per_class[n][key] for n in names]
        ax.barh(rows + (k - 1) * 0.27, values, height=0.27, label=key)
    ax.set_yticks(rows, [f"{n} ({per_class[n]['support']})" for n in names])
    ax.invert_yaxis()  # the worst label first, at the top
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (support in brackets)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_reliability(calibration: dict, title: str, path: Path) -> Path:
    """Reliability diagram: per confidence bin, how often the model was right against how sure
    it was, before and after calibration (`calibration`: metrics.json's, for one split); a
    calibrated model's points lie on the diagonal. Point area: the bin's share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linewidth=1, label="calibrated")
    for key, marker in (("before", "o--"), ("after", "s-")):
        bins = calibration[key]["bins"]
        if not bins:
            continue
        confidence, accuracy, count = (np.asarray(v, dtype=float) for v in zip(*bins, strict=True))
        ece = calibration[key]["ece"]
        ax.plot(confidence, accuracy, marker, label=f"{key} (ECE {ece:.3f})")
        ax.scatter(confidence, accuracy, s=400 * count / count.sum(), alpha=0.3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (predicted probability)")
    ax.set_ylabel("accuracy (observed frequency)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")  # below the diagonal: where few points of a good model lie
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _finish(ax, title: str, ylabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
