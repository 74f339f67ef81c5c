"""Text encoders (REFERENCE §3.2): ``identity`` (Ego4D, MAD) and ``transformer`` (TACoS).

Both return ``(Nq, C, T+1)`` features and ``(Nq, 1, T+1)`` masks: a background token is
prepended (attention-pooled for ``identity``, learned for ``transformer``)."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import InputError
from .primitives import MaskedConv1D, MaskedMHA, TransformerEncoder, position_encoding, sinusoid_table


class _TextPE(nn.Module):
    """Optional absolute PE with the eval-time resampling rule (REFERENCE §3.1, §13.7)."""

    def _init_pe(self, use_abs_pe, max_seq_len, dim):
        self.max_seq_len = max_seq_len
        if use_abs_pe:
            self.register_buffer("pe", sinusoid_table(max_seq_len, dim), persistent=False)
        else:
            self.pe = None

    def _add_pe(self, x, mask):
        if self.pe is None:
            return x
        t = x.shape[-1]
        if self.training and t > self.max_seq_len:
            raise InputError(f"text length {t} exceeds text_net.max_seq_len={self.max_seq_len} in training")
        pe = position_encoding(self.pe.to(x.dtype), t, resample=not self.training)
        return x + pe * mask.to(x.dtype)


class AttentionPool(nn.Module):
    """Background token = attention over [masked mean, tokens], output position 0 only."""

    def __init__(self, embd_dim, n_heads=4):
        super().__init__()
        self.attn = MaskedMHA(embd_dim, n_heads=n_heads)

    def forward(self, x, mask):
        m = mask.to(x.dtype)
        mean = (x * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True)
        h = torch.cat((mean, x), dim=-1)
        mask = torch.cat((mask[..., :1], mask), dim=-1)
        pooled = self.attn(h, kv_mask=mask)[..., :1]
        return torch.cat((pooled, x), dim=-1), mask


class TextIdentity(_TextPE):
    def __init__(self, in_dim, embd_dim, max_seq_len, n_heads=4, use_abs_pe=False, use_bkgd_token=True):
        super().__init__()
        if embd_dim is not None:
            self.embd_fc = MaskedConv1D(in_dim, embd_dim, 1)
        else:
            embd_dim, self.embd_fc = in_dim, None
        self._init_pe(use_abs_pe, max_seq_len, embd_dim)
        self.attn_pool = AttentionPool(embd_dim, n_heads) if use_bkgd_token else None
        self.out_dim = embd_dim

    def forward(self, x, mask):
        if self.embd_fc is not None:
            x = self.embd_fc(x, mask)[0]
        x = self._add_pe(x, mask)
        if self.attn_pool is not None:
            x, mask = self.attn_pool(x, mask)
        return x, mask


class TextTransformer(_TextPE):
    def __init__(self, in_dim, embd_dim, n_heads, max_seq_len, n_layers=5, attn_pdrop=0.0,
                 proj_pdrop=0.0, path_pdrop=0.0, use_abs_pe=True, use_bkgd_token=True):
        super().__init__()
        self.embd_fc = MaskedConv1D(in_dim, embd_dim, 1)
        self._init_pe(use_abs_pe, max_seq_len, embd_dim)
        if use_bkgd_token:
            self.bkgd_token = nn.Parameter(torch.empty(embd_dim, 1))
            nn.init.trunc_normal_(self.bkgd_token, std=0.02)
        else:
            self.bkgd_token = None
        self.transformer = nn.ModuleList(
            TransformerEncoder(embd_dim, use_conv=False, n_heads=n_heads, attn_pdrop=attn_pdrop,
                               proj_pdrop=proj_pdrop, path_pdrop=path_pdrop)
            for _ in range(n_layers))
        self.out_dim = embd_dim

    def forward(self, x, mask):
        x = self.embd_fc(x, mask)[0]
        x = self._add_pe(x, mask)
        if self.bkgd_token is not None:
            token = self.bkgd_token.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat((token, x), dim=-1)
            mask = torch.cat((mask[..., :1], mask), dim=-1)
        for layer in self.transformer:
            x = layer(x, mask)[0]
        return x, mask


def make_text_net(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    name = cfg.pop("name")
    return {"identity": TextIdentity, "transformer": TextTransformer}[name](**cfg)
