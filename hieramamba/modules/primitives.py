"""Building blocks shared by the text net, fusion, backbone and heads (REFERENCE §3.1).

Everything is out-of-place and free of host syncs so the eval forward can be exported
(REFERENCE §13.4–13.6). Parameter names follow the official state_dict (REFERENCE §9).
Tensors are channel-first ``(B, C, T)`` unless a docstring says otherwise; masks are bool with
True = valid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedConv1D(nn.Module):
    """Conv over ``x ⊙ m``. The output is not re-masked (the bias leaks into padded slots, as
    in the official model). With stride > 1 the mask is subsampled (nearest: ``m[stride·i]``)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, bias=True):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, groups=groups, bias=bias)
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x, mask):
        x = self.conv(x * mask.to(x.dtype))
        if self.stride > 1:
            mask = mask[..., :: self.stride][..., : x.shape[-1]]
        return x, mask


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean(dim=1, keepdim=True)`` of ``(B, C, T)``. In an fp32 graph being exported it is a
    ``(1, C) @ (B, C, T)`` MatMul instead: ONNX Runtime's ReduceMean over a non-last axis is
    single-threaded and strided, 15× slower on the MAD level-0 shape (1, 512, 8192: 5.9 ms vs
    0.4 ms, 2 threads) and 16 % of the whole MAD graph's time. Same value up to fp32 rounding (the
    sum is taken in another order). fp16/bf16 graphs (the GPU formats) keep ReduceMean, the pattern
    TensorRT fuses into its normalization layer: their statistics come from
    ``export.onnx_export.fp32_islands``, which does not call this."""
    if x.dtype == torch.float32 and (torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()):
        return torch.matmul(torch.full((1, x.shape[1]), 1.0 / x.shape[1], dtype=x.dtype, device=x.device), x)
    return x.mean(dim=1, keepdim=True)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, T)``; weight/bias shaped ``(C, 1)``."""

    def __init__(self, n_channels, affine=True, eps=1e-5):
        super().__init__()
        self.eps = eps
        if affine:
            self.weight = nn.Parameter(torch.ones(n_channels, 1))
            self.bias = nn.Parameter(torch.zeros(n_channels, 1))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x):
        x = x - channel_mean(x)
        x = x / torch.sqrt(channel_mean(x * x) + self.eps)
        if self.weight is not None:
            x = x * self.weight + self.bias
        return x


class RMSNorm(nn.Module):
    """RMSNorm of the AMP blocks over the last axis. Statistics are taken in float32 and the
    result is cast back before the weight, exactly as the official block: a float64 model
    therefore rounds through float32 here, which the golden fixtures encode."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def drop_path(x, drop_prob: float, training: bool):
    """Stochastic depth per sample (training only)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x / keep * torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))


class LayerScale(nn.Module):
    """Per-channel residual scale with drop-path; ``shape`` is (1, C, 1) for channel-first
    tensors (transformer parts) and (1, 1, C) for the channel-last AMP blocks."""

    def __init__(self, shape, pdrop=0.0, init_scale=1e-4):
        super().__init__()
        self.scale = nn.Parameter(init_scale * torch.ones(shape))
        self.pdrop = pdrop

    def forward(self, x):
        return drop_path(self.scale.to(x.dtype) * x, self.pdrop, self.training)


class Scale(nn.Module):
    """One learned scalar per pyramid level (regression head; applied by ``RegHead.with_scale``)."""

    def __init__(self, init=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.as_tensor(init, dtype=torch.float))


def sinusoid_table(seq_len: int, dim: int) -> torch.Tensor:
    """``(dim, seq_len)`` table: first half sines, second half cosines, divided by sqrt(dim).
    Built in float32 like the official buffer, so a float64 model sees the same values."""
    n = dim // 2
    tics = torch.arange(seq_len, dtype=torch.float)
    freqs = 10000 ** torch.linspace(0, 1, n + 1)[:n]
    x = tics[None, :] / freqs[:, None]
    return torch.cat((torch.sin(x), torch.cos(x))) / dim ** 0.5


def position_encoding(table: torch.Tensor, length, resample: bool) -> torch.Tensor:
    """The first ``length`` columns of ``table``; when ``resample`` (eval) and ``length`` exceeds
    the table, the table linearly resampled to ``length`` (align_corners=True), REFERENCE §3.1.

    Branch-free so that an exported graph handles every length: sample positions are
    ``min(i, i·(n−1)/(length−1))``, which is ``i`` (an exact slice) whenever length ≤ n."""
    n = table.shape[-1]
    idx = torch.arange(length, device=table.device, dtype=torch.float64 if table.dtype == torch.float64 else torch.float32)
    if not resample:
        return table[:, :length]
    return _sample_table(table, idx, torch.clamp(idx[-1:], min=1.0))


