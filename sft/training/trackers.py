"""Experiment trackers through Accelerate (`logger=`): which one, whether it is installed, and
what it receives — the resolved config as hyper-parameters, every history row as scalars."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from sft.errors import SftError

PACKAGES = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "trackio": "trackio",
    "wandb": "wandb",
}


def log_with(name: str) -> str | None:
    """Accelerate's `log_with` for `logger.name`, or an SftError saying what to install."""
    import accelerate.utils

    if name == "none":
        return None
    if name not in PACKAGES:
        raise SftError(f"logger={name} is not one of {', '.join([*PACKAGES, 'none'])}")
    if not getattr(accelerate.utils, f"is_{name}_available")():
        raise SftError(
            f"logger={name} needs the {PACKAGES[name]} package: pip install {PACKAGES[name]}; "
            f"or use logger=tensorboard or logger=none"
        )
    return name


def recorder(accelerator: Any, run: Any) -> Any:
    """The loop's `record(row)`: each history row into <run>/history.jsonl and the tracker,
    from rank 0 only (`run` is the RunDir)."""

    def record(row: dict[str, Any]) -> None:
        if accelerator.is_main_process:
            run.record(row)
            accelerator.log(scalars(row), step=row.get("step"))

    return record


def start(accelerator: Any, name: str, cfg: Any) -> None:
    """Start the tracker `log_with(name)` chose, with the run's config as hyper-parameters
    (logger=none: none)."""
    if name == "none":
        return
    # TensorBoard writes to <project_dir>/<project name>: <run>/tensorboard/.
    project = "tensorboard" if name == "tensorboard" else "sft"
    accelerator.init_trackers(project, config=hyperparameters(cfg))


def hyperparameters(cfg: Any) -> dict[str, Any]:
    """The resolved config flattened to `group/key: scalar` (lists and None as text), as
    trackers take hyper-parameters."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}/")
        elif isinstance(node, (bool, int, float, str)):
            flat[prefix.rstrip("/")] = node
        else:
            flat[prefix.rstrip("/")] = str(node)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True), "")
    return flat


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """A history row as tracker scalars: train/loss, train/lr, eval/accuracy, ..."""
    kind = row.get("kind", "train")
    skip = {"kind", "step", "epoch", "best"}
    return {
        f"{kind}/{key}": float(value)
        for key, value in row.items()
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
