"""The HieraMamba video backbone: embedding convs, position encoding and the stack of gated
Anchor-Mamba Pooling (AMP) blocks that builds the pyramid (REFERENCE §5, §6)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hieramamba.nvtx import nvtx_range

from ..errors import ConfigError, InputError
from .hydra import Hydra
from .primitives import (ChannelLayerNorm, LayerScale, MaskedConv1D, RMSNorm, TransformerEncoder,
                         position_encoding, position_encoding_window, sinusoid_table)

MASK_SEMANTICS = ("official", "per_sample")


def check_mask_semantics(value: str) -> str:
    if value not in MASK_SEMANTICS:
        raise ConfigError(f"mask_semantics must be one of {MASK_SEMANTICS}, got {value!r}")
    return value


def interleave_anchors(x, mask, mask_semantics: str, n_valid=None, slot_offset=0):
    """Mean-pool pairs into anchors and interleave ``[a_k, x_2k, x_2k+1]`` (REFERENCE §6.2).

    ``x (B, D, L)``, ``mask (B, 1, L)`` → sequence ``(B, T', D)`` with ``T' = 3·ceil(L/2)``,
    its mask ``(B, T', 1)`` and the anchor mask ``(B, 1, ceil(L/2))``.

    ``official``: slot ``j`` is valid iff ``j < Σ_batch valid tokens + Σ_batch valid anchors``,
    the batch-summed count of the official code (REFERENCE §13.1) computed as a tensor, so no
    host sync; identical rows for every sample. ``per_sample``: exact per-slot validity.

    Chunked callers (DESIGN §4) pass a window of the level: ``n_valid`` (the official count of
    the whole level and batch) and ``slot_offset`` (the window's first slot in the level)."""
    bsz, dim, length = x.shape
    # Explicit sizes instead of -1 in reshapes: with a symbolic length, inferring -1 makes the
    # exporter simplify a product/quotient of nested ceil-divisions, which takes minutes.
    nb = (length + 1) // 2
    x_pad = F.pad(x, (0, 2 * nb - length))
    m_pad = F.pad(mask, (0, 2 * nb - length))
    blocks = x_pad.reshape(bsz, dim, nb, 2)
    anchors = blocks.mean(-1, keepdim=True)  # a half-empty last pair gives x_last / 2
    seq = torch.cat((anchors, blocks), dim=-1).permute(0, 2, 3, 1).reshape(bsz, 3 * nb, dim)
    m_blocks = m_pad.reshape(bsz, 1, nb, 2)
    anchor_mask = m_blocks.any(-1)
    if mask_semantics == "official":
        if n_valid is None:
            n_valid = mask.sum() + anchor_mask.sum()
        slots = torch.arange(seq.shape[1], device=x.device) + slot_offset
        seq_mask = (slots < n_valid)[None, :, None].expand(bsz, -1, 1)
    else:
        slot_mask = torch.cat((anchor_mask[..., None], m_blocks), dim=-1)  # (B, 1, nb, 3)
        seq_mask = slot_mask.reshape(bsz, 3 * nb, 1)
    return seq, seq_mask, anchor_mask


class AnchorMambaPooling(nn.Module):
    """Gated AMP block (official ``AnchorMambaPoolingBlockGated`` with a local encoder):
    Hydra (global) → gate 1 → windowed/global transformer (local) → gate 2 → FFN → split."""

    def __init__(self, d_model, local_window_size=5, dropout=0.1, mamba_headdim=64, mamba_dstate=64,
                 mamba_expand=2, mamba_dconv=7, mask_semantics="official"):
        super().__init__()
        self.mask_semantics = check_mask_semantics(mask_semantics)
        self.global_encoder = Hydra(d_model, d_state=mamba_dstate, d_conv=mamba_dconv,
                                    expand=mamba_expand, headdim=mamba_headdim)
        self.norm_global = RMSNorm(d_model)
        self.drop_path_global = LayerScale((1, 1, d_model), dropout)
        self.gate1 = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.Sigmoid())
        self.gate2 = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.Sigmoid())
        self.norm_local = RMSNorm(d_model)
        self.drop_path_local = LayerScale((1, 1, d_model), dropout)
        # The official local encoder always has 2 heads; window 0 means global attention.
        self.local_encoder = TransformerEncoder(d_model, use_conv=True, n_heads=2,
                                                window_size=local_window_size)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Dropout(dropout))
        self.norm_ffn = RMSNorm(d_model)
        self.drop_path_ffn = LayerScale((1, 1, d_model), dropout)

    # The forward is written as steps so that the chunked runtime (DESIGN §4) runs the same
    # code on windows: interleave → [Hydra] → mix_global → mix_local → split.
    def interleave(self, x, mask, n_valid=None, slot_offset=0):
        """Masked input → interleaved sequence ``(B, T', D)``, its mask, the anchor mask."""
        with nvtx_range("interleave"):
            x = x * mask.to(x.dtype)
            return interleave_anchors(x, mask, self.mask_semantics, n_valid, slot_offset)

    def mix_global(self, seq, seq_mask, hydra_out):
        """Hydra residual, masking and gate 1 (pointwise in time) → ``fused1``."""
        glob = (self.drop_path_global(hydra_out) + seq) * seq_mask.to(seq.dtype)
        with nvtx_range("gate1"):
            g1 = self.gate1(torch.cat((seq, glob), dim=-1))
            return g1 * glob + (1 - g1) * seq

    def mix_local(self, fused1, seq_mask):
        """Local encoder, gate 2 and FFN → block output ``(B, T', D)`` (not masked)."""
        with nvtx_range("local_attn"):
            local = self.local_encoder(self.norm_local(fused1).transpose(1, 2), seq_mask.transpose(1, 2))[0]
            local = self._local_residual(fused1, seq_mask, local)
        return self._gate2_ffn(fused1, local)

    # mix_local of a global-attention level in three steps, so that the chunked runtime can
    # run the attention in blocks of query rows (memory ∝ rows × T' instead of T'²):
    # global_attention_inputs → global_attention_rows (per block) → mix_local_from_attention.
    def _local_encoder_input(self, fused1, seq_mask):
        mask = seq_mask.transpose(1, 2)
        x = self.norm_local(fused1).transpose(1, 2)
        return x * mask.to(x.dtype), mask

    def global_attention_inputs(self, fused1, seq_mask):
        """Per-head, scaled ``q, k, v (B, h, T', d)`` of the local encoder's attention."""
        enc = self.local_encoder
        x, mask = self._local_encoder_input(fused1, seq_mask)
        return enc.attn.attn.heads_in(*enc.attn.qkv(enc.ln_attn(x), mask), mask)[:3]

    def global_attention_rows(self, q_rows, k, v, seq_mask):
        """Attention output ``(B, h, r, d)`` of the query rows ``q_rows`` over all keys."""
        return self.local_encoder.attn.attn.attend(q_rows, k, v, seq_mask.transpose(1, 2))

    def mix_local_from_attention(self, fused1, seq_mask, attn):
        """``mix_local`` given the whole attention output ``(B, h, T', d)``."""
        enc = self.local_encoder
        x, mask = self._local_encoder_input(fused1, seq_mask)
        local = enc.finish(x, enc.attn.attn.heads_out(attn), mask)
        return self._gate2_ffn(fused1, self._local_residual(fused1, seq_mask, local))

    def _local_residual(self, fused1, seq_mask, local):
        return (self.drop_path_local(local.transpose(1, 2)) + fused1) * seq_mask.to(fused1.dtype)

    def _gate2_ffn(self, fused1, local):
        with nvtx_range("gate2"):
            g2 = self.gate2(torch.cat((fused1, local), dim=-1))
            fused2 = g2 * local + (1 - g2) * fused1
        with nvtx_range("ffn"):
            return self.drop_path_ffn(self.ffn(self.norm_ffn(fused2))) + fused2

    @staticmethod
    def split(out, nb, length):
        """``(B, 3·nb, D)`` → anchors ``(B, D, nb)``, tokens ``(B, D, length)``."""
        with nvtx_range("split"):
            bsz, dim = out.shape[0], out.shape[-1]
            out = out.reshape(bsz, nb, 3, dim)
            anchors = out[:, :, 0].transpose(1, 2)
            tokens = out[:, :, 1:].reshape(bsz, 2 * nb, dim).transpose(1, 2)[..., :length]
            return anchors, tokens

    def forward(self, x, mask, n_valid=None):
        """``x (B, D, L)``, ``mask (B, 1, L)`` → anchors ``(B, D, ceil(L/2))``, tokens
        ``(B, D, L)``, anchor mask, token mask. Outputs are not masked (as official).
        ``n_valid`` overrides the official batch-summed slot count (see interleave_anchors)."""
        seq, seq_mask, anchor_mask = self.interleave(x, mask, n_valid)
        fused1 = self.mix_global(seq, seq_mask, self.global_encoder(self.norm_global(seq)))
        out = self.mix_local(fused1, seq_mask)
        anchors, tokens = self.split(out, anchor_mask.shape[-1], x.shape[-1])
        return anchors, tokens, anchor_mask, mask