def _sample_table(table: torch.Tensor, idx: torch.Tensor, denom: torch.Tensor) -> torch.Tensor:
    """Columns of ``table`` at positions ``min(i, i·(n−1)/denom)``, linearly interpolated."""
    n = table.shape[-1]
    pos = torch.minimum(idx, idx * ((n - 1) / denom))
    lo = torch.clamp(torch.floor(pos), max=n - 1)
    frac = (pos - lo).to(table.dtype)
    lo = lo.long()
    hi = torch.clamp(lo + 1, max=n - 1)
    return table[:, lo] * (1 - frac) + table[:, hi] * frac


def position_encoding_window(table: torch.Tensor, total, start, count) -> torch.Tensor:
    """Eval-time ``position_encoding(table, total, resample=True)[:, start:start+count]``
    without building the other columns (chunked execution, DESIGN §4). ``total`` and ``start``
    may be ints or 0-d integer tensors (graph inputs of an exported stage)."""
    fdt = torch.float64 if table.dtype == torch.float64 else torch.float32
    total = torch.as_tensor(total, device=table.device).to(fdt)
    start = torch.as_tensor(start, device=table.device).to(fdt)
    idx = torch.arange(count, device=table.device, dtype=fdt) + start
    return _sample_table(table, idx, torch.clamp((total - 1).reshape(1), min=1.0))


class FFN(nn.Module):
    """1×1 conv C→4C, GELU, dropout, 1×1 conv 4C→C, dropout."""

    def __init__(self, channels, expansion=4, pdrop=0.0):
        super().__init__()
        self.fc = nn.Conv1d(channels, channels * expansion, 1)
        self.proj = nn.Conv1d(channels * expansion, channels, 1)
        self.dropout = nn.Dropout(pdrop)

    def forward(self, x):
        return self.dropout(self.proj(self.dropout(F.gelu(self.fc(x)))))


def expand_batch(x, batch, repeats=None):
    """Replicate a per-video tensor once per query. ``repeats`` (queries per video, training
    batches) uses repeat_interleave; without it a batch of 1 is broadcast (export path: no
    data-dependent sizes) and an equal batch is left as is."""
    if repeats is not None:
        if x.shape[0] == batch:
            return x
        return x.repeat_interleave(repeats, dim=0)
    return x.expand(batch, *x.shape[1:])


