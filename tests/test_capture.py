"""Q/K/V capture by hooks under SDPA equals eager attention probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel

from kdgrid.errors import ModelError
from kdgrid.train.capture import additive_mask, attention_probs, attention_scores, capture_qkv, encoder_layers


def tiny_config(attn: str) -> BertConfig:
    return BertConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        attn_implementation=attn,
    )


@pytest.fixture(scope="module")
def models() -> tuple[BertModel, BertModel]:
    torch.manual_seed(0)
    sdpa = BertModel(tiny_config("sdpa")).eval()
    eager = BertModel(tiny_config("eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa"
    assert eager.config._attn_implementation == "eager"
    return sdpa, eager


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return ids, mask


def test_sdpa_capture_equals_eager_attentions(models: tuple[BertModel, BertModel], batch) -> None:
    sdpa, eager = models
    ids, mask = batch
    with torch.no_grad():
        with capture_qkv(sdpa, [1, 2, 3, 4]) as qkv:
            sdpa(ids, attention_mask=mask)
        ref = eager(ids, attention_mask=mask, output_attentions=True).attentions
    assert sorted(qkv) == [1, 2, 3, 4]
    for layer in range(1, 5):
        q, k, v = qkv[layer]
        assert q.shape == k.shape == v.shape == (3, 4, 7, 8)
        probs = attention_probs(q, k, mask)
        assert torch.allclose(probs, ref[layer - 1], atol=1e-5), layer
        # same thing written as softmax(QKᵀ/√d + additive mask)
        again = torch.softmax(attention_scores(q, k) + additive_mask(mask), -1)
        assert torch.allclose(again, ref[layer - 1], atol=1e-5)


def test_captured_qkv_are_the_projections_of_the_layer_input(models, batch) -> None:
    sdpa, _ = models
    ids, mask = batch
    with torch.no_grad(), capture_qkv(sdpa, [3]) as qkv:
        out = sdpa(ids, attention_mask=mask, output_hidden_states=True)
    x = out.hidden_states[2]  # input of layer 3
    self_attn = sdpa.encoder.layer[2].attention.self
    for got, lin in zip(qkv[3], (self_attn.query, self_attn.key, self_attn.value), strict=True):
        y = lin(x)  # [B, T, 32]
        for h in range(4):
            assert torch.allclose(got[:, h], y[:, :, h * 8 : (h + 1) * 8], atol=1e-6)
    assert list(qkv) == [3]


def test_hooks_removed_after_exit_and_on_error(models, batch) -> None:
    sdpa, _ = models
    ids, mask = batch

    # Only the q/k/v Linears: transformers registers hooks of its own on other modules.
    linears = [getattr(layer.attention.self, n) for layer in sdpa.encoder.layer for n in ("query", "key", "value")]

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) for m in linears)

    assert n_hooks() == 0
    with capture_qkv(sdpa, [1, 4]):
        assert n_hooks() == 6
    assert n_hooks() == 0
    with pytest.raises(RuntimeError), capture_qkv(sdpa, [2]):
        raise RuntimeError("boom")
    assert n_hooks() == 0


def test_capture_keeps_gradients_and_works_with_task_heads() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config("sdpa")).train()
    assert len(encoder_layers(model)) == 4
    ids = torch.randint(0, 100, (2, 5))
    with capture_qkv(model, [2]) as qkv:
        model(ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    qkv[2][0].sum().backward()
    assert model.bert.encoder.layer[1].attention.self.query.weight.grad is not None


def test_capture_errors(models) -> None:
    sdpa, _ = models
    with pytest.raises(ModelError, match=r"1\.\.4"), capture_qkv(sdpa, [0, 5]):
        pass
    with pytest.raises(ModelError), capture_qkv(nn.Linear(2, 2), [1]):
        pass
    with pytest.raises(ModelError):
        additive_mask(torch.ones(2, 3, 4))
