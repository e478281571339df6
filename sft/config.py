"""The typed schema behind `conf/`: every key a user can set, its type and default.

Hydra merges the YAML files in `conf/` onto these dataclasses, so a misspelt key or a value of
the wrong type fails at composition, before any model loads. Functions in `sft/` receive these
dataclasses (or plain values taken from them), never a `DictConfig`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft.errors import SftError

# The YAML side of the schema: sft/conf in an installed wheel (which carries conf/ and recipes/
# there), the checkout's top-level conf/ in an editable install.
CONF_DIR = next(
    d for d in (Path(__file__).parent / "conf", Path(__file__).parents[1] / "conf") if d.is_dir()
)


@dataclass
class ModelConfig:
    checkpoint: str = MISSING  # hub id or local directory, passed to `from_pretrained`
    revision: str | None = None  # hub branch, tag or commit; ignored for local directories
    # Speech: keep the convolutional feature encoder (wav2vec2, HuBERT) at its pretrained weights.
    freeze_feature_encoder: bool = False


@dataclass
class DataConfig:
    path: str = MISSING  # hub dataset id, local directory, or a single data file
    name: str | None = None  # hub dataset configuration name, e.g. "sst2" for glue
    text_column: str = "text"  # read when task=text-classification
    image_column: str = "image"  # read when task=image-classification: images or file paths
    audio_column: str = "audio"  # read when task=audio-classification: audio or file paths
    label_column: str = "label"
    # multi_label / regression: one column per label (0/1) or per numeric target, instead
    label_columns: list[str] | None = None
    label_separator: str | None = None  # multi_label: the character between labels in a string
    # regression: learn each target as (value - mean) / std of train; outputs are scaled back
    standardize_targets: bool = True
    # Text files are decoded with these encodings, tried in order, before failing.
    encodings: list[str] = field(default_factory=lambda: ["utf-8"])
    max_length: int = 256  # tokens per example; longer texts are truncated, or (long_text)
    # chunks: cut into windows of max_length overlapping by `stride` tokens (None: a quarter of
    # max_length), at most max_chunks a text; each trains with its text's targets, and their
    # logits are pooled (pool: mean | max) into one prediction per text wherever a model runs
    long_text: str = "truncate"
    stride: int | None = None
    max_chunks: int = 8
    pool: str = "mean"
    max_duration: float | None = None  # seconds of audio per clip: crop (random on train) or pad
    eval_fraction: float = 0.1  # share of train held out for validation when none is given
    test_fraction: float = 0.0  # share of train held out for test when none is given (0 = none)
    max_train_samples: int | None = None  # cap on train examples (a seeded random subset)
    max_eval_samples: int | None = None  # cap on validation and test examples
    num_workers: int = 0  # DataLoader worker processes; 0 keeps loading in the main process
    # default: shuffled batches of similar length (text, speech; less padding), else shuffled;
    # shuffle: plain shuffling; balanced: every class equally often, with replacement
    sampler: str = "default"


@dataclass
class AugmentConfig:
    """Random changes to train batches only (never validation or test). 0 / null = off."""

    name: str = "none"
    # Images (kornia, on resized pixel tensors in [0, 1]):
    zoom: float = 0.0  # random resized crop keeping (1 - zoom)..1 of the area
    hflip: float = 0.0  # probability of a horizontal flip
    shear: float = 0.0  # affine shear, up to this many degrees either way
    color_jitter: float = 0.0  # brightness, contrast and saturation vary by up to this factor
    # Speech (audiomentations, on waveforms); each applies to a clip with probability `p`:
    gain_db: float = 0.0  # random gain within +-gain_db decibels
    noise_snr_db: list[float] | None = None  # [min, max] SNR of added Gaussian noise, in dB
    shift: float = 0.0  # time shift (with roll-over) up to this fraction of the clip
    p: float = 0.5


@dataclass
class FinetuneConfig:
    """What trains. Blocks are found from the model's structure (see sft/training/finetune.py)."""

    strategy: str = "full"  # full | head_only | top_k | pattern | gradual | lora
    k: int = 2  # top_k: how many of the top blocks train (with the head)
    every: int = 1  # gradual: epochs between unfreezing one more block from the top
    train: list[str] = field(default_factory=list)  # pattern: regexes to train (empty: all)
    freeze: list[str] = field(default_factory=list)  # pattern: regexes of parameters to freeze
    # lora (peft): adapters of rank r on the blocks' `target_modules` (None = per architecture)
    r: int = 8
    alpha: int = 16  # scale = alpha / r
    dropout: float = 0.1
    target_modules: list[str] | None = None
    merge: bool = True  # save a plain model with adapters merged in; false saves the adapter
    # With the lowest blocks frozen and the same train inputs every epoch (no augmentation),
    # compute the frozen blocks' output once and train on it (sft/training/feature_cache.py)
    cache_features: bool = True
    cache_max_gib: float = 4.0  # ... unless the features would take more memory than this