class MaskedMHA(nn.Module):
    """Multi-head attention with key masks (REFERENCE §3.1).

    Global (``window_size=0``): invalid keys get −inf. Windowed (``window_size=w`` odd): a band
    ``|i−j| ≤ w//2``; invalid keys get an additive −1e4 and rows of invalid queries are zeroed,
    which is what the official ``as_strided`` implementation computes, here done with ``w``
    shifted copies (exportable, no in-place writes)."""

    def __init__(self, embd_dim, q_dim=None, kv_dim=None, out_dim=None, n_heads=4, window_size=0,
                 attn_pdrop=0.0, proj_pdrop=0.0):
        super().__init__()
        assert embd_dim % n_heads == 0
        assert window_size == 0 or window_size % 2 == 1
        q_dim = q_dim or embd_dim
        kv_dim = kv_dim or embd_dim
        out_dim = out_dim or q_dim
        self.embd_dim, self.n_heads, self.window_size = embd_dim, n_heads, window_size
        # q and k are each scaled by d^-1/4 (total 1/sqrt(d)) as in the official code.
        self.scale = 1.0 / math.sqrt(math.sqrt(embd_dim // n_heads))
        self.query = nn.Conv1d(q_dim, embd_dim, 1)
        self.key = nn.Conv1d(kv_dim, embd_dim, 1)
        self.value = nn.Conv1d(kv_dim, embd_dim, 1)
        self.proj = nn.Conv1d(embd_dim, out_dim, 1)
        self.attn_drop = nn.Dropout(attn_pdrop)
        self.proj_drop = nn.Dropout(proj_pdrop)

    def _heads(self, x):
        b, _, t = x.shape
        return x.reshape(b, self.n_heads, self.embd_dim // self.n_heads, t).transpose(2, 3)

    def forward(self, q, k=None, v=None, kv_mask=None, kv_size=None):
        qh, kh, vh, kv_mask = self.heads_in(q, k, v, kv_mask, kv_size)
        if self.window_size > 0:
            out = self._banded(qh, kh, vh, kv_mask[:, 0])
        else:
            out = self.attend(qh, kh, vh, kv_mask)
        return self.heads_out(out)

    # The forward in steps, so that the chunked runtime can run a long global attention in
    # blocks of query rows (DESIGN §4): heads_in → attend (per row block) → heads_out.
    def heads_in(self, q, k=None, v=None, kv_mask=None, kv_size=None):
        """Projections → per-head, scaled ``q, k, v (B, h, T, d)`` and the key mask ``(B, 1, T)``."""
        k = q if k is None else k
        v = k if v is None else v
        q, k, v = self.query(q), self.key(k), self.value(v)
        # One video attends to the text of each of its queries (no-op for self-attention).
        q = expand_batch(q, k.shape[0], kv_size)
        if kv_mask is None:
            kv_mask = torch.ones_like(k[:, :1], dtype=torch.bool)
        return self._heads(q) * self.scale, self._heads(k) * self.scale, self._heads(v), kv_mask

    def heads_out(self, out):
        """``(B, h, T, d)`` → merged heads, output projection ``(B, C, T)``."""
        b, h, t, d = out.shape
        out = out.transpose(2, 3).reshape(b, h * d, t)
        return self.proj_drop(self.proj(out))

    def attend(self, q, k, v, kv_mask):
        """Global attention of query rows ``q (B, h, r, d)`` over all keys; rows are
        independent (softmax per row), so any split of the rows gives the same result."""
        attn = q @ k.transpose(2, 3)
        attn = attn.masked_fill(~kv_mask[:, :, None, :], float("-inf"))
        attn = self.attn_drop(F.softmax(attn, dim=-1))
        return attn @ v

    def _banded(self, q, k, v, mask):
        """q, k, v: (B, h, T, d); mask: (B, T) for keys and queries (self-attention)."""
        s = self.window_size // 2
        t = q.shape[2]
        kp = F.pad(k, (0, 0, s, s))
        vp = F.pad(v, (0, 0, s, s))
        # Key validity per offset: −1e4 for masked keys, −inf outside the sequence.
        key_bias = torch.where(mask, 0.0, -1e4).to(q.dtype)
        key_bias = F.pad(key_bias, (s, s), value=float("-inf"))
        scores, biases = [], []
        for o in range(self.window_size):
            scores.append((q * kp[:, :, o:o + t]).sum(-1))
            biases.append(key_bias[:, o:o + t])
        attn = torch.stack(scores, -1) + torch.stack(biases, -1)[:, None]
        attn = F.softmax(attn, dim=-1)
        attn = attn.masked_fill(~mask[:, None, :, None], 0.0)
        attn = self.attn_drop(attn)
        out = attn[..., 0, None] * vp[:, :, 0:t]
        for o in range(1, self.window_size):
            out = out + attn[..., o, None] * vp[:, :, o:o + t]
        return out


class ConvAttention(nn.Module):
    """Self-attention with optional depthwise-conv + LayerNorm projections of q, k, v
    (keys ``{q,k,v}_conv``, ``{q,k,v}_norm``, ``attn``)."""

    def __init__(self, embd_dim, use_conv, n_heads, window_size, attn_pdrop=0.0, proj_pdrop=0.0):
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            for name in ("q", "k", "v"):
                setattr(self, f"{name}_conv",
                        MaskedConv1D(embd_dim, embd_dim, 3, 1, 1, groups=embd_dim, bias=False))
                setattr(self, f"{name}_norm", ChannelLayerNorm(embd_dim))
        self.attn = MaskedMHA(embd_dim, n_heads=n_heads, window_size=window_size,
                              attn_pdrop=attn_pdrop, proj_pdrop=proj_pdrop)

    def forward(self, x, mask):
        return self.attn(*self.qkv(x, mask), mask)

    def qkv(self, x, mask):
        """The attention's q, k, v inputs (depthwise conv + LayerNorm each when ``use_conv``)."""
        if self.use_conv:
            q = self.q_norm(self.q_conv(x, mask)[0])
            k = self.k_norm(self.k_conv(x, mask)[0])
            v = self.v_norm(self.v_conv(x, mask)[0])
        else:
            q = k = v = x
        return q, k, v


class TransformerEncoder(nn.Module):
    """Pre-LN encoder layer: (conv-)attention then FFN, both with LayerScale residuals.
    ``use_conv`` is the official ``stride=1`` (depthwise convs on q/k/v); ``stride=0`` → False."""

    def __init__(self, embd_dim, use_conv=True, n_heads=4, window_size=0, expansion=4,
                 attn_pdrop=0.0, proj_pdrop=0.0, path_pdrop=0.0):
        super().__init__()
        self.attn = ConvAttention(embd_dim, use_conv, n_heads, window_size, attn_pdrop, proj_pdrop)
        self.ln_attn = ChannelLayerNorm(embd_dim)
        self.drop_path_attn = LayerScale((1, embd_dim, 1), path_pdrop)
        self.ffn = FFN(embd_dim, expansion, proj_pdrop)
        self.ln_ffn = ChannelLayerNorm(embd_dim)
        self.drop_path_ffn = LayerScale((1, embd_dim, 1), path_pdrop)

    def forward(self, x, mask):
        x = x * mask.to(x.dtype)
        return self.finish(x, self.attn(self.ln_attn(x), mask), mask), mask

    def finish(self, x, h, mask):
        """After the attention: masked input ``x``, attention output ``h`` → layer output."""
        m = mask.to(x.dtype)
        x = x * m + self.drop_path_attn(h)
        return x + self.drop_path_ffn(self.ffn(self.ln_ffn(x)) * m)
