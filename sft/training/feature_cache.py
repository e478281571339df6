"""Frozen-feature caching: when the bottom of a network is frozen and the training inputs are the
same every epoch, the frozen blocks compute the same features every epoch. Compute them once per
example and let training run only what trains.

How, on any model `sft.training.finetune` finds blocks in:
- the cache holds, per example, the output of the last frozen block (the input of the first
  trainable one), computed in inference mode with the example's own padding;
- while a batch carries example indices, the frozen blocks' `forward` is stubbed: the lower ones
  pass their input through untouched (nothing reads it), the last one returns the cached features,
  re-padded with zeros to the batch. What sits below the blocks (embeddings, stems) still runs,
  as do the masks the model derives from the batch;
- a batch without indices (the test split, a prediction) runs the real model.

Only where that is exact: no augmentation or random crops, no LayerDrop, and nothing random between
the frozen blocks in training mode (checked on real batches before the cache is built).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft.data.loaders import INDEX, keyed
from sft.data.splits import Splits
from sft.data.windows import DOCUMENT
from sft.training.finetune import Layout, layout_or_none, train_mode

log = logging.getLogger(__name__)


class NotCacheable(Exception):
    """Why the frozen part's output cannot stand in for it (the run trains uncached)."""


def frozen_blocks(model: torch.nn.Module, layout: Layout) -> int:
    """How many blocks from the bottom are frozen along with everything below them."""
    params = dict(model.named_parameters())
    if any(params[n].requires_grad for n in layout.below):
        return 0
    depth = 0
    for block in layout.blocks:
        if any(params[n].requires_grad for n in block):
            break
        depth += 1
    return depth


def plan(model: torch.nn.Module, strategy: str, train_randomness: str | None) -> tuple[Layout, int]:
    """The layout and number of frozen blocks to cache over, or NotCacheable saying why not."""
    if strategy in ("full", "gradual", "lora"):
        raise NotCacheable(f"finetune={strategy} trains (or will train) the lowest blocks")
    if train_randomness:
        raise NotCacheable(train_randomness)
    layout = layout_or_none(model)
    if layout is None:
        raise NotCacheable(f"{type(model).__name__} has no blocks to cache below")
    depth = frozen_blocks(model, layout)
    if depth == 0:
        raise NotCacheable("the lowest block (or what is below it) trains")
    config = getattr(model, "config", None)
    layerdrop = max(getattr(config, "layerdrop", 0.0), getattr(config, "encoder_layerdrop", 0.0))
    if layerdrop > 0:
        raise NotCacheable(
            f"LayerDrop ({layerdrop}) skips random frozen blocks in training; set the model "
            f"config's layerdrop to 0 to cache"
        )
    return layout, depth


