"""Distillation losses as pure functions (plus the small CRD memory module).

Every function returns a scalar tensor and documents its formula, its reduction
and its source. Conventions shared by all attention/value losses:

* ``mask`` is the [B, T] attention mask (1 = token, 0 = padding).
* Q, K, V are [B, H, T, d_head] (see :mod:`kdgrid.train.capture`).
* Padded keys get the additive mask :data:`~kdgrid.train.capture.MASK_VALUE` (-10000)
  before softmax, so they carry zero probability.
* ``head_match``: ``'equal'`` compares head h of the student with head h of the
  teacher (and raises :class:`~kdgrid.errors.PlanError` when the counts differ);
  ``'mean'`` first averages over heads so different head counts can be compared.
  For probability maps (Att-KL, Val-KL) the *distributions* are averaged
  (a mixture of distributions is a distribution), for Att-MSE the *scores*.
* Val-KL can instead re-split the concatenated values into ``relation_heads``
  heads on both sides (MiniLMv2, Wang et al. 2021); :class:`DistillObjective`
  uses this re-split for Val-KL when ``head_match='mean'``.

All attention-type losses are computed in float32 (inputs are upcast): they involve
exp/log of scores, which is fragile in bf16.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgrid.errors import KdgridError, PlanError
from kdgrid.train.capture import additive_mask, attention_scores

HeadMatch = Literal["equal", "mean"]

# TinyBERT zeroes every score <= -100 (i.e. every masked key, since masks are -10000)
# in both student and teacher before the MSE, so padding contributes exactly 0.
ATT_MSE_ZERO_BELOW: float = -100.0


# --------------------------------------------------------------------------- prediction layer


def kd_soft_loss(s_logits: Tensor, t_logits: Tensor, temperature: float, t_squared: bool = True) -> Tensor:
    """Vanilla KD soft loss (Hinton et al. 2015).

    L_soft = T² · (1/B) Σ_b KL(softmax(z_T/T) ‖ softmax(z_S/T))     ("batchmean")

    The T² factor keeps the gradient scale independent of T (Hinton); TinyBERT's
    task_distill.py omits it and averages over classes instead: ``t_squared=False``
    drops the factor (the batchmean reduction is kept).
    """
    if temperature <= 0:
        raise KdgridError(f"temperature must be > 0, got {temperature}")
    s_logp = F.log_softmax(s_logits.float() / temperature, dim=-1)
    t_logp = F.log_softmax(t_logits.float() / temperature, dim=-1)
    kl = F.kl_div(s_logp, t_logp, reduction="batchmean", log_target=True)
    return kl * temperature**2 if t_squared else kl


def regression_soft_loss(s: Tensor, t: Tensor) -> Tensor:
    """Soft loss for regression (STS-B): MSE(z_S, z_T), mean over elements (DESIGN §5)."""
    return F.mse_loss(s.float(), t.float())


def hard_loss(logits: Tensor, labels: Tensor, is_regression: bool) -> Tensor:
    """Supervised loss: cross-entropy (mean over batch), or MSE(z_S[:, 0], y) for regression."""
    if is_regression:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels.long())


# --------------------------------------------------------------------------- head handling


def _check_heads(s: Tensor, t: Tensor, what: str) -> None:
    if s.size(1) != t.size(1):
        raise PlanError(
            f"{what} compares heads one to one but the student has {s.size(1)} heads and the "
            f"teacher {t.size(1)}: set objective.intermediate.head_match: mean"
        )


def mean_head_log_probs(log_p: Tensor) -> Tensor:
    """log of the head-averaged distribution: log((1/H) Σ_h p_h), [B, H, T, T] -> [B, 1, T, T].

    Computed as logsumexp over heads − log H (stable; no log 0).
    """
    return torch.logsumexp(log_p, dim=1, keepdim=True) - math.log(log_p.size(1))


def resplit_heads(x: Tensor, relation_heads: int) -> Tensor:
    """MiniLMv2 relation heads: concatenate the H heads and re-split into R heads.

    [B, H, T, d] -> [B, T, H·d] -> [B, R, T, H·d/R]. Wang et al. 2021 (MiniLMv2), §3.
    """
    batch, heads, seq, d = x.shape
    width = heads * d
    if relation_heads <= 0 or width % relation_heads:
        raise PlanError(f"cannot re-split width {width} into {relation_heads} relation heads")
    return x.transpose(1, 2).reshape(batch, seq, width).view(batch, seq, relation_heads, -1).transpose(1, 2)


def relation_heads_for(student_heads: int, teacher_heads: int, student_hidden: int, teacher_hidden: int) -> int:
    """Number of MiniLMv2 relation heads used when student and teacher head counts differ.

    R = min(H_S, H_T) when it divides both widths (e.g. 12→4 heads at 768/384: R = 4),
    otherwise gcd(H_S, H_T) (always divides both widths). With equal head counts R = H,
    and re-splitting is the identity, so Val-KL is then unchanged.
    """
    r = min(student_heads, teacher_heads)
    if student_hidden % r == 0 and teacher_hidden % r == 0:
        return r
    return math.gcd(student_heads, teacher_heads)


# --------------------------------------------------------------------------- attention / value


def attention_log_probs(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """log softmax(Q Kᵀ/√d_head + additive_mask) over keys, [B, H, T, T], float32."""
    scores = attention_scores(q.float(), k.float()) + additive_mask(mask, torch.float32)
    return F.log_softmax(scores, dim=-1)


def value_relation_log_probs(v: Tensor, mask: Tensor, relation_heads: int | None = None) -> Tensor:
    """MiniLM value relation: log softmax(V Vᵀ/√d_head + additive_mask), [B, H|R, T, T].

    With ``relation_heads`` the values are first re-split into R heads (MiniLMv2) and
    d_head is the relation-head size. Wang et al. 2020 (MiniLM) eq. 5; 2021 (MiniLMv2).
    """
    v = v.float()
    if relation_heads is not None:
        v = resplit_heads(v, relation_heads)
    return attention_log_probs(v, v, mask)


def masked_kl(t_log_p: Tensor, s_log_p: Tensor, mask: Tensor) -> Tensor:
    """Row-wise KL between attention-like distributions, MiniLM normalisation.

    L = (1 / (H · N)) Σ_b Σ_h Σ_{t valid} Σ_{j valid} p_T[b,h,t,j] (log p_T − log p_S)[b,h,t,j]

    with N = Σ_b Σ_t mask[b,t] the number of valid query tokens in the batch (a
    token-level mean over the batch; for B = 1 exactly MiniLM's 1/(A_h·|x|)). Padded
    query rows are excluded, padded keys contribute 0. Wang et al. 2020 (MiniLM) eq. 4.
    """
    if t_log_p.shape != s_log_p.shape:
        raise KdgridError(f"KL needs equal shapes, got teacher {tuple(t_log_p.shape)} student {tuple(s_log_p.shape)}")
    valid = mask.to(torch.bool)
    key_valid = valid[:, None, None, :]
    terms = t_log_p.exp() * (t_log_p - s_log_p)
    # where(), not multiply: padded keys can never turn into 0 * inf = NaN.
    row_kl = torch.where(key_valid, terms, torch.zeros_like(terms)).sum(-1)  # [B, H, T]
    row_kl = row_kl * valid[:, None, :].to(row_kl.dtype)
    n_valid = valid.sum().clamp_min(1).to(row_kl.dtype)
    return row_kl.sum() / (t_log_p.size(1) * n_valid)


def attention_kl(
    s_q: Tensor, s_k: Tensor, t_q: Tensor, t_k: Tensor, mask: Tensor, head_match: HeadMatch = "equal"
) -> Tensor:
    """Att-KL (MiniLM, Wang et al. 2020): (1/(H·valid query tokens)) Σ KL(A_T ‖ A_S).

    A = softmax(Q Kᵀ/√d_head + mask) per head; see :func:`masked_kl` for the reduction.
    ``head_match='mean'``: compare the head-averaged maps (1/H) Σ_h A_h (H = 1 in the norm).
    """
    s_lp = attention_log_probs(s_q, s_k, mask)
    t_lp = attention_log_probs(t_q, t_k, mask)
    if head_match == "mean":
        s_lp, t_lp = mean_head_log_probs(s_lp), mean_head_log_probs(t_lp)
    else:
        _check_heads(s_lp, t_lp, "attention 'kl'")
    return masked_kl(t_lp, s_lp, mask)


def value_relation_kl(
    s_v: Tensor,
    t_v: Tensor,
    mask: Tensor,
    head_match: HeadMatch = "equal",
    relation_heads: int | None = None,
) -> Tensor:
    """Val-KL (MiniLM value relation): (1/(H·valid query tokens)) Σ KL(VR_T ‖ VR_S).

    VR = softmax(V Vᵀ/√d_head + mask) per head (Wang et al. 2020, eq. 5), reduced as in
    :func:`masked_kl`. Head handling, in this order:
    ``relation_heads=R`` re-splits both sides into R relation heads (MiniLMv2, any head
    counts whose widths R divides); else ``head_match='mean'`` averages the relation
    distributions over heads; else head counts must be equal.
    """
    s_lp = value_relation_log_probs(s_v, mask, relation_heads)
    t_lp = value_relation_log_probs(t_v, mask, relation_heads)
    if relation_heads is None:
        if head_match == "mean":
            s_lp, t_lp = mean_head_log_probs(s_lp), mean_head_log_probs(t_lp)
        else:
            _check_heads(s_lp, t_lp, "value 'kl'")
    return masked_kl(t_lp, s_lp, mask)


def attention_mse(
    s_scores: Tensor,
    t_scores: Tensor,
    mask: Tensor,
    head_match: HeadMatch = "equal",
    padding: Literal["masked", "tinybert"] = "masked",
) -> Tensor:
    """Att-MSE (TinyBERT, Jiao et al. 2020, eq. 3 and task_distill.py).

    A = Q Kᵀ/√d_head + additive_mask (pre-softmax, -10000 on padded keys); every entry
    ≤ -100 is set to 0 in the student and (separately) in the teacher. ``s_scores``/``t_scores``
    are the raw scores QKᵀ/√d (no mask), [B, H, T, T]. ``head_match='mean'``: average the scores
    over heads first (H = 1 below). ``'equal'`` needs equal head counts.

    * ``padding='masked'`` (default): L = Σ over real (query, key) pairs of (A_S − A_T)² /
      (H · Σ_b n_b²), n_b = real tokens of row b: padded query rows are dropped, so the
      loss of an example does not depend on how much padding its batch has.
    * ``padding='tinybert'``: TinyBERT's original mean over all B·H·T·T entries, padded
      query rows included (their padded-key entries are 0, their real-key entries are not).
    """
    add = additive_mask(mask, torch.float32)
    s = s_scores.float() + add
    t = t_scores.float() + add
    if head_match == "mean":
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    else:
        _check_heads(s, t, "attention 'mse'")
    s = torch.where(s <= ATT_MSE_ZERO_BELOW, torch.zeros_like(s), s)
    t = torch.where(t <= ATT_MSE_ZERO_BELOW, torch.zeros_like(t), t)
    if padding == "tinybert":
        return F.mse_loss(s, t)
    m = mask.to(torch.float32)
    pairs = (m[:, :, None] * m[:, None, :])[:, None]  # [B, 1, T, T]: 1 where query and key are real tokens
    sq = (s - t).pow(2) * pairs
    return sq.sum() / (pairs.sum().clamp_min(1.0) * s.size(1))


# --------------------------------------------------------------------------- hidden states


def hidden_mse(
    s_h: Tensor,
    t_h: Tensor,
    proj: Callable[[Tensor], Tensor] | None,
    mask: Tensor,
    cls_only: bool,
) -> Tensor:
    """Hidden-state MSE with a learnable projection W_h: MSE(h_S W_h, h_T).

    * Hid-CLS (``cls_only``, BERT-PKD/Sun et al. 2019; paper 2): position 0 only,
      L = (1/(B·D_T)) Σ_b ‖W_h h_S[b,0] − h_T[b,0]‖².
    * Hid-Seq (TinyBERT, Jiao et al. 2020 eq. 4): all valid tokens,
      L = (1/(N·D_T)) Σ_b Σ_{t valid} ‖W_h h_S[b,t] − h_T[b,t]‖², N = number of valid
      tokens. (TinyBERT's code also averages over padding; padding is masked here.)

    ``proj`` maps d_S → d_T (``None``: identity, widths must match). Also used for the
    embedding loss (TinyBERT eq. 5) with the embedding outputs.
    """
    if cls_only:
        s, t = s_h[:, 0].float(), t_h[:, 0].float()
        if proj is not None:
            s = proj(s)
        _check_width(s, t)
        return F.mse_loss(s, t)
    s = proj(s_h.float()) if proj is not None else s_h.float()
    t = t_h.float()
    _check_width(s, t)
    valid = mask.to(torch.float32)[:, :, None]  # [B, T, 1]
    sq = (s - t).pow(2) * valid
    return sq.sum() / (valid.sum().clamp_min(1.0) * t.size(-1))


def _check_width(s: Tensor, t: Tensor) -> None:
    if s.shape != t.shape:
        raise KdgridError(
            f"hidden states differ in shape (student {tuple(s.shape)}, teacher {tuple(t.shape)}): a projection is needed"
        )


# --------------------------------------------------------------------------- contrastive (CRD)


class ContrastiveMemory(nn.Module):
    """Hid-CLS-Contrast: CRD (Tian et al. 2020) in its InfoNCE form, as used by paper 2.

    What it computes, for a batch of student features f_S [B, d_S], teacher features
    f_T [B, d_T] and dataset indices i [B]:

        z_S = normalize(W_S f_S + b_S),  z_T = normalize(W_T f_T + b_T)      (dim ``embed_dim``)
        negatives: K indices per example drawn uniformly from {0..N−1} \\ {i_b}
        L_S = CE over [z_S·z_T, z_S·M_T[n_1], …, z_S·M_T[n_K]] / τ, target 0
        L_T = CE over [z_T·z_S, z_T·M_S[n_1], …, z_T·M_S[n_K]] / τ, target 0
        L   = L_S + L_T                                  (CRD sums both directions)

    M_S, M_T are memory banks [N, embed_dim] of past (detached) student/teacher
    embeddings, initialised with random unit vectors. After the loss, in training mode
    only, M[i] ← normalize(m·M[i] + (1−m)·z) with momentum m (0.5 in CRD).
    Differences from CRD's code, on purpose: the positive is the *current* embedding of
    the other model (not its memory entry), and the loss is the K+1-way softmax
    (InfoNCE) instead of CRD's binary NCE with a constant Z: smaller, no Z estimate,
    same optimum. K = min(negatives, N−1).
    """

    memory_s: Tensor  # buffers (register_buffer): declared for the type checker
    memory_t: Tensor

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_examples: int,
        *,
        embed_dim: int = 128,
        temperature: float = 0.07,
        momentum: float = 0.5,
        negatives: int = 4096,
    ) -> None:
        super().__init__()
        if num_examples < 2:
            raise PlanError(f"hidden 'cls_contrast' needs at least 2 training examples, got {num_examples}")
        if temperature <= 0 or not 0.0 <= momentum <= 1.0 or negatives < 1:
            raise PlanError(
                f"contrast needs temperature > 0, 0 <= momentum <= 1, negatives >= 1 "
                f"(got {temperature}, {momentum}, {negatives})"
            )
        self.embed_s = nn.Linear(student_dim, embed_dim)
        self.embed_t = nn.Linear(teacher_dim, embed_dim)
        self.temperature = temperature
        self.momentum = momentum
        self.num_examples = num_examples
        self.negatives = min(negatives, num_examples - 1)
        self.register_buffer("memory_s", F.normalize(torch.randn(num_examples, embed_dim), dim=1))
        self.register_buffer("memory_t", F.normalize(torch.randn(num_examples, embed_dim), dim=1))

    def sample_negatives(self, indices: Tensor) -> Tensor:
        """[B] -> [B, K] uniform indices ≠ the example's own index (draw from N−1, shift up past i)."""
        draw = torch.randint(0, self.num_examples - 1, (indices.size(0), self.negatives), device=indices.device)
        return draw + (draw >= indices[:, None]).long()

    def forward(self, s_feat: Tensor, t_feat: Tensor, indices: Tensor | None) -> Tensor:
        if indices is None:
            raise KdgridError("hidden 'cls_contrast' needs the dataset indices of the batch")
        # The caller's indices may live on the CPU (from the data loader); the banks live with the module.
        indices = indices.long().view(-1).to(self.memory_s.device)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_examples):
            raise KdgridError(f"dataset indices must lie in 0..{self.num_examples - 1}")
        z_s = F.normalize(self.embed_s(s_feat.float()), dim=1)
        z_t = F.normalize(self.embed_t(t_feat.float()), dim=1)
        neg = self.sample_negatives(indices)
        loss = self.info_nce(z_s, z_t, self.memory_t[neg]) + self.info_nce(z_t, z_s, self.memory_s[neg])
        if self.training:
            self._update(self.memory_s, z_s.detach(), indices)
            self._update(self.memory_t, z_t.detach(), indices)
        return loss

    def info_nce(self, anchor: Tensor, positive: Tensor, negatives: Tensor) -> Tensor:
        """−(1/B) Σ_b log( e^{a·p/τ} / (e^{a·p/τ} + Σ_k e^{a·n_k/τ}) ); anchor/positive [B,D], negatives [B,K,D]."""
        pos = (anchor * positive).sum(-1, keepdim=True)  # [B, 1]
        negs = torch.einsum("bd,bkd->bk", anchor, negatives)  # [B, K]
        logits = torch.cat([pos, negs], dim=1) / self.temperature
        target = torch.zeros(anchor.size(0), dtype=torch.long, device=anchor.device)
        return F.cross_entropy(logits, target)

    @torch.no_grad()
    def _update(self, memory: Tensor, z: Tensor, indices: Tensor) -> None:
        mixed = memory[indices] * self.momentum + z * (1.0 - self.momentum)
        memory[indices] = F.normalize(mixed, dim=1)
