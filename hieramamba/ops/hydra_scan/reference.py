"""The HydraScan math, written once (DESIGN §2, REFERENCE §7): the pure-PyTorch chunked SSD
reference and the boundary terms of the one-step shift for chunked callers.

Per head ``h`` (state ``S ∈ R^{P×N}``)::

    Δ_t  = softplus(dt_t + dt_bias_h)      (torch softplus, threshold 20: identity above 20)
    a_t  = exp(Δ_t · A_h)                    (A_h < 0, i.e. A = -exp(A_log))
    fwd: S^f_t = a^f_t S^f_{t-1} + Δ^f_t · x_t ⊗ B^f_t, s^f_t = S^f_t · C^f_t (S^f_{-1} = state_f0)
    bwd: S^b_t = a^b_t S^b_{t+1} + Δ^b_t · x_t ⊗ B^b_t, s^b_t = S^b_t · C^b_t (S^b_L = state_b0)
    y[t] = s^f_{t-1} (0 at t = 0)  +  s^b_{t+1} (0 at t = L-1)

Head ``h`` reads group ``h // (H // G)`` of ``B_*``/``C_*``. There is no D/skip term (the module
adds it). Returned states: ``state_f = S^f_{L-1}`` and ``state_b = S^b_0``.

Precision: Δ, A·Δ, their segment sums, exponentials and states are fp32 (fp64 when ``x`` is fp64),
whatever the input dtype; ``y`` comes back in ``x``'s dtype, the states in that compute dtype.

Chunked callers — the boundary term of the one-step shift
---------------------------------------------------------
Split the time axis into pieces ``[.., m)`` and ``[m, ..)``. Carrying states makes every
position exact except the two positions next to the cut, because the shift makes ``y`` at the
first position of a piece read ``C`` from the *previous* piece, and ``y`` at the last position read
``C`` from the *next* piece; the op only ever sees its own piece, so it zero-fills them.
The caller adds them back (``add_boundary_terms`` does both)::

    right piece:  state_f0 = state_f of the left piece
                  y_right[:, 0] += scan_boundary_term(state_f(left), C_f_left[:, -1])
    left piece:   state_b0 = state_b of the right piece
                  y_left[:, -1] += scan_boundary_term(state_b(right), C_b_right[:, 0])

With these additions the pieces reproduce the whole-sequence scan up to rounding (tested).
Note the data flow: the right piece needs the left piece's forward state and the left piece needs
the right piece's backward state; ``state_b`` of a piece depends only on that piece and its own
``state_b0`` (``state_f`` likewise only on ``state_f0``), so a two-pass schedule (right→left for
backward states, then left→right) is exact.

The reference
-------------
``hydra_scan_reference`` is the differentiable pure-PyTorch chunked SSD (within-chunk quadratic
form with stable segment sums, between-chunk state passing). It runs on any device, in fp64, and
under ``torch.export`` with dynamic batch and length (no ``.item()``, no data-dependent Python
values, no in-place writes on inputs). The backward direction uses reverse-time segment sums
(transposed decay matrices), no flipped copies. ``chunk_size`` only affects rounding: eagerly the
chunk is ``min(chunk_size, L)``; when traced with a symbolic L it is ``min(chunk_size,
TRACED_CHUNK_SIZE)`` and one spare all-zero chunk is added (keeps the chunk count ≥ 2, see the
code). The traced cap exists because a traced graph cannot shrink its chunk for short sequences:
with 256 every level of an exported model, even one of 3 steps, paid 256×256 intra-chunk
products (64 was 9× faster at L=27 and no slower at long L in ONNX Runtime; docs/export.md).
The float64 oracle the tests compare every implementation with is the plain recurrence above
(``tests/scan_oracle.py``), not this code.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...errors import InputError


def compute_dtype(x_dtype: torch.dtype) -> torch.dtype:
    # Never below fp32; fp64 stays fp64 so the reference can be checked to ~1e-12.
    return torch.float64 if x_dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Pure-PyTorch chunked reference
# --------------------------------------------------------------------------------------------


def _segsum(a: Tensor) -> Tensor:
    """``a [..., T] -> [..., T, T]``: ``out[i, j] = Σ_{r=j+1..i} a_r`` (i ≥ j), ``-inf`` above.

    Built by cumsum of a masked copy rather than differences of one cumsum, so every entry is an
    exact segment sum (no cancellation between large prefix sums).
    """
    T = a.shape[-1]
    # Triangle masks from index comparisons (cheap; fine with a symbolic T).
    idx = torch.arange(T, device=a.device)
    below = idx.unsqueeze(-1) > idx  # [i, j]: i > j
    x = a.unsqueeze(-1).expand(*a.shape, T)  # x[..., i, j] = a_i
    x = x.masked_fill(~below, 0.0)  # keep a_i only for i > j
    s = torch.cumsum(x, dim=-2)
    return s.masked_fill(idx.unsqueeze(-1) < idx, float("-inf"))  # i < j: unreachable


def _ssd_direction(X: Tensor, a: Tensor, Bm: Tensor, Cm: Tensor, S0: Tensor, reverse: bool):
    """One direction of the (unshifted) chunked SSD scan.

    X [b,c,l,g,r,p] = Δ·x;  a [b,g,r,c,l] = Δ·A;  Bm, Cm [b,c,l,g,n];  S0 [b,g,r,p,n] incoming state
    (from the left when forward, from the right when reverse).
    Returns s [b,c,l,g,r,p] (s_t = S_t·C_t) and the outgoing state [b,g,r,p,n].
    """
    if not reverse:
        # M[t, s] = exp(Σ_{r=s+1..t} a_r) for t ≥ s: how x_s reaches S_t.
        M = torch.exp(_segsum(a))
        w_state = M[..., -1, :]  # x_s -> state at the chunk's right edge
        w_out = M[..., :, 0] * torch.exp(a[..., :1])  # exp(Σ_{r=0..t} a_r): incoming state -> S_t
    else:
        # M[t, s] = exp(Σ_{r=t..s-1} a_r) for s ≥ t. With a'_r = a_{r-1} that is segsum(a')[s, t],
        # so the reverse-time matrix is a transpose: no flipped copies of the inputs.
        a_shift = F.pad(a[..., :-1], (1, 0))
        M = torch.exp(_segsum(a_shift)).transpose(-1, -2)
        w_state = M[..., 0, :]  # x_s -> state at the chunk's left edge
        w_out = M[..., :, -1] * torch.exp(a[..., -1:])  # exp(Σ_{r=t..l-1} a_r)

    # Written as broadcasts + batched matmuls, not einsum: ONNX Runtime's CPU Einsum took 13 of
    # the 17 ms of a small scan (3-operand equations); matmuls are what every backend does well.
    # Layouts: Xh [b,c,g,r,s,p] (time s), Bh/Ch [b,c,g,l,n], Mh [b,c,g,r,l,s].
    Xh = X.permute(0, 1, 3, 4, 2, 5)
    Bh = Bm.permute(0, 1, 3, 2, 4)
    Ch = Cm.permute(0, 1, 3, 2, 4)
    Mh = M.permute(0, 3, 1, 2, 4, 5)

    # Within-chunk (quadratic, attention-like) part: (C·Bᵀ ∘ M) X. C·Bᵀ is per group, M per head.
    CB = (Ch @ Bh.transpose(-1, -2)).unsqueeze(3)  # [b,c,g,1,l,s]
    y_diag = (CB * Mh) @ Xh  # [b,c,g,r,l,p]

    # Each chunk's own contribution to the state at its outgoing edge: Σ_s w_s x_s ⊗ B_s.
    ws = w_state.permute(0, 3, 1, 2, 4).unsqueeze(-1)  # [b,c,g,r,s,1]
    local = (Xh * ws).transpose(-1, -2) @ Bh.unsqueeze(3)  # [b,c,g,r,p,n]

    # Between chunks: the same segment-sum trick over chunk totals (nc+1 entries with the
    # incoming state as an extra slot). Forward uses D, reverse its transpose.
    tot = a.sum(-1)  # [b,g,r,c]
    D = torch.exp(_segsum(F.pad(tot, (1, 0))))  # [b,g,r,c+1,c+1]
    if reverse:
        D = D.transpose(-1, -2)
    bsz, nc, G, R, P, N = local.shape
    slot0 = S0.unsqueeze(1)
    st = torch.cat([local, slot0] if reverse else [slot0, local], dim=1)  # [b,c+1,g,r,p,n]
    st = st.permute(0, 2, 3, 1, 4, 5).reshape(bsz, G, R, nc + 1, P * N)
    new = (D @ st).reshape(bsz, G, R, nc + 1, P, N).permute(0, 3, 1, 2, 4, 5)  # [b,c+1,g,r,p,n]
    if not reverse:
        S_in, S_out = new[:, :-1], new[:, -1]
    else:
        S_in, S_out = new[:, 1:], new[:, 0]

    # Contribution of the state entering each chunk: w_out,t · (S_in · C_t).
    wo = w_out.permute(0, 3, 1, 2, 4).unsqueeze(-1)  # [b,c,g,r,l,1]
    y_off = (Ch.unsqueeze(3) @ S_in.transpose(-1, -2)) * wo  # [b,c,g,r,l,p]
    return (y_diag + y_off).permute(0, 1, 4, 2, 3, 5), S_out


TRACED_CHUNK_SIZE = 64  # chunk of the reference when traced with a symbolic length (ONNX bodies)


def hydra_scan_reference(
    x: Tensor,
    dt_f: Tensor,
    dt_b: Tensor,
    A: Tensor,
    dt_bias: Tensor,
    B_f: Tensor,
    C_f: Tensor,
    B_b: Tensor,
    C_b: Tensor,
    state_f0: Optional[Tensor] = None,
    state_b0: Optional[Tensor] = None,
    chunk_size: int = 256,
) -> tuple[Tensor, Tensor, Tensor]:
    """Differentiable pure-PyTorch HydraScan (see module docstring). No input validation."""
    bsz, L, H, P = x.shape
    G, N = B_f.shape[2], B_f.shape[3]
    R = H // G
    Q = int(chunk_size)
    cd = compute_dtype(x.dtype)

    # Equal lengths/batches stated up front, so torch.export can merge the per-input symbols
    # before any shape arithmetic (no-ops in eager).
    for t in (dt_f, dt_b, B_f, C_f, B_b, C_b):
        torch._check(t.shape[0] == bsz)
        torch._check(t.shape[1] == L)

    # Time layout: L rows, then zero rows up to nc·Q (chunks of Q rows). Padded rows have Δ = 0
    # exactly (masked after softplus) and zero x, B, C: no input and decay exp(0) = 1, so they
    # leave every state untouched.
    # Rows are moved with index_select and masks instead of pad/slice, whose bounds checks would
    # need floor arithmetic that torch.export cannot prove.
    if isinstance(L, torch.SymInt):
        # Tracing (torch.export): one floor division with nc ≥ 2 always (one spare zero chunk),
        # so there is no 0/1 specialisation of nc; one exported program serves every L.
        Q = min(Q, TRACED_CHUNK_SIZE)
        nc = (L + 2 * Q - 1) // Q
    else:
        # Eager: L is known, so use the fewest chunks and no chunk longer than L. Only rounding
        # differs from the traced layout (zero rows contribute exact zeros).
        Q = max(1, min(Q, L))
        nc = (L + Q - 1) // Q
    pos = torch.arange(nc * Q, device=x.device)  # time index of each padded row
    valid = pos < L
    src = torch.where(valid, pos, 0)

    def padded(t: Tensor) -> Tensor:  # [b, L, ...] -> [b, nc, Q, ...], zero rows outside [0, L)
        t = t.to(cd).index_select(1, src)
        t = torch.where(valid.view(1, -1, *([1] * (t.dim() - 2))), t, 0.0)
        return t.reshape(bsz, -1, Q, *t.shape[2:])

    def delta(dt: Tensor) -> Tensor:  # -> [b, nc, Q, G, R]
        d = F.softplus(dt.to(cd) + dt_bias.to(cd))  # threshold 20, as mamba's kernels
        return padded(d).reshape(bsz, -1, Q, G, R)

    xc = padded(x).reshape(bsz, -1, Q, G, R, P)
    A_ = A.to(cd).reshape(G, R)

    def zeros_or(state: Optional[Tensor]) -> Tensor:
        if state is None:
            return x.new_zeros((bsz, G, R, P, N), dtype=cd)
        return state.to(cd).reshape(bsz, G, R, P, N)

    outs = []
    for dt, Bm, Cm, S0, reverse in (
        (dt_f, B_f, C_f, state_f0, False),
        (dt_b, B_b, C_b, state_b0, True),
    ):
        d = delta(dt)  # [b,c,l,g,r]
        X = xc * d.unsqueeze(-1)
        a = (d * A_).permute(0, 3, 4, 1, 2)  # [b,g,r,c,l]
        s, S = _ssd_direction(X, a, padded(Bm), padded(Cm), zeros_or(S0), reverse)
        outs.append((s.reshape(bsz, -1, H, P), S.reshape(bsz, H, P, N)))
    (s_f, state_f), (s_b, state_b) = outs

    # One-step shift, zero-filled: y_fw[t] = s^f_{t-1} (t ≥ 1), y_bw[t] = s^b_{t+1} (t ≤ L-2).
    t = torch.arange(L, device=x.device)
    has_prev, has_next = (t >= 1).view(1, -1, 1, 1), (t < L - 1).view(1, -1, 1, 1)
    y_fw = torch.where(has_prev, s_f.index_select(1, torch.where(t >= 1, t - 1, 0)), 0.0)
    y_bw = torch.where(has_next, s_b.index_select(1, torch.where(t < L - 1, t + 1, 0)), 0.0)
    y = (y_fw + y_bw).to(x.dtype)
    return y, state_f.contiguous(), state_b.contiguous()


def scan_boundary_term(state: Tensor, C_row: Tensor) -> Tensor:
    """Boundary term of the one-step shift for chunked callers (see module docstring).

    ``state [B,H,P,N]`` (a piece's ``state_f`` or ``state_b``), ``C_row [B,G,N]`` (the neighbouring
    piece's last ``C_f`` row, resp. first ``C_b`` row) -> ``state · C_row`` as ``[B,H,P]``, in the
    promoted dtype of both (at least fp32); cast it when adding to a lower-precision ``y``.
    """
    if not isinstance(state, Tensor) or state.dim() != 4:
        raise InputError(f"scan_boundary_term: state must be a 4-D tensor [B, H, P, N], got "
                         f"{describe(state)}")
    if not isinstance(C_row, Tensor) or C_row.dim() != 3:
        raise InputError(f"scan_boundary_term: C_row must be a 3-D tensor [B, G, N], got "
                         f"{describe(C_row)}")
    bsz, H, P, N = state.shape
    G = C_row.shape[1]
    if C_row.shape[0] != bsz or C_row.shape[2] != N or G == 0 or H % G != 0:
        raise InputError(
            f"scan_boundary_term: C_row must have shape [B={bsz}, G, N={N}] with H={H} divisible "
            f"by G, got {list(C_row.shape)}")
    if C_row.device != state.device:
        raise InputError(f"scan_boundary_term: C_row is on {C_row.device}, state on {state.device}")
    cd = torch.promote_types(torch.promote_types(state.dtype, C_row.dtype), torch.float32)
    s = state.to(cd).reshape(bsz, G, H // G, P, N)
    return torch.einsum("bgrpn,bgn->bgrp", s, C_row.to(cd)).reshape(bsz, H, P)


# --------------------------------------------------------------------------------------------
# Native-kernel registry


def add_boundary_terms(y: Tensor, state_f0: Tensor, c_f_prev: Tensor, state_b0: Tensor,
                       c_b_next: Tensor) -> Tensor:
    """``y (B, L, H, P)`` of one piece plus both boundary terms of the one-step shift: the
    carried forward state read by the previous piece's last ``C_f`` row at position 0, and the
    backward state read by the next piece's first ``C_b`` row at position L-1. Zero states
    (sequence ends) add exact zeros. Returned in ``y``'s dtype (the sum in fp32)."""
    first = scan_boundary_term(state_f0, c_f_prev)
    last = scan_boundary_term(state_b0, c_b_next)
    n = y.shape[1]
    add = F.pad(first[:, None], (0, 0, 0, 0, 0, n - 1)) + F.pad(last[:, None], (0, 0, 0, 0, n - 1, 0))
    return (y.to(add.dtype) + add).to(y.dtype)


def describe(t) -> str:
    if isinstance(t, Tensor):
        return f"tensor of shape {list(t.shape)}, dtype {t.dtype}, device {t.device}"
    return f"{type(t).__name__}"