@dataclass
class LossConfig:
    label_smoothing: float = 0.0  # share of target mass spread evenly over all classes
    # none | auto (inverse class frequency in train) | a list with one weight per label
    class_weights: Any = "none"
    # multi_label: none | auto (each label's positives weighed by its negatives per positive)
    pos_weight: str = "none"
    regression: str = "mse"  # regression: mse | huber


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 5e-5
    head_lr: float | None = None  # learning rate of the new head; None = lr
    layer_decay: float = 1.0  # lr factor per block from the top (0.65..0.9 typical); 1 = off
    weight_decay: float = 0.01  # applied to weights only, never to biases or norm layers
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # torch's fused kernel: one pass over all parameters per step (CPU, CUDA, MPS), 5x quicker
    # than the per-tensor loop on CPU (BENCHMARKS.md); false for a device without it
    fused: bool = True


@dataclass
class SchedulerConfig:
    name: str = "linear"  # any `transformers.get_scheduler` name: linear, cosine, constant...
    warmup_ratio: float = 0.1  # share of all optimizer steps spent warming up from lr=0


@dataclass
class TrainerConfig:
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; when set it overrides `epochs`
    batch_size: int = 16  # examples per process per forward pass
    eval_batch_size: int = 64
    grad_accum_steps: int = 1  # the optimizer steps every N batches
    max_grad_norm: float = 1.0  # clip gradients at this norm, or disable with 0
    # auto | fp32 | bf16 | fp16; auto = bf16 on a CPU with AMX, fp32 on other CPUs (bf16 is
    # slower there: emulated, or AVX-512 BF16 alone), bf16/fp16 on GPU (sft.training.accelerator)
    precision: str = "auto"
    eval_every: int | None = None  # evaluate every N optimizer steps; None = each epoch end
    log_every: int = 10  # optimizer steps between history records
    # the validation metric that picks the best model; auto: f1 (macro) for classification,
    # mse for regression. Also: accuracy, f1_micro (multi_label), mae, r2, pearson, spearman
    metric: str = "auto"
    early_stopping_patience: int = 0  # stop after N evals without improvement; 0 = never
    progress: bool = True  # show a progress bar
    # Recompute activations in backward (less memory, ~30% more compute; non-reentrant: right
    # gradients when the layers below are frozen)
    gradient_checkpointing: bool = False
    # Checkpoints (<run>/checkpoints/step-N: weights, optimizer, scheduler, RNGs, position) at each
    # epoch end and every N optimizer steps (0: epoch ends only); the last K kept (0: none).
    checkpoint_every: int = 0
    keep_checkpoints: int = 1


@dataclass
class LoggerConfig:
    """The experiment tracker, through Accelerate: tensorboard | mlflow | trackio | wandb | none.
    Each writes into (or beside) the run directory; all but tensorboard install separately."""

    name: str = "tensorboard"


@dataclass
class HubConfig:
    """Where `push_to_hub=true` publishes the finished run (see sft/publishing/hub.py)."""

    repo_id: str | None = None  # user/name or org/name
    private: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    push_to_hub: bool = False  # publish model, card, config, metrics, plots when training ends
    seed: int = 42
    dry_run: bool = False  # build model and data, print the parameter-group table, train nothing
    # auto: continue from the run directory's latest complete checkpoint (a finished run is
    # left as it is); never: start over; or the path of a checkpoint to continue from.
    resume: str = "auto"
    output_dir: str = MISSING  # the run directory: model/, metrics.json, plots/, history
    # text-classification | image-classification | audio-classification (pipeline task names)
    task: str = "text-classification"
    # single_label | multi_label (any number of labels per example) | regression (numbers);
    # saved as the model's `problem_type`, which pipeline() scores by
    problem: str = "single_label"
    # temperature: fit one temperature on the validation split's logits after training and fold
    # it into the saved output layer (calibrated probabilities; no argmax changes); none: as is
    calibration: str = "temperature"


def to_config(cfg: DictConfig) -> Config:
    """The composed DictConfig as typed dataclasses, with every interpolation resolved."""
    unknown = unknown_keys(cfg)
    if unknown:  # a `+key=value` override adds keys the schema does not check
        raise SftError(not_a_key(unknown[0]))
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else None
        message = str(cause) if cause else str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise SftError(f"config key '{key}': {message}" if key else message) from err


