"""The one input check of HydraScan and its empty-input rule (DESIGN §2), shared by the op and
the native-kernel wrappers.

Shapes: ``x [B,L,H,P]``; ``dt_f, dt_b [B,L,H]``; ``A, dt_bias [H]``; ``B_f, C_f, B_b, C_b
[B,L,G,N]`` with ``H % G == 0``; optional ``state_f0, state_b0 [B,H,P,N]``. ``x`` and the B/C
tensors share one dtype (float32/float16/bfloat16, or float64 for the reference); ``dt_f, dt_b,
A, dt_bias`` are float32 or x's dtype; states float32 or the compute dtype.

Empty inputs: ``B = 0`` and ``L = 0`` are valid, as in the C++/CUDA kernels and the TensorRT
plugin; ``H, P, G, N`` must be ≥ 1. With ``L = 0`` the op returns an empty ``y`` and the initial
states (zeros when none are given): nothing was scanned.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...errors import InputError
from .reference import compute_dtype, describe

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def validate(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0=None, state_b0=None,
             chunk_size: int = 256, where: str = "hydra_scan", dtypes=FLOAT_DTYPES) -> None:
    """``InputError`` naming the argument, the expected and the actual value, for anything the
    op's contract does not allow. ``where``: the function name the message starts with;
    ``dtypes``: the x dtypes this caller accepts."""
    def need_tensor(name, t, ndim, layout):
        if not isinstance(t, Tensor):
            raise InputError(f"{where}: {name} must be a tensor {layout}, got {describe(t)}")
        if t.dim() != ndim:
            raise InputError(f"{where}: {name} must be {ndim}-D {layout}, got shape {list(t.shape)}")

    def need_shape(name, t, layout, expected):
        if tuple(t.shape) != tuple(expected):
            raise InputError(f"{where}: {name} must have shape {layout} = {list(expected)}, got {list(t.shape)}")

    need_tensor("x", x, 4, "[B, L, H, P]")
    if x.dtype not in dtypes:
        raise InputError(f"{where}: x must be {'/'.join(str(d).replace('torch.', '') for d in dtypes)}, "
                         f"got {x.dtype}")
    bsz, L, H, P = x.shape
    if H == 0 or P == 0:
        raise InputError(f"{where}: x [B, L, H, P] needs H ≥ 1 and P ≥ 1, got {list(x.shape)}")

    need_tensor("B_f", B_f, 4, "[B, L, G, N]")
    G, N = B_f.shape[2], B_f.shape[3]
    if G == 0 or N == 0:
        raise InputError(f"{where}: B_f [B, L, G, N] needs G ≥ 1 and N ≥ 1, got {list(B_f.shape)}")
    if H % G != 0:
        raise InputError(f"{where}: number of heads H={H} (x.shape[2]) must be divisible by "
                         f"the number of groups G={G} (B_f.shape[2])")
    for name, t in (("B_f", B_f), ("C_f", C_f), ("B_b", B_b), ("C_b", C_b)):
        need_tensor(name, t, 4, "[B, L, G, N]")
        need_shape(name, t, "[B, L, G, N]", (bsz, L, G, N))
        if t.dtype != x.dtype:
            raise InputError(f"{where}: {name} must have x's dtype {x.dtype}, got {t.dtype}")

    param_dtypes = {torch.float32, x.dtype}
    allowed = " or ".join(sorted(str(d) for d in param_dtypes))
    for name, t, ndim, layout, shape in (
        ("dt_f", dt_f, 3, "[B, L, H]", (bsz, L, H)),
        ("dt_b", dt_b, 3, "[B, L, H]", (bsz, L, H)),
        ("A", A, 1, "[H]", (H,)),
        ("dt_bias", dt_bias, 1, "[H]", (H,)),
    ):
        need_tensor(name, t, ndim, layout)
        need_shape(name, t, layout, shape)
        if t.dtype not in param_dtypes:
            raise InputError(f"{where}: {name} must have dtype {allowed}, got {t.dtype}")

    state_dtypes = {torch.float32, compute_dtype(x.dtype)}
    allowed = " or ".join(sorted(str(d) for d in state_dtypes))
    for name, t in (("state_f0", state_f0), ("state_b0", state_b0)):
        if t is None:
            continue
        need_tensor(name, t, 4, "[B, H, P, N]")
        need_shape(name, t, "[B, H, P, N]", (bsz, H, P, N))
        if t.dtype not in state_dtypes:
            raise InputError(f"{where}: {name} must have dtype {allowed}, got {t.dtype}")

    named = (("dt_f", dt_f), ("dt_b", dt_b), ("A", A), ("dt_bias", dt_bias), ("B_f", B_f),
             ("C_f", C_f), ("B_b", B_b), ("C_b", C_b), ("state_f0", state_f0), ("state_b0", state_b0))
    for name, t in named:
        if t is not None and t.device != x.device:
            raise InputError(f"{where}: {name} is on device {t.device}, expected x's device {x.device}")

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"{where}: chunk_size must be a positive int, got {chunk_size!r}")


def is_empty(x: Tensor) -> bool:
    return x.shape[0] == 0 or x.shape[1] == 0


def empty_result(x: Tensor, B_f: Tensor, state_f0: Optional[Tensor], state_b0: Optional[Tensor]):
    """The op's result for ``B = 0`` or ``L = 0``: empty ``y``, the initial states (or zeros)."""
    bsz, _, H, P = x.shape
    sd = compute_dtype(x.dtype)

    def state(s):
        if s is None:
            return x.new_zeros((bsz, H, P, B_f.shape[3]), dtype=sd)
        return s.to(sd).clone(memory_format=torch.contiguous_format)

    return torch.empty_like(x, memory_format=torch.contiguous_format), state(state_f0), state(state_b0)
