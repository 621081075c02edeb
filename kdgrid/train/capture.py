"""Capture Q, K and V of chosen encoder layers of a HF BERT/RoBERTa-style model.

HF returns post-softmax attentions only with eager attention, and nothing under
SDPA/flash. TinyBERT's Att-MSE needs the *pre-softmax* scores, MiniLM's Val-KL
needs V. Both are recomputed from the outputs of each layer's
``attention.self.{query,key,value}`` Linear modules, captured with forward hooks,
so the model may run with any ``attn_implementation``:

    scores = Q Kᵀ / √d_head + additive_mask        (BERT, Vaswani et al. 2017)

Hooks see the Linear outputs *before* any attention dropout, which is what the
scores are computed from, and keep the autograd graph (student tensors carry
gradients; run the teacher under ``torch.no_grad()``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import cast

import torch
from torch import Tensor, nn

from kdgrid.errors import ModelError

# Additive value for padded keys. BERT's original -10000 (and TinyBERT's) rather than
# finfo.min or -inf: exp(-10000) underflows to exactly 0 in fp32/bf16, so softmax and
# KL see padded keys as zero-probability, while (score - 10000) stays far below
# TinyBERT's "score <= -100 -> 0" threshold, and no inf/NaN can arise in
# differences of log-probabilities.
MASK_VALUE: float = -10000.0

QKV = tuple[Tensor, Tensor, Tensor]


def additive_mask(attention_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B, T] 1/0 mask -> [B, 1, 1, T] additive key mask: 0 for tokens, ``MASK_VALUE`` for padding.

    Broadcasts over heads and query rows of [B, H, T, T] scores (BERT's extended mask).
    """
    if attention_mask.dim() != 2:
        raise ModelError(f"attention_mask must be [batch, seq_len], got shape {tuple(attention_mask.shape)}")
    keep = attention_mask.to(dtype)
    return ((1.0 - keep) * MASK_VALUE)[:, None, None, :]


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a BERT/RoBERTa-style model (with or without a task head)."""
    for root in (getattr(model, "base_model", None), model):
        encoder = getattr(root, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    raise ModelError(
        f"{type(model).__name__} has no BERT-style encoder.layer list; "
        "Q/K/V capture supports BERT/RoBERTa-style models (encoder.layer[i].attention.self.query/key/value)"
    )


def _self_attention(layer: nn.Module, index: int) -> nn.Module:
    self_attn = getattr(getattr(layer, "attention", None), "self", None)
    names = ("query", "key", "value")
    if self_attn is None or not all(isinstance(getattr(self_attn, n, None), nn.Linear) for n in names):
        raise ModelError(
            f"encoder layer {index} has no attention.self.query/key/value Linear modules "
            "(only BERT/RoBERTa-style self-attention is supported)"
        )
    found: nn.Module = self_attn
    return found


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """[B, T, H·d] -> [B, H, T, d] (the same view/transpose HF's self-attention does)."""
    batch, seq, width = x.shape
    if width % num_heads:
        raise ModelError(f"width {width} is not divisible by {num_heads} heads")
    return x.view(batch, seq, num_heads, width // num_heads).transpose(1, 2)


@contextmanager
def capture_qkv(model: nn.Module, layers: Iterable[int]) -> Iterator[dict[int, QKV]]:
    """Hook the Q/K/V projections of the given 1-based encoder layers while the block runs.

    Yields a dict that the model's forward fills: ``{layer: (Q, K, V)}``, each
    [B, H, T, d_head]. A second forward inside the block overwrites the entries.
    Hooks are removed on exit, also on error.

    Example::

        with capture_qkv(model, {2, 4}) as qkv:
            out = model(input_ids, attention_mask=mask)
        q, k, v = qkv[4]
    """
    blocks = encoder_layers(model)
    wanted = sorted(set(layers))
    bad = [m for m in wanted if not 1 <= m <= len(blocks)]
    if bad:
        raise ModelError(f"cannot capture layers {bad}: the model has layers 1..{len(blocks)}")
    result: dict[int, QKV] = {}
    partial: dict[int, dict[str, Tensor]] = {}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def make_hook(layer: int, name: str, heads: int) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
            parts = partial.setdefault(layer, {})
            parts[name] = split_heads(output, heads)
            # Hook order is an implementation detail of the model; assemble once all three are in.
            if len(parts) == 3:
                result[layer] = (parts.pop("query"), parts.pop("key"), parts.pop("value"))

        return hook

    try:
        for m in wanted:
            self_attn = _self_attention(blocks[m - 1], m)
            heads = int(cast(int, self_attn.num_attention_heads))
            for name in ("query", "key", "value"):
                handles.append(getattr(self_attn, name).register_forward_hook(make_hook(m, name, heads)))
        yield result
    finally:
        for h in handles:
            h.remove()


def attention_scores(q: Tensor, k: Tensor) -> Tensor:
    """Raw scaled dot-product scores Q Kᵀ / √d_head, [B, H, T, T] (no mask), in float32.

    Vaswani et al. 2017. Autocast is switched off here: the losses built on these scores
    (MSE on raw scores, exp/log for KL) lose too much in bf16 matmuls.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        scores: Tensor = torch.matmul(q.float(), k.float().transpose(-1, -2)) / (q.size(-1) ** 0.5)
        return scores


def attention_probs(q: Tensor, k: Tensor, attention_mask: Tensor) -> Tensor:
    """softmax(Q Kᵀ/√d + additive_mask) over keys: what eager BERT returns as ``attentions``."""
    scores = attention_scores(q, k) + additive_mask(attention_mask, torch.float32)
    return torch.softmax(scores, dim=-1)
