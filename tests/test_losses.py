"""Every loss against a written-out reference (explicit loops / numpy, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdgrid.errors import KdgridError, PlanError
from kdgrid.train.capture import MASK_VALUE, additive_mask
from kdgrid.train.losses import (
    ContrastiveMemory,
    attention_kl,
    attention_mse,
    hard_loss,
    hidden_mse,
    kd_soft_loss,
    mean_head_log_probs,
    regression_soft_loss,
    relation_heads_for,
    resplit_heads,
    value_relation_kl,
)

# --------------------------------------------------------------------------- references


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def ref_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    total = 0.0
    for b in range(s.shape[0]):
        ps, pt = np_softmax(s[b] / temp), np_softmax(t[b] / temp)
        total += sum(pt[c] * (math.log(pt[c]) - math.log(ps[c])) for c in range(s.shape[1]))
    return temp**2 * total / s.shape[0]


def ref_scores(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """[B,H,T,d] -> [B,H,T,T] by explicit loops."""
    b_, h_, t_, d = q.shape
    out = np.zeros((b_, h_, t_, t_))
    for b in range(b_):
        for h in range(h_):
            for i in range(t_):
                for j in range(t_):
                    out[b, h, i, j] = sum(q[b, h, i, x] * k[b, h, j, x] for x in range(d)) / math.sqrt(d)
    return out


def ref_att_mse(
    s_sc: np.ndarray, t_sc: np.ndarray, mask: np.ndarray, mean_heads: bool = False, padding: str = "tinybert"
) -> float:
    """TinyBERT: add -10000 on padded keys, zero entries <= -100 in each, mean of squares over B·H·T·T;
    padding='masked': the mean over real (query, key) pairs only, a loop over them."""

    def prep(sc: np.ndarray) -> np.ndarray:
        sc = sc.copy()
        b_, h_, t_, _ = sc.shape
        for b in range(b_):
            for j in range(t_):
                if mask[b, j] == 0:
                    sc[b, :, :, j] += -10000.0
        if mean_heads:
            sc = sc.mean(axis=1, keepdims=True)
        sc[sc <= -100] = 0.0
        return sc

    s, t = prep(s_sc), prep(t_sc)
    if padding == "tinybert":
        return float(((s - t) ** 2).sum() / s.size)
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        real = [i for i in range(s.shape[2]) if mask[b, i]]
        for h in range(s.shape[1]):
            for i in real:
                for j in real:
                    total += float((s[b, h, i, j] - t[b, h, i, j]) ** 2)
                    count += 1
    return total / count


def ref_probs_valid_keys(sc: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """softmax over valid keys only (padded keys get probability exactly 0), [B,H,T,T]."""
    out = np.zeros_like(sc)
    b_, h_, t_, _ = sc.shape
    for b in range(b_):
        keys = [j for j in range(t_) if mask[b, j] == 1]
        for h in range(h_):
            for i in range(t_):
                p = np_softmax(np.array([sc[b, h, i, j] for j in keys]))
                for jj, j in enumerate(keys):
                    out[b, h, i, j] = p[jj]
    return out


def ref_kl_rows(pt: np.ndarray, ps: np.ndarray, mask: np.ndarray) -> float:
    """MiniLM: sum of KL over heads and valid query rows / (H · number of valid query tokens)."""
    b_, h_, t_, _ = pt.shape
    total = 0.0
    for b in range(b_):
        for h in range(h_):
            for i in range(t_):
                if mask[b, i] == 0:
                    continue
                for j in range(t_):
                    if mask[b, j] == 1:
                        total += pt[b, h, i, j] * (math.log(pt[b, h, i, j]) - math.log(ps[b, h, i, j]))
    return total / (h_ * mask.sum())


def np_(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


@pytest.fixture
def mask() -> torch.Tensor:
    # batch of 3: full, 2 pads, 3 pads
    return torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])


def qkv(heads: int, d: int, seed: int, batch: int = 3, seq: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, heads, seq, d, generator=g, dtype=torch.float64).float()


# --------------------------------------------------------------------------- prediction layer


def test_kd_soft_loss_matches_reference_with_t_squared() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.5]])
    for temp in (1.0, 2.0, 4.0):
        ref = ref_kd(np_(s), np_(t), temp)
        assert kd_soft_loss(s, t, temp).item() == pytest.approx(ref, rel=1e-5)
        assert kd_soft_loss(s, t, temp, t_squared=False).item() == pytest.approx(ref / temp**2, rel=1e-5)


def test_kd_soft_loss_zero_on_equal_and_never_negative() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s, t = torch.randn(4, 5, generator=g) * 3, torch.randn(4, 5, generator=g) * 3
        assert kd_soft_loss(s, t, 2.0).item() >= 0.0
        assert kd_soft_loss(s, s, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(KdgridError):
        kd_soft_loss(s, t, 0.0)


def test_hard_and_regression_losses() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    labels = torch.tensor([2, 0])
    ref = -(math.log(np_softmax(np_(logits)[0])[2]) + math.log(np_softmax(np_(logits)[1])[0])) / 2
    assert hard_loss(logits, labels, is_regression=False).item() == pytest.approx(ref, rel=1e-6)
    reg = torch.tensor([[1.0], [3.0]])
    y = torch.tensor([2.0, 2.5])
    assert hard_loss(reg, y, is_regression=True).item() == pytest.approx(((1 - 2) ** 2 + (3 - 2.5) ** 2) / 2)
    t = torch.tensor([[0.0], [4.0]])
    assert regression_soft_loss(reg, t).item() == pytest.approx((1.0 + 1.0) / 2)


# --------------------------------------------------------------------------- attention


def test_additive_mask_values(mask: torch.Tensor) -> None:
    add = additive_mask(mask)
    assert add.shape == (3, 1, 1, 5)
    assert add[1, 0, 0].tolist() == [0.0, 0.0, 0.0, MASK_VALUE, MASK_VALUE]


def test_attention_mse_matches_tinybert_reference(mask: torch.Tensor) -> None:
    s_q, s_k, t_q, t_k = qkv(2, 4, 1), qkv(2, 4, 2), qkv(2, 8, 3), qkv(2, 8, 4)
    # A genuinely very negative student score (not padding) is zeroed too, in the student only.
    k1 = s_k[0, 0, 1]
    s_q[0, 0, 0] = -k1 * (400.0 / float(k1 @ k1))  # score(0, 1) = -400 / sqrt(4) = -200
    s_sc, t_sc = ref_scores(np_(s_q), np_(s_k)), ref_scores(np_(t_q), np_(t_k))
    assert (s_sc <= -100).any()
    from kdgrid.train.capture import attention_scores

    got = attention_mse(attention_scores(s_q, s_k), attention_scores(t_q, t_k), mask, padding="tinybert")
    assert got.item() == pytest.approx(ref_att_mse(s_sc, t_sc, np_(mask)), rel=1e-5)
    got = attention_mse(attention_scores(s_q, s_k), attention_scores(t_q, t_k), mask)  # default: masked
    assert got.item() == pytest.approx(ref_att_mse(s_sc, t_sc, np_(mask), padding="masked"), rel=1e-5)


def test_attention_mse_masked_does_not_depend_on_padding() -> None:
    """One example's masked Att-MSE is the same alone or padded to a longer batch; TinyBERT's is not."""
    from kdgrid.train.capture import attention_scores

    s_q, s_k, t_q, t_k = (qkv(2, 4, seed, batch=1) for seed in (11, 12, 13, 14))  # [1, 2, 5, 4] each
    short = torch.tensor([[1, 1, 1, 0, 0]])
    alone = [x[:, :, :3] for x in (s_q, s_k, t_q, t_k)]
    a = attention_mse(attention_scores(*alone[:2]), attention_scores(*alone[2:]), torch.ones(1, 3, dtype=torch.long))
    padded = attention_mse(attention_scores(s_q, s_k), attention_scores(t_q, t_k), short)
    assert padded.item() == pytest.approx(a.item(), rel=1e-6)
    orig = attention_mse(attention_scores(s_q, s_k), attention_scores(t_q, t_k), short, padding="tinybert")
    assert orig.item() != pytest.approx(a.item(), rel=1e-3)


def test_attention_mse_head_mean_and_mismatch(mask: torch.Tensor) -> None:
    from kdgrid.train.capture import attention_scores

    s_sc = attention_scores(qkv(2, 4, 5), qkv(2, 4, 6))
    t_sc = attention_scores(qkv(4, 4, 7), qkv(4, 4, 8))
    with pytest.raises(PlanError, match="head_match"):
        attention_mse(s_sc, t_sc, mask)
    got = attention_mse(s_sc, t_sc, mask, head_match="mean", padding="tinybert")
    assert got.item() == pytest.approx(ref_att_mse(np_(s_sc), np_(t_sc), np_(mask), mean_heads=True), rel=1e-5)
    got = attention_mse(s_sc, t_sc, mask, head_match="mean")
    assert got.item() == pytest.approx(
        ref_att_mse(np_(s_sc), np_(t_sc), np_(mask), mean_heads=True, padding="masked"), rel=1e-5
    )
    assert attention_mse(t_sc, t_sc, mask).item() == 0.0


def test_attention_kl_matches_minilm_reference(mask: torch.Tensor) -> None:
    s_q, s_k, t_q, t_k = qkv(3, 4, 11), qkv(3, 4, 12), qkv(3, 8, 13), qkv(3, 8, 14)
    ps = ref_probs_valid_keys(ref_scores(np_(s_q), np_(s_k)), np_(mask))
    pt = ref_probs_valid_keys(ref_scores(np_(t_q), np_(t_k)), np_(mask))
    got = attention_kl(s_q, s_k, t_q, t_k, mask)
    assert got.item() == pytest.approx(ref_kl_rows(pt, ps, np_(mask)), rel=1e-5)
    assert got.item() > 0.0
    assert attention_kl(t_q, t_k, t_q, t_k, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_kl_head_mean_averages_distributions(mask: torch.Tensor) -> None:
    s_q, s_k, t_q, t_k = qkv(2, 4, 21), qkv(2, 4, 22), qkv(4, 4, 23), qkv(4, 4, 24)
    with pytest.raises(PlanError):
        attention_kl(s_q, s_k, t_q, t_k, mask)
    ps = ref_probs_valid_keys(ref_scores(np_(s_q), np_(s_k)), np_(mask)).mean(axis=1, keepdims=True)
    pt = ref_probs_valid_keys(ref_scores(np_(t_q), np_(t_k)), np_(mask)).mean(axis=1, keepdims=True)
    got = attention_kl(s_q, s_k, t_q, t_k, mask, head_match="mean")
    assert got.item() == pytest.approx(ref_kl_rows(pt, ps, np_(mask)), rel=1e-5)


def test_attention_kl_is_never_negative_and_padding_is_ignored() -> None:
    g = torch.Generator().manual_seed(3)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    for _ in range(10):
        a = [torch.randn(2, 2, 4, 3, generator=g) * 4 for _ in range(4)]
        assert attention_kl(*a, m).item() >= 0.0
    # changing anything at padded positions (query rows and keys) changes nothing
    s_q, s_k, t_q, t_k = (torch.randn(2, 2, 4, 3, generator=g) for _ in range(4))
    before = attention_kl(s_q, s_k, t_q, t_k, m)
    s_q2, t_k2 = s_q.clone(), t_k.clone()
    s_q2[0, :, 3] += 5.0
    t_k2[1, :, 2:] -= 7.0
    assert attention_kl(s_q2, s_k, t_q, t_k2, m).item() == pytest.approx(before.item(), rel=1e-6)


def test_value_relation_kl_matches_reference(mask: torch.Tensor) -> None:
    s_v, t_v = qkv(2, 4, 31), qkv(2, 6, 32)
    ps = ref_probs_valid_keys(ref_scores(np_(s_v), np_(s_v)), np_(mask))
    pt = ref_probs_valid_keys(ref_scores(np_(t_v), np_(t_v)), np_(mask))
    assert value_relation_kl(s_v, t_v, mask).item() == pytest.approx(ref_kl_rows(pt, ps, np_(mask)), rel=1e-5)
    assert value_relation_kl(t_v, t_v, mask).item() == pytest.approx(0.0, abs=1e-6)


def np_resplit(v: np.ndarray, r: int) -> np.ndarray:
    """Concatenate heads per token, cut the concatenation into r equal chunks."""
    b_, h_, t_, d = v.shape
    out = np.zeros((b_, r, t_, h_ * d // r))
    for b in range(b_):
        for t in range(t_):
            cat = np.concatenate([v[b, h, t] for h in range(h_)])
            for rr in range(r):
                out[b, rr, t] = cat[rr * (h_ * d // r) : (rr + 1) * (h_ * d // r)]
    return out


def test_value_relation_kl_relation_heads_resplit(mask: torch.Tensor) -> None:
    s_v, t_v = qkv(2, 4, 41), qkv(4, 4, 42)  # student 2 heads × 4 = 8 wide, teacher 4 heads × 4 = 16 wide
    with pytest.raises(PlanError):
        value_relation_kl(s_v, t_v, mask)
    r = relation_heads_for(2, 4, 8, 16)
    assert r == 2
    assert np.allclose(np_(resplit_heads(t_v, 2)), np_resplit(np_(t_v), 2))
    s_r, t_r = np_resplit(np_(s_v), r), np_resplit(np_(t_v), r)
    ps = ref_probs_valid_keys(ref_scores(s_r, s_r), np_(mask))
    pt = ref_probs_valid_keys(ref_scores(t_r, t_r), np_(mask))
    got = value_relation_kl(s_v, t_v, mask, relation_heads=r)
    assert got.item() == pytest.approx(ref_kl_rows(pt, ps, np_(mask)), rel=1e-5)
    # equal head counts: re-splitting into H heads is the identity
    s_eq = qkv(4, 2, 43)
    assert value_relation_kl(s_eq, t_v, mask, relation_heads=4).item() == pytest.approx(
        value_relation_kl(s_eq, t_v, mask).item(), rel=1e-6
    )
    # head-averaged relation distributions
    ps_m = ref_probs_valid_keys(ref_scores(np_(s_v), np_(s_v)), np_(mask)).mean(axis=1, keepdims=True)
    pt_m = ref_probs_valid_keys(ref_scores(np_(t_v), np_(t_v)), np_(mask)).mean(axis=1, keepdims=True)
    got_m = value_relation_kl(s_v, t_v, mask, head_match="mean")
    assert got_m.item() == pytest.approx(ref_kl_rows(pt_m, ps_m, np_(mask)), rel=1e-5)


def test_relation_heads_for_choices() -> None:
    assert relation_heads_for(4, 12, 384, 768) == 4
    assert relation_heads_for(12, 12, 384, 768) == 12
    assert relation_heads_for(8, 12, 512, 768) == 8
    # min does not divide the other width -> gcd
    assert relation_heads_for(4, 6, 12, 18) == 2


def test_mean_head_log_probs_is_log_of_mean() -> None:
    lp = torch.log_softmax(torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    ref = np.log(np.exp(np_(lp)).mean(axis=1, keepdims=True))
    assert np.allclose(np_(mean_head_log_probs(lp)), ref, atol=1e-6)


# --------------------------------------------------------------------------- hidden states


def test_hidden_mse_cls_and_seq_with_projection(mask: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(5)
    s_h, t_h = torch.randn(3, 5, 2, generator=g), torch.randn(3, 5, 3, generator=g)
    proj = nn.Linear(2, 3)
    w, bias = np_(proj.weight), np_(proj.bias)  # [3, 2], [3]
    s, t, m = np_(s_h), np_(t_h), np_(mask)

    cls_ref = sum(
        (sum(w[o, i] * s[b, 0, i] for i in range(2)) + bias[o] - t[b, 0, o]) ** 2 for b in range(3) for o in range(3)
    ) / (3 * 3)
    assert hidden_mse(s_h, t_h, proj, mask, cls_only=True).item() == pytest.approx(cls_ref, rel=1e-5)

    total, n = 0.0, 0
    for b in range(3):
        for tok in range(5):
            if m[b, tok] == 1:
                n += 1
                for o in range(3):
                    total += (sum(w[o, i] * s[b, tok, i] for i in range(2)) + bias[o] - t[b, tok, o]) ** 2
    seq = hidden_mse(s_h, t_h, proj, mask, cls_only=False)
    assert seq.item() == pytest.approx(total / (n * 3), rel=1e-5)
    seq.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0

    assert hidden_mse(t_h, t_h, None, mask, cls_only=False).item() == 0.0
    with pytest.raises(KdgridError):
        hidden_mse(s_h, t_h, None, mask, cls_only=True)


# --------------------------------------------------------------------------- contrastive


def test_contrastive_memory_matches_infonce_reference() -> None:
    torch.manual_seed(0)
    mem = ContrastiveMemory(4, 6, num_examples=10, embed_dim=3, temperature=0.07, momentum=0.5, negatives=3)
    g = torch.Generator().manual_seed(1)
    s_f, t_f = torch.randn(2, 4, generator=g), torch.randn(2, 6, generator=g)
    idx = torch.tensor([2, 7])
    neg = torch.tensor([[0, 5, 9], [1, 2, 3]])
    mem.sample_negatives = lambda indices: neg  # type: ignore[method-assign]
    ms0, mt0 = np_(mem.memory_s).copy(), np_(mem.memory_t).copy()

    def emb(lin: nn.Linear, x: np.ndarray) -> np.ndarray:
        z = np_(lin.weight) @ x + np_(lin.bias)
        return z / np.linalg.norm(z)

    zs = [emb(mem.embed_s, np_(s_f)[b]) for b in range(2)]
    zt = [emb(mem.embed_t, np_(t_f)[b]) for b in range(2)]

    def nce(anchor: list[np.ndarray], pos: list[np.ndarray], bank: np.ndarray) -> float:
        out = 0.0
        for b in range(2):
            logits = [anchor[b] @ pos[b] / 0.07] + [anchor[b] @ bank[int(k)] / 0.07 for k in neg[b]]
            out += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
        return out / 2

    ref = nce(zs, zt, mt0) + nce(zt, zs, ms0)
    mem.train()
    loss = mem(s_f, t_f, idx)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    loss.backward()
    assert mem.embed_s.weight.grad is not None and mem.embed_s.weight.grad.abs().sum() > 0

    # momentum update of both banks at the batch indices only, re-normalised
    for b, i in enumerate(idx.tolist()):
        upd = 0.5 * mt0[i] + 0.5 * zt[b]
        assert np.allclose(np_(mem.memory_t)[i], upd / np.linalg.norm(upd), atol=1e-5)
    assert np.allclose(np_(mem.memory_t)[0], mt0[0])
    # eval mode: no update
    mem.eval()
    before = mem.memory_s.clone()
    mem(s_f, t_f, idx)
    assert torch.equal(before, mem.memory_s)


def test_contrastive_negatives_exclude_own_index_and_checks() -> None:
    mem = ContrastiveMemory(4, 4, num_examples=5, embed_dim=3, negatives=100)
    assert mem.negatives == 4
    idx = torch.tensor([0, 2, 4, 4])
    for _ in range(20):
        neg = mem.sample_negatives(idx)
        assert neg.shape == (4, 4)
        assert not (neg == idx[:, None]).any()
        assert int(neg.min()) >= 0 and int(neg.max()) <= 4
    with pytest.raises(KdgridError):
        mem(torch.randn(2, 4), torch.randn(2, 4), None)
    with pytest.raises(KdgridError):
        mem(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 5]))
    with pytest.raises(PlanError):
        ContrastiveMemory(4, 4, num_examples=1)
