"""Classification and regression heads, shared across pyramid levels (REFERENCE §3.4)."""

from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F

from .primitives import ChannelLayerNorm, MaskedConv1D, Scale


class _ConvTower(nn.Module):
    def __init__(self, embd_dim, n_layers, out_channels, head_name):
        super().__init__()
        self.convs = nn.ModuleList(
            MaskedConv1D(embd_dim, embd_dim, 3, 1, 1, bias=False) for _ in range(n_layers))
        self.norms = nn.ModuleList(ChannelLayerNorm(embd_dim) for _ in range(n_layers))
        setattr(self, head_name, MaskedConv1D(embd_dim, out_channels, 3, 1, 1))
        self._head_name = head_name

    def _tower(self, x, mask):
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x, mask)[0]))
        return getattr(self, self._head_name)(x, mask)[0]


class ClsHead(_ConvTower):
    """Per-level logits ``(B, T_l)``; outputs are not masked (scores are masked in decoding)."""

    def __init__(self, embd_dim, n_layers=2, prior_prob=0.0, **_):
        super().__init__(embd_dim, n_layers, 1, "cls_head")
        if prior_prob > 0:
            nn.init.constant_(self.cls_head.conv.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, x, mask):
        return self._tower(x, mask).squeeze(1)


class RegHead(_ConvTower):
    """Per-level offsets ``(B, T_l, 2)`` ≥ 0 in units of the level stride."""

    def __init__(self, embd_dim, num_fpn_levels, n_layers=2, **_):
        super().__init__(embd_dim, n_layers, 2, "reg_head")
        self.scales = nn.ModuleList(Scale() for _ in range(num_fpn_levels))

    def forward(self, x, mask, level: int):
        return self.with_scale(x, mask, self.scales[level].scale)

    def with_scale(self, x, mask, scale):
        """The head with a given level's scale value (a 0-d tensor: ``Scale.scale``), so that
        one exported graph serves every level with the scale as an input (export/stages.py)."""
        out = self._tower(x, mask)
        return F.relu(out * scale.to(out.dtype)).transpose(1, 2)
