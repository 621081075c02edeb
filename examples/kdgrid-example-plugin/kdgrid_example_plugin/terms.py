"""The cosine hidden-state loss (torch; imported only when a run trains with it)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from kdgrid.train.terms import LossTerm, TermInputs


class CosineHidden(LossTerm):
    """Σ over mapped layer pairs of the mean over real tokens of 1 − cos(h_S, h_T) (h_S·W_h with ``project``)."""

    @classmethod
    def wants_projection(cls, settings: Any) -> bool:
        return bool(settings.project)  # kdgrid builds its shared W_h only when asked

    def forward(self, x: TermInputs) -> Tensor:
        cls_only = self.settings.tokens == "cls"
        cut = (lambda h: h[:, :1]) if cls_only else (lambda h: h)
        mask = x.mask[:, :1] if cls_only else x.mask
        weights = mask.to(torch.float32)
        cache: dict[int, Tensor] = {}
        total = x.mask.new_zeros((), dtype=torch.float32)
        for m, n in x.pairs:
            s = cut(x.student_hidden(m)).float()
            if self.settings.project:
                s = self.context.projection(s)  # type: ignore[misc]
            t = x.teacher_for(m, n, lambda k: cut(x.teacher_hidden(k)), cache).float()
            cos = torch.nn.functional.cosine_similarity(s, t, dim=-1)  # [B, T]
            total = total + ((1.0 - cos) * weights).sum() / weights.sum().clamp_min(1.0)
        return total
