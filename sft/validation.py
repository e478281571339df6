"""Values the schema's types allow but a run cannot use (lr <= 0, a fraction outside (0, 1), a
regex that does not compile, ...): `validate` refuses them before anything loads, naming the key,
the value and the range it must lie in."""

from __future__ import annotations

import codecs
import functools
import re
from typing import Any

from sft.config import Config
from sft.errors import SftError, first_line

SCHEDULERS = {
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
}
PRECISIONS = {"auto", "fp32", "bf16", "fp16"}
SAMPLERS = {"default", "shuffle", "balanced"}
# The numbers each numeric key accepts, as intervals: "[" and "]" include an end, "(" and ")"
# exclude it. Optional keys left unset (None) are not checked; a list is checked item by item.
RANGES = {
    "seed": "[0, inf)",  # numpy refuses negative seeds
    "data.max_length": "[1, inf)",
    "data.stride": "[0, inf)",  # and below max_length: see _check_long_text
    "data.max_chunks": "[1, inf)",
    "data.max_duration": "(0, inf)",
    "data.eval_fraction": "(0, 1)",
    "data.test_fraction": "[0, 1)",  # 0: no test split carved out of train
    "data.max_train_samples": "[1, inf)",
    "data.max_eval_samples": "[1, inf)",
    "data.num_workers": "[0, inf)",
    "augment.zoom": "[0, 1)",  # 1 would crop to nothing
    "augment.hflip": "[0, 1]",
    "augment.shear": "[0, inf)",
    "augment.color_jitter": "[0, inf)",
    "augment.gain_db": "[0, inf)",
    "augment.shift": "[0, 1]",
    "augment.p": "[0, 1]",
    "finetune.k": "[1, inf)",
    "finetune.every": "[1, inf)",
    "finetune.r": "[1, inf)",
    "finetune.alpha": "(0, inf)",
    "finetune.dropout": "[0, 1)",
    "finetune.cache_max_gib": "[0, inf)",
    "loss.label_smoothing": "[0, 1)",  # 1 would spread all target mass evenly: nothing to learn
    "optimizer.lr": "(0, inf)",
    "optimizer.head_lr": "(0, inf)",
    "optimizer.layer_decay": "(0, 1]",
    "optimizer.weight_decay": "[0, inf)",
    "optimizer.betas": "[0, 1)",
    "optimizer.eps": "(0, inf)",
    "scheduler.warmup_ratio": "[0, 1]",
    "trainer.epochs": "[1, inf)",
    "trainer.max_steps": "[1, inf)",
    "trainer.batch_size": "[1, inf)",
    "trainer.eval_batch_size": "[1, inf)",
    "trainer.grad_accum_steps": "[1, inf)",
    "trainer.max_grad_norm": "[0, inf)",  # 0: no clipping
    "trainer.eval_every": "[1, inf)",
    "trainer.log_every": "[1, inf)",
    "trainer.early_stopping_patience": "[0, inf)",  # 0: never stop early
    "trainer.checkpoint_every": "[0, inf)",
    "trainer.keep_checkpoints": "[0, inf)",
}
# Keys whose values are regular expressions, matched against parameter names.
REGEX_KEYS = ("finetune.train", "finetune.freeze")