def not_a_key(key: str) -> str:
    """The error for a key the schema does not have, with the closest one that it has."""
    wanted = key.lstrip("+~")
    keys = schema_keys()
    settings = [k for k in keys if not any(o.startswith(f"{k}.") for o in keys)]  # no groups
    leaf = wanted.rsplit(".", 1)[-1]
    # The setting whose own name holds the one given (warmup: scheduler.warmup_ratio), else
    # the closest whole key.
    group = wanted.rsplit(".", 1)[0]
    close = [k for k in settings if len(leaf) > 3 and leaf in k.rsplit(".", 1)[-1]]
    close.sort(key=lambda k: not k.startswith(f"{group}."))  # its own group's first
    close = close or difflib.get_close_matches(wanted, settings, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{key} is not a config key; {hint}`python -m sft.train --cfg job` lists them"


def schema_keys() -> list[str]:
    """Every key of the schema, dotted: `trainer.epochs`, `optimizer.lr`, ..."""

    def walk(node: dict, prefix: str) -> Iterator[str]:
        for key, value in node.items():
            yield f"{prefix}{key}"
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")

    return list(walk(_schema_tree(), ""))


def unknown_keys(cfg: DictConfig) -> list[str]:
    """Keys of `cfg` that the schema does not have, dotted."""

    def walk(node: dict, schema: dict, prefix: str) -> Iterator[str]:
        for key, value in node.items():
            if key not in schema:
                yield f"{prefix}{key}"
            elif isinstance(value, dict) and isinstance(schema[key], dict):
                yield from walk(value, schema[key], f"{prefix}{key}.")

    return list(walk(OmegaConf.to_container(cfg), _schema_tree(), ""))


@functools.cache
def _schema_tree() -> dict:
    return OmegaConf.to_container(OmegaConf.structured(Config))


def with_overrides(base: Path | dict[str, Any], overrides: list[str], fixed: dict) -> Config:
    """A run's config.yaml (or a plain dict of settings) with `key=value` overrides and then
    `fixed` on top, checked against the schema."""
    layer = OmegaConf.load(base) if isinstance(base, Path) else OmegaConf.create(base)
    try:
        merged = OmegaConf.merge(
            OmegaConf.structured(Config), layer, OmegaConf.from_dotlist(overrides), fixed
        )
    except OmegaConfBaseException as err:
        raise SftError(f"{str(err).splitlines()[0]}; check the key=value arguments") from err
    return to_config(merged)


def package_path(package: str, subpath: str = "") -> str:
    """Directory of an installed package (plus `subpath`): how offline assets are located."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"package '{package}' is not installed; run `make install` (it installs the offline "
            f"assets) or override the key that points into it"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / subpath)


def repo_path(subpath: str = "") -> str:
    """A path inside the sft checkout (where `make` prepares data), from any working directory."""
    return str(Path(__file__).resolve().parents[1] / subpath)


@functools.cache
def launch_time() -> datetime:
    """When this run was launched. Under `accelerate launch` / torchrun every rank is a child of
    one launcher process, started seconds apart: they all read the launcher's start time, so
    they agree on one run directory (Hydra's `${now:}` gives each rank its own)."""
    if "LOCAL_RANK" in os.environ:
        try:
            stat = Path(f"/proc/{os.getppid()}/stat").read_text()
            ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start, in clock ticks
            boot = next(
                int(line.split()[1])
                for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime ")
            )
            return datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError, StopIteration):
            pass  # not Linux: each rank its own time; pass output_dir= to share one
    return datetime.now()


def sweep_name() -> str:
    """The same sweep directory name for the same command line (which every job of the sweep
    sees): rerunning a sweep skips its finished jobs and resumes its interrupted ones."""
    overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), "sweep")
    digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return f"{recipe}-{digest}"


def register() -> None:
    """Make the schema and the `${sft.package:...}` / `${sft.repo:...}` / `${sft.converted:...}`
    / `${sft.launch_time:<strftime format>}` / `${sft.sweep_name:}` resolvers known."""
    from sft.pretrained import converted_path

    ConfigStore.instance().store(name="schema", node=Config)
    resolvers = {  # name: (resolver, whether one value holds for the whole run)
        "sft.sweep_name": (sweep_name, True),
        "sft.launch_time": (lambda fmt: launch_time().strftime(fmt), True),
        "sft.package": (package_path, False),
        "sft.repo": (repo_path, False),
        "sft.converted": (converted_path, False),
    }
    for name, (resolver, cached) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cached)
