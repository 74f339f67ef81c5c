"""The float64 oracle of HydraScan and its test inputs, one home for every check of the op (the
Python reference and op, the C++/CUDA kernels, the ONNX Runtime kernel, benchmarks/bench_scan.py).

The oracle is the plain time loop of the recurrences in REFERENCE §7 (hieramamba/ops/hydra_scan/
reference.py states them), written with NumPy in float64, independent of every implementation::

    Δ_t = softplus(dt_t + dt_bias)   (identity above 20, as mamba's kernels)
    S^f_t = exp(Δ^f_t A) S^f_{t-1} + Δ^f_t x_t ⊗ B^f_t      y[t] += S^f_{t-1} · C^f_{t-1}
    S^b_t = exp(Δ^b_t A) S^b_{t+1} + Δ^b_t x_t ⊗ B^b_t      y[t] += S^b_{t+1} · C^b_{t+1}

Head h reads group h // (H / G).
"""

from __future__ import annotations

import numpy as np
import torch

ORDER = ("x", "dt_f", "dt_b", "A", "dt_bias", "B_f", "C_f", "B_b", "C_b", "state_f0", "state_b0")


def _f64(t):
    return None if t is None else np.asarray(t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else t,
                                             dtype=np.float64)


def oracle(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0=None, state_b0=None):
    """Naive float64 recurrences with the one-step shift. Returns numpy ``(y, S^f_{L-1}, S^b_0)``."""
    x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b = (_f64(t) for t in (x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b))
    bsz, L, H, P = x.shape
    G, N = B_f.shape[2], B_f.shape[3]
    y = np.zeros_like(x)

    def softplus(v):  # mamba's threshold: identity above 20
        return np.where(v > 20, v, np.log1p(np.exp(np.minimum(v, 20))))

    def scan(dt, Bm, Cm, S, times, shift):
        delta = softplus(dt + dt_bias)                    # [B, L, H]
        decay = np.exp(delta * A)
        Bh = np.repeat(Bm, H // G, axis=2)                 # head h reads group h // (H/G)
        Ch = np.repeat(Cm, H // G, axis=2)
        for t in times:
            u = (delta[:, t, :, None] * x[:, t])[..., None]  # [B, H, P, 1]
            S = decay[:, t, :, None, None] * S + u * Bh[:, t, :, None, :]
            if 0 <= t + shift < L:
                y[:, t + shift] += (S * Ch[:, t, :, None, :]).sum(-1)
        return S

    zeros = np.zeros((bsz, H, P, N))
    sf = scan(dt_f, B_f, C_f, zeros if state_f0 is None else _f64(state_f0), range(L), +1)
    sb = scan(dt_b, B_b, C_b, zeros if state_b0 is None else _f64(state_b0), range(L - 1, -1, -1), -1)
    return y, sf, sb


def make_inputs(bsz, L, H, P, G, N, *, seed=0, states=False, dtype=torch.float32, dt_dtype=None,
                big_dt=False, device="cpu") -> dict:
    """Random HydraScan arguments by name (``args(t)`` orders them). Mamba-like parameters: Δ0 in
    [1e-3, 1e-1] through an inverse-softplus dt_bias, A = -exp(A_log) with A_log ~ log U(1, 16); the
    last head's bias exceeds 20 to cover softplus's identity branch. ``big_dt`` adds +25 to some
    steps' dt as well. ``dtype`` is x/B/C's, ``dt_dtype`` (default fp32, or fp64 for fp64 x) dt/A/
    dt_bias's; states are in the compute dtype (fp32, or fp64 for fp64 x)."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.float64

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=wide) * scale

    delta0 = torch.exp(torch.rand(H, generator=g, dtype=wide) * (np.log(0.1) - np.log(1e-3)) + np.log(1e-3))
    dt_bias = torch.log(torch.expm1(delta0))
    dt_bias[-1] = 20.5
    A = -torch.exp(torch.rand(H, generator=g, dtype=wide) * np.log(16.0))
    A[-1] = -0.05  # Δ≈20 times a small |A|: a fast but not total decay
    dt_f, dt_b = randn(bsz, L, H, scale=0.5), randn(bsz, L, H, scale=0.5)
    if big_dt:
        dt_f[:, ::3] += 25.0
        dt_b[:, 1::4] += 25.0
    if dt_dtype is None:
        dt_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sd = torch.float64 if dtype == torch.float64 else torch.float32
    t = {"x": randn(bsz, L, H, P).to(dtype), "dt_f": dt_f.to(dt_dtype), "dt_b": dt_b.to(dt_dtype),
         "A": A.to(dt_dtype), "dt_bias": dt_bias.to(dt_dtype),
         **{k: randn(bsz, L, G, N).to(dtype) for k in ("B_f", "C_f", "B_b", "C_b")},
         "state_f0": randn(bsz, H, P, N).to(sd) if states else None,
         "state_b0": randn(bsz, H, P, N).to(sd) if states else None}
    return {k: None if v is None else v.to(device).contiguous() for k, v in t.items()}


def args(t: dict) -> list:
    return [t[k] for k in ORDER]


def rel_err(got, want) -> float:
    """``max|got − want| / max|want|`` (norm-wise; element-wise ratios blow up near zero)."""
    got, want = _f64(got), _f64(want)
    scale = np.abs(want).max() if want.size else 0.0
    return float(np.abs(got - want).max() / (scale if scale > 0 else 1.0)) if want.size else 0.0
