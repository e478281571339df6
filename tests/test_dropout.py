"""sft.training.dropout: masks drawn four to a 64-bit word keep each element with probability
1 - p and follow torch's seed; a model given fast dropout (modules and attention) computes what
the stock model computes whenever nothing is dropped, trains, and saves a config that loads
anywhere."""

from __future__ import annotations

import json

import pytest
import torch

from sft.training.dropout import ATTENTION, FastDropout, _dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_masks_keep_each_element_with_probability_one_minus_p(p):
    mask = keep_mask(torch.Size([1000, 1000]), p, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
    assert mask.float().mean().item() == pytest.approx(1 - p, abs=0.002)
    assert mask.float().mean(0).std().item() < 0.05  # no column pattern from the word split


def test_dropout_zeroes_or_scales_and_keeps_the_expected_value():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    out = _dropout(x, 0.2)
    assert out.unique().tolist() == pytest.approx([0.0, 1 / 0.8], rel=1e-4)  # p to 1/65,536
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)
    assert torch.equal(_dropout(x, 0.2, training=False), x)
    assert torch.equal(_dropout(x, 1.0), torch.zeros_like(x))  # as torch's: everything dropped


def test_masks_follow_torchs_seed():
    torch.manual_seed(3)
    first = keep_mask(torch.Size([64, 7]), 0.1, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask(torch.Size([64, 7]), 0.1, torch.device("cpu")))


def test_gradients_pass_where_kept_scaled_as_the_forward():
    x = torch.randn(4, 1000, requires_grad=True)
    out = _dropout(x, 0.3)
    out.sum().backward()
    kept = out != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / (1 - 0.3)), rtol=1e-4)
    assert torch.all(x.grad[~kept] == 0)


def fast_and_stock(models):
    """The tiny BERT twice, same weights: as loaded (fast dropout) and with torch's."""
    fast = models("bert")
    stock = models("bert")
    for name, module in list(stock.named_modules()):
        if isinstance(module, FastDropout):
            parent, _, child = name.rpartition(".")
            torchs = torch.nn.Dropout(module.p).train(module.training)
            setattr(stock.get_submodule(parent), child, torchs)
    stock.set_attn_implementation("sdpa")
    stock.load_state_dict(fast.state_dict())
    return fast, stock


def test_a_classifier_sft_loads_has_fast_dropout_and_the_same_outputs(models):
    fast, stock = fast_and_stock(models)
    dropouts = [m for m in fast.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(type(m) is FastDropout for m in dropouts)
    assert all(not m.training for m in dropouts)  # as the model it went into (evaluation)
    assert fast.config._attn_implementation == ATTENTION
    ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        assert torch.allclose(
            fast(input_ids=ids, attention_mask=mask).logits,
            stock(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )


def test_training_arithmetic_equals_sdpa_when_nothing_is_dropped(models):
    """p so small that no element is dropped still takes the training path (scores, padding
    mask, softmax, weighted sum written out): it must equal SDPA's."""
    fast, stock = fast_and_stock(models)
    for model, p in ((fast, 1e-9), (stock, 0.0)):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = p
        model.config.attention_probs_dropout_prob = p
    ids = torch.tensor([[2, 5, 6, 7, 8, 3], [2, 9, 10, 3, 0, 0]])
    mask = (ids != 0).long()
    logits = fast(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(
        logits, stock(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-6
    )
    logits.sum().backward()
    assert all(p.grad is not None for p in fast.parameters() if p.requires_grad)


def test_the_saved_config_names_no_attention_of_ours(models, tmp_path):
    from transformers import AutoModelForSequenceClassification

    models("bert").save_pretrained(tmp_path)
    assert ATTENTION not in (tmp_path / "config.json").read_text()
    assert json.loads((tmp_path / "config.json").read_text()).get("_attn_implementation") is None
    assert (
        AutoModelForSequenceClassification.from_pretrained(tmp_path).config._attn_implementation
        == "sdpa"
    )


@pytest.mark.parametrize("kind", ["vit", "wav2vec2", "whisper", "resnet", "efficientnet"])
def test_other_architectures_take_it_and_train(models, kind):
    model = use_fast_dropout(models(kind)).train()
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