class FeatureCache:
    """Per-example outputs of the last frozen block, and the stubs that serve them."""

    def __init__(self, model: torch.nn.Module, layout: Layout, depth: int):
        self.model = model
        blocks = model.get_submodule(layout.blocks_path)
        self.frozen = [blocks[i] for i in range(depth)]
        self.where = f"{layout.blocks_path}.{depth - 1}"
        self.features: dict[int, torch.Tensor] = {}
        self.current: list[int] | None = None  # the cache keys of the batch being run
        self.served = False
        self.seconds = 0.0  # time spent building
        self._handles: list[Any] = []
        self._autocast: Callable[[], AbstractContextManager] = nullcontext  # see `fill`

    @classmethod
    def create(
        cls, model: torch.nn.Module, strategy: str, train_randomness: str | None
    ) -> FeatureCache | None:
        """A cache for `model` as frozen now, or None (logged with the reason)."""
        try:
            layout, depth = plan(model, strategy, train_randomness)
        except NotCacheable as reason:
            log.info("frozen-feature cache off: %s", reason)
            return None
        return cls(model, layout, depth)

    # -- data side: each example's cache key travels with it ----------------------------------
    def index(self, splits: Splits) -> Splits:
        """The splits with cache keys on train and validation (the test split runs uncached)."""
        offsets = {"train": 0, "validation": len(splits.train)}

        def add(ds: datasets.Dataset, name: str) -> datasets.Dataset:
            if name not in offsets:
                return ds
            return ds.add_column(INDEX, list(range(offsets[name], offsets[name] + len(ds))))

        return splits.map(add)

    # -- building -----------------------------------------------------------------------------
    @torch.no_grad()
    def fill(
        self,
        splits: Splits,
        collate: Callable[[list[dict]], dict],
        batch_size: int,
        device: torch.device,
        max_gib: float,
        progress: bool = True,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
    ) -> bool:
        """Compute the features of every indexed example (train and validation). Examples are
        collated alone (no padding but their own) and run in batches of equal shapes, the model
        within `autocast()` (the precision training runs it in; not the collator: a processor's
        own arithmetic, Whisper's log-mel, stays fp32). Returns False, logging why, when cached
        features would differ from the model's own."""
        self._autocast = autocast
        ds = datasets.concatenate_datasets([splits.train, splits.validation])
        # Collators and DataLoaders draw from torch's global RNG; training must see it untouched.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            was_training = self.model.training
            try:
                collate = keyed(collate)
                self._build(ds, collate, batch_size, device, max_gib * 2**30, progress)
                return True
            except NotCacheable as reason:
                self.features.clear()
                log.info("frozen-feature cache off: %s", reason)
                return False
            finally:
                self.model.train(was_training)

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Within: frozen blocks are stubbed; batches with cache keys are served from the cache,
        others (and everything when the cache is empty) run the real model."""
        self._attach()
        try:
            yield
        finally:
            self._detach()

    def _build(self, ds, collate, batch_size, device, max_bytes, progress) -> None:
        loader = DataLoader(ds, batch_size=1, collate_fn=collate, generator=torch.Generator())
        buckets: dict[tuple, list[dict]] = {}  # examples waiting, by input shapes
        start, size, masked = time.perf_counter(), 0, None
        bar = tqdm(total=len(ds), desc="cache frozen features", disable=not progress)

        def run(bucket: list[dict]) -> None:
            nonlocal size
            batch = _stack(bucket)
            if not self.features:
                self._check_training_mode(batch, device)
            size += self._store(batch, device)
            bar.update(len(bucket))
            projected = size / len(self.features) * len(ds)
            if projected > max_bytes:
                raise NotCacheable(
                    f"the features would take {projected / 2**30:.1f} GiB; raise "
                    f"finetune.cache_max_gib to cache them"
                )

        for example in loader:
            masked = "attention_mask" in example if masked is None else masked
            key = tuple((k, tuple(v.shape)) for k, v in example.items() if torch.is_tensor(v))
            buckets.setdefault(key, []).append(example)
            if len(buckets) > 1 and not masked:
                raise NotCacheable(
                    "inputs differ in length and the model gets no attention mask, so padding "
                    "changes its features batch by batch"
                )
            if len(buckets[key]) == batch_size:
                run(buckets.pop(key))
            elif sum(map(len, buckets.values())) > 4 * batch_size:
                # Lengths all differ (speech): bound the inputs held, run the largest group.
                run(buckets.pop(max(buckets, key=lambda k: len(buckets[k]))))
        for bucket in buckets.values():
            run(bucket)
        bar.close()
        self.seconds = time.perf_counter() - start
        log.info(
            "frozen-feature cache: output of %s for %d examples, %.1f MiB, built in %.1f s",
            self.where,
            len(self.features),
            size / 2**20,
            self.seconds,
        )

    def _store(self, batch: dict, device: torch.device) -> int:
        self.model.eval()
        output = self._boundary_output(batch, device).cpu()
        size = 0
        for i, index in enumerate(batch[INDEX].tolist()):
            self.features[index] = output[i].clone()
            size += output[i].numel() * output[i].element_size()
        return size

    def _boundary_output(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The last frozen block's output for `batch`; the rest of the model is skipped."""
        captured = []

        def stop(module, args, output):
            captured.append(output)
            raise _Reached

        handle = self.frozen[-1].register_forward_hook(stop)
        try:
            with self._autocast():
                self.model(**_model_inputs(batch, device))
        except _Reached:
            pass
        finally:
            handle.remove()
        if not captured:
            raise NotCacheable(f"the forward pass never reached {self.where}")
        if not torch.is_tensor(captured[0]):
            raise NotCacheable(f"{self.where} returns a {type(captured[0]).__name__}, not a tensor")
        return captured[0]

    def _check_training_mode(self, batch: dict, device: torch.device) -> None:
        """Training runs the frozen part in training mode (frozen modules themselves in eval,
        see `train_mode`); modules between them may still be random (dropout on the embeddings'
        output, say). Cache only if training mode gives the inference-mode features."""
        self.model.eval()
        reference = self._boundary_output(batch, device)
        train_mode(self.model)
        for _ in range(2):
            again = self._boundary_output(batch, device)
            if not torch.allclose(again, reference, rtol=1e-4, atol=1e-5):
                raise NotCacheable(
                    "the frozen part is random in training mode (dropout between frozen blocks)"
                )

    # -- serving ------------------------------------------------------------------------------
    def _attach(self) -> None:
        self._handles.append(
            self.model.register_forward_pre_hook(self._take_indices, with_kwargs=True)
        )
        self._handles.append(self.model.register_forward_hook(self._check_served))
        for block in self.frozen[:-1]:
            block.forward = _passing(block.forward, self)
        self.frozen[-1].forward = _serving(self.frozen[-1].forward, self)

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for block in self.frozen:
            block.__dict__.pop("forward", None)  # back to the class's forward

    def _take_indices(self, module, args, kwargs):
        keys = kwargs.pop(INDEX, None)
        self.current = keys.tolist() if keys is not None and self.features else None
        self.served = False
        return args, kwargs

    def _check_served(self, module, args, output):
        if self.current is not None and not self.served:
            raise RuntimeError(f"the cached features of {self.where} were not used in a forward")
        self.current = None

    def batch_features(self, like: torch.Tensor) -> torch.Tensor:
        """The current batch's cached features, zero-padded to the longest, on `like`'s device."""
        items = [self.features[i] for i in self.current]
        shape = [len(items)] + [max(s) for s in zip(*(t.shape for t in items), strict=True)]
        out = torch.zeros(shape, dtype=items[0].dtype)
        for row, item in zip(out, items, strict=True):
            row[tuple(slice(0, n) for n in item.shape)] = item
        self.served = True
        return out.to(device=like.device, dtype=like.dtype)


class _Reached(Exception):
    """Raised by a hook to stop a forward pass once the wanted output exists."""


def _passing(forward, cache: FeatureCache):
    def stub(*args, **kwargs):
        if cache.current is None:
            return forward(*args, **kwargs)
        return args[0] if args else kwargs["hidden_states"]

    return stub


def _serving(forward, cache: FeatureCache):
    def stub(*args, **kwargs):
        if cache.current is None:
            return forward(*args, **kwargs)
        return cache.batch_features(args[0] if args else kwargs["hidden_states"])

    return stub


def _stack(examples: list[dict]) -> dict:
    return {k: torch.cat([e[k] for e in examples]) for k in examples[0]}


def _model_inputs(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items() if k not in (INDEX, DOCUMENT, "labels")}
