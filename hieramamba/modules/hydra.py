"""Hydra: the bidirectional quasiseparable SSM mixer of the AMP blocks (REFERENCE §7).

The module is thin: projections, depthwise conv, the data-dependent diagonal and the gated
RMSNorm live here; the scan itself is the ``HydraScan`` op (``hieramamba.ops``), the only
place its math is written. Hydra takes no mask: padding feeds the conv and both scans exactly
as in the official model (REFERENCE §13.2)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from hieramamba.nvtx import nvtx_range

from ..ops import hydra_scan


class GatedRMSNorm(nn.Module):
    """``y / rms(y) · w · SiLU(z)`` over the whole inner width, eps 1e-5, in at least fp32."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y, z):
        compute = torch.promote_types(y.dtype, torch.float32)
        h = y.to(compute)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        h = h * self.weight.to(compute) * F.silu(z.to(compute))
        return h.to(y.dtype)


class Hydra(nn.Module):
    def __init__(self, d_model, d_state=64, d_conv=7, expand=2, headdim=64, ngroups=1,
                 chunk_size=256, dt_min=0.001, dt_max=0.1, dt_init_floor=1e-4):
        super().__init__()
        self.d_inner = expand * d_model
        assert self.d_inner % headdim == 0, "d_inner must be a multiple of headdim"
        self.d_state, self.headdim, self.ngroups = d_state, headdim, ngroups
        self.nheads = self.d_inner // headdim
        self.chunk_size = chunk_size
        conv_dim = self.d_inner + 4 * ngroups * d_state
        # in_proj output order: z | x B_f C_f B_b C_b | dt_f dt_b
        self.in_proj = nn.Linear(d_model, self.d_inner + conv_dim + 2 * self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, d_conv, groups=conv_dim, padding=d_conv // 2, bias=True)
        # Initialisation as the Hydra reference (matters for training only).
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.zeros(self.nheads))
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.fc_D = nn.Linear(self.d_inner, self.nheads, bias=False)
        self.norm = GatedRMSNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    # forward = scan_inputs → hydra_scan → scan_output; the chunked runtime (DESIGN §4) calls
    # the three on windows and carries the scan states between them.
    def scan_inputs(self, u):
        """``u (B, L, D)`` → ``(z (B,L,E), x (B,L,H,P), dt_f, dt_b (B,L,H), B_f, C_f, B_b, C_b
        (B,L,G,N))``. The depthwise conv zero-pads at the ends of ``u``: on a window, only
        positions ≥ ``d_conv//2`` away from a cut are exact."""
        bsz, seqlen, _ = u.shape
        e, n, g, h = self.d_inner, self.d_state, self.ngroups, self.nheads
        with nvtx_range("hydra.in_proj"):
            z, xbc, dt = torch.split(self.in_proj(u), [e, e + 4 * g * n, 2 * h], dim=-1)
        with nvtx_range("hydra.conv"):
            xbc = F.silu(self.conv1d(xbc.transpose(1, 2)).transpose(1, 2))
        x, b_f, c_f, b_b, c_b = torch.split(xbc, [e, g * n, g * n, g * n, g * n], dim=-1)
        groups = lambda t: t.reshape(bsz, seqlen, g, n)  # noqa: E731
        return (z, x.reshape(bsz, seqlen, h, self.headdim), dt[..., :h], dt[..., h:],
                groups(b_f), groups(c_f), groups(b_b), groups(c_b))

    def scan_A(self):
        return -torch.exp(self.A_log.float())

    def scan_output(self, y, x, z):
        """Scan output ``y (B,L,H,P)`` + D term + gated RMSNorm + out_proj → ``(B, L, D)``."""
        bsz, seqlen = y.shape[:2]
        with nvtx_range("hydra.norm_out"):
            x = x.reshape(bsz, seqlen, self.d_inner)
            # Data-dependent diagonal: d_t = fc_D·x_t + D, one value per head.
            diag = F.linear(x, self.fc_D.weight, self.D).repeat_interleave(self.headdim, dim=-1)
            y = y.reshape(bsz, seqlen, self.d_inner) + x * diag
            return self.out_proj(self.norm(y, z))

    def forward(self, u):
        """``u (B, L, D)`` → ``(B, L, D)``."""
        z, x, dt_f, dt_b, b_f, c_f, b_b, c_b = self.scan_inputs(u)
        with nvtx_range("hydra.scan"):
            y, _, _ = hydra_scan(x, dt_f, dt_b, self.scan_A(), self.dt_bias, b_f, c_f, b_b, c_b,
                                 chunk_size=self.chunk_size)
        return self.scan_output(y, x, z)