class HieraMambaBackbone(nn.Module):
    def __init__(self, in_dim, embd_dim, max_seq_len, arch=(2, 0, 8), stride=1, use_abs_pe=True,
                 local_window_size=5, local_encode_num_layers=0, mamba_headdim=64, mamba_dstate=64,
                 mamba_expand=2, mamba_dconv=7, mask_semantics="official", **unused):
        super().__init__()
        if arch[1] != 0:
            raise ConfigError(f"vid_net.arch[1] (stem transformers) must be 0, got {arch[1]}")
        n_local = arch[2] if local_encode_num_layers == 0 else local_encode_num_layers
        if n_local != arch[2]:
            raise ConfigError("vid_net.local_encode_num_layers must cover every block (0 or arch[2])")
        self.max_seq_len = max_seq_len
        self.embd_fc = MaskedConv1D(in_dim, embd_dim, 1)
        self.embd_convs, self.embd_norms = nn.ModuleList(), nn.ModuleList()
        for _ in range(arch[0]):
            down = stride > 1
            self.embd_convs.append(MaskedConv1D(embd_dim, embd_dim, 5 if down else 3, 2 if down else 1,
                                                2 if down else 1, bias=False))
            self.embd_norms.append(ChannelLayerNorm(embd_dim))
            stride = max(stride // 2, 1)
        if use_abs_pe:
            self.register_buffer("pe", sinusoid_table(max_seq_len, embd_dim), persistent=False)
        else:
            self.pe = None
        # Levels 0–4 use a 5-wide window, deeper (short) levels global attention.
        self.branch = nn.ModuleList(
            AnchorMambaPooling(embd_dim, local_window_size if idx < 5 else 0, mamba_headdim=mamba_headdim,
                               mamba_dstate=mamba_dstate, mamba_expand=mamba_expand,
                               mamba_dconv=mamba_dconv, mask_semantics=mask_semantics)
            for idx in range(arch[2]))

    def embed(self, x, mask, pe_window=None):
        """Embedding convs + PE: ``(B, C_in, T_in)`` → level input ``(B, D, T)``, mask.
        ``pe_window=(start, total)``: ``x`` is a window of a longer video (chunked runtime); its
        PE columns are those of positions ``start…`` of a ``total``-long level 0 (eval only)."""
        x = self.embd_fc(x, mask)[0]
        for conv, norm in zip(self.embd_convs, self.embd_norms):
            x, mask = conv(x, mask)
            x = F.relu(norm(x))
        if self.pe is not None:
            t = x.shape[-1]
            if self.training and t > self.max_seq_len:
                raise InputError(f"video length {t} exceeds vid_net.max_seq_len={self.max_seq_len} in training")
            if pe_window is None:
                pe = position_encoding(self.pe.to(x.dtype), t, resample=not self.training)
            else:
                pe = position_encoding_window(self.pe.to(x.dtype), pe_window[1], pe_window[0], t)
            x = x + pe * mask.to(x.dtype)
        else:
            x = x * mask.to(x.dtype)
        return x, mask

    def forward(self, x, mask):
        """Returns per level: tokens ``fpn[l] (B, D, L_l)``, ``fpn_masks[l]``, and the anchors
        each block produced with their masks (for the anchor contrastive loss)."""
        with nvtx_range("backbone.embed"):
            x, mask = self.embed(x, mask)
        fpn, fpn_masks, anchors, anchor_masks = [], [], [], []
        for level, block in enumerate(self.branch):
            with nvtx_range(f"amp{level}", scope=True):  # names inside read amp{l}.<range>
                a, tokens, a_mask, mask = block(x, mask)
            fpn.append(tokens)
            fpn_masks.append(mask)
            anchors.append(a)
            anchor_masks.append(a_mask)
            x, mask = a, a_mask
        # The official blocks zero their input in place, so every stored anchor level except
        # the last appears masked; reproduce that for callers that read them.
        anchors = [a * m.to(a.dtype) for a, m in zip(anchors[:-1], anchor_masks[:-1])] + anchors[-1:]
        return fpn, fpn_masks, anchors, anchor_masks
