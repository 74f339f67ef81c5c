"""Cross-attention fusion of video and text (REFERENCE §3.3).

The same module (same weights) serves early fusion and every pyramid level. There is no
residual around the cross-attention: the text modulates the video by ``q·scale + shift``."""

from __future__ import annotations

import torch.nn as nn

from .primitives import FFN, ChannelLayerNorm, LayerScale, MaskedConv1D, MaskedMHA, expand_batch


class ConvCrossAttention(nn.Module):
    """Depthwise conv + LayerNorm on the video query, then global cross-attention to the text
    (keys ``q_conv``, ``q_norm``, ``xattn``)."""

    def __init__(self, embd_dim, kv_dim, out_dim, n_heads, attn_pdrop=0.0, proj_pdrop=0.0):
        super().__init__()
        self.q_conv = MaskedConv1D(embd_dim, embd_dim, 3, 1, 1, groups=embd_dim, bias=False)
        self.q_norm = ChannelLayerNorm(embd_dim)
        self.xattn = MaskedMHA(embd_dim, kv_dim=kv_dim, out_dim=out_dim, n_heads=n_heads,
                               attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop)

    def forward(self, q, q_mask, kv, kv_mask, kv_size=None):
        q = self.q_norm(self.q_conv(q, q_mask)[0])
        return self.xattn(q, kv, None, kv_mask, kv_size)


class FusionLayer(nn.Module):
    """One official ``TransformerDecoder`` (cross-attention modulation + FFN)."""

    def __init__(self, embd_dim, kv_dim, n_heads=4, expansion=4, attn_pdrop=0.0, proj_pdrop=0.0,
                 path_pdrop=0.0, xattn_mode="adaln"):
        super().__init__()
        self.xattn = ConvCrossAttention(embd_dim, kv_dim, 2 * embd_dim, n_heads, attn_pdrop, proj_pdrop)
        self.ln_xattn_q = ChannelLayerNorm(embd_dim)
        self.ln_xattn_kv = ChannelLayerNorm(kv_dim)
        self.adaln = ChannelLayerNorm(embd_dim, affine=False) if xattn_mode == "adaln" else nn.Identity()
        self.ffn = FFN(embd_dim, expansion, proj_pdrop)
        self.ln_ffn = ChannelLayerNorm(embd_dim)
        self.drop_path_ffn = LayerScale((1, embd_dim, 1), path_pdrop)

    def forward(self, q, q_mask, kv, kv_mask, kv_size=None):
        q = q * q_mask.to(q.dtype)
        h = self.xattn(self.ln_xattn_q(q), q_mask, self.ln_xattn_kv(kv), kv_mask, kv_size)
        batch = h.shape[0]
        q, q_mask = expand_batch(q, batch, kv_size), expand_batch(q_mask, batch, kv_size)
        q = self.adaln(q * q_mask.to(q.dtype))
        scale, shift = h.chunk(2, dim=1)
        q = q * scale + shift
        q = q + self.drop_path_ffn(self.ffn(self.ln_ffn(q)) * q_mask.to(q.dtype))
        return q, q_mask


class XAttnFusion(nn.Module):
    def __init__(self, vid_dim, text_dim, n_layers=2, n_heads=4, attn_pdrop=0.0, proj_pdrop=0.0,
                 path_pdrop=0.0, xattn_mode="adaln"):
        super().__init__()
        self.layers = nn.ModuleList(
            FusionLayer(vid_dim, text_dim, n_heads=n_heads, attn_pdrop=attn_pdrop,
                        proj_pdrop=proj_pdrop, path_pdrop=path_pdrop, xattn_mode=xattn_mode)
            for _ in range(n_layers))
        self.ln_out = ChannelLayerNorm(vid_dim)

    def forward(self, vid, vid_mask, text, text_mask, text_size=None):
        """``vid (Bv, C, T)`` → ``(Nq, C, T)``: each video replicated for its queries."""
        for layer in self.layers:
            vid, vid_mask = layer(vid, vid_mask, text, text_mask, text_size)
        return self.ln_out(vid), vid_mask


def make_fusion(cfg: dict) -> nn.Module:
    cfg = dict(cfg)
    name = cfg.pop("name")
    if name != "xattn":
        from ..errors import ConfigError
        raise ConfigError(f"fusion.name {name!r} is not supported (only 'xattn')")
    return XAttnFusion(**cfg)