def within(value: float, interval: str) -> bool:
    """Whether `value` lies in `interval`, written as in RANGES."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def _must(interval: str) -> str:
    """An interval as the error message says it: "be at least 1", "lie in [0, 1)"."""
    low, high = interval[1:-1].split(", ")
    if high == "inf":
        return f"be {'more than' if interval[0] == '(' else 'at least'} {low}"
    return f"lie in {interval}"


def _check_long_text(cfg: Config, check) -> None:
    d = cfg.data
    check(d.long_text in ("truncate", "chunks"), "data.long_text", d.long_text,
          "use truncate or chunks")  # fmt: skip
    check(d.pool in ("mean", "max"), "data.pool", d.pool, "use mean or max")
    if d.long_text == "chunks":
        from sft.modalities import TEXT

        check(cfg.task == TEXT, "data.long_text", d.long_text,
              f"windows are cut from texts; task={cfg.task} reads no text")  # fmt: skip
        room = d.max_length - 2  # a window's tokens besides the tokenizer's [CLS] and [SEP]
        check(d.stride is None or d.stride < room, "data.stride", d.stride,
              f"windows must move on: use less than data.max_length - 2 = {room}")  # fmt: skip


def validate(cfg: Config) -> None:
    """Values the types allow but the run cannot use: fail before anything loads."""

    def check(ok: bool, key: str, value: Any, want: str) -> None:
        if not ok:
            raise SftError(f"{key}={value} is not allowed: {want}")

    def value_of(key: str) -> Any:
        return functools.reduce(getattr, key.split("."), cfg)

    from sft import modalities
    from sft.modalities import TASKS
    from sft.problems import PROBLEMS

    t = cfg.trainer
    check(cfg.task in TASKS, "task", cfg.task, f"use one of {', '.join(TASKS)}")
    check(cfg.problem in PROBLEMS, "problem", cfg.problem, f"use one of {', '.join(PROBLEMS)}")
    metrics = ["auto", *PROBLEMS[cfg.problem].metrics, "loss"]
    check(
        t.metric in metrics,
        "trainer.metric",
        t.metric,
        f"with problem={cfg.problem} use one of {metrics}",
    )
    _check_problem_keys(cfg, check)
    check(cfg.calibration in ("temperature", "none"), "calibration", cfg.calibration,
          "use temperature or none")  # fmt: skip
    if cfg.task in TASKS:
        key = modalities.get(cfg.task).column_key
        column = getattr(cfg.data, key)
        targets = {cfg.data.label_column, *(cfg.data.label_columns or ())}
        check(
            column not in targets,
            f"data.{key}",
            column,
            "it is a label column too, so the model would read the answer; name the input column",
        )
    check(
        t.precision in PRECISIONS,
        "trainer.precision",
        t.precision,
        f"use one of {sorted(PRECISIONS)}",
    )
    _check_long_text(cfg, check)
    sampler = cfg.data.sampler
    check(sampler in SAMPLERS, "data.sampler", sampler, f"use one of {sorted(SAMPLERS)}")
    name = cfg.scheduler.name
    check(name in SCHEDULERS, "scheduler.name", name, f"use one of {sorted(SCHEDULERS)}")
    for key, interval in RANGES.items():
        value = value_of(key)
        if value is None:
            continue
        for number in value if isinstance(value, list) else [value]:
            check(within(number, interval), key, value, f"it must {_must(interval)}")
    betas = cfg.optimizer.betas
    check(len(betas) == 2, "optimizer.betas", betas, "give two numbers, e.g. [0.9, 0.999]")
    snr = cfg.augment.noise_snr_db
    check(
        snr is None or (len(snr) == 2 and snr[0] <= snr[1]),
        "augment.noise_snr_db",
        snr,
        "give [min, max] in dB, min first",
    )
    for encoding in cfg.data.encodings:
        try:
            codecs.lookup(encoding)
        except LookupError as err:
            raise SftError(
                f"data.encodings: '{encoding}' is not a text encoding Python knows; use names "
                f"such as utf-8, utf-16, latin-1, cp1252"
            ) from err
    for key in REGEX_KEYS:
        for pattern in value_of(key):
            try:
                re.compile(pattern)
            except re.error as err:
                raise SftError(
                    f"{key} pattern '{pattern}' is not a valid regex ({err}); escape characters "
                    f"meant literally with a backslash, e.g. '\\(' for '('"
                ) from err
    check(
        not cfg.push_to_hub or bool(cfg.hub.repo_id),
        "push_to_hub",
        cfg.push_to_hub,
        "it needs hub.repo_id=<user/name> to know where to push",
    )
    if cfg.push_to_hub and cfg.hub.repo_id:
        check_repo_id(cfg.hub.repo_id, "hub.repo_id")
    weights = cfg.loss.class_weights
    check(
        weights in ("none", "auto")
        or (
            isinstance(weights, list)
            and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
            and min(weights, default=0) >= 0
            and sum(weights) > 0
        ),
        "loss.class_weights",
        weights,
        "use none, auto, or a list with one weight (a number, 0 or more) per label",
    )


def _check_problem_keys(cfg: Config, check) -> None:
    """Keys that only one kind of problem reads must not be set for another."""
    problem, data, loss = cfg.problem, cfg.data, cfg.loss
    single = problem == "single_label"
    only_single = "it applies to problem=single_label; unset it, or set problem=single_label"
    columns = data.label_columns
    rules = [
        (loss.class_weights == "none" or single, "loss.class_weights", only_single),
        (loss.label_smoothing == 0 or single, "loss.label_smoothing", only_single),
        (data.sampler != "balanced" or single, "data.sampler", only_single),
        (loss.pos_weight in ("none", "auto"), "loss.pos_weight", "use none or auto"),
        (
            loss.pos_weight == "none" or problem == "multi_label",
            "loss.pos_weight",
            "it applies to problem=multi_label",
        ),
        (loss.regression in ("mse", "huber"), "loss.regression", "use mse or huber"),
        (
            data.label_separator is None or problem == "multi_label",
            "data.label_separator",
            "it applies to problem=multi_label",
        ),
        (data.label_separator != "", "data.label_separator", "give a character, e.g. ','"),
        (
            data.standardize_targets or problem == "regression",
            "data.standardize_targets",
            "it applies to problem=regression",
        ),
        (
            columns is None or not single,
            "data.label_columns",
            "it applies to multi_label and regression (single_label reads data.label_column)",
        ),
        (
            columns is None or 0 < len(columns) == len(set(columns)),
            "data.label_columns",
            "name at least one column, each once",
        ),
    ]
    for ok, key, want in rules:
        check(ok, key, functools.reduce(getattr, key.split("."), cfg), want)


def check_repo_id(repo_id: str, key: str) -> None:
    """An SftError naming `key` unless `repo_id` is a repository id the hub accepts."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise SftError(
            f"{key} '{repo_id}' is not a hub repository id ({first_line(err)}); use <user or "
            f"organisation>/<name> of letters, digits, '-', '_' and '.'"
        ) from None
