"""``hydra_scan``: the torch op, its autograd and its dispatch to a kernel.

``hydra_scan`` validates its inputs (``validate``), handles empty inputs by the op's rule, makes
the inputs contiguous and calls the custom op ``torch.ops.hieramamba.hydra_scan`` (schema: 9
tensors, 2 optional tensors, ``int chunk_size``). The op runs a native kernel registered with
``register_kernel`` for the input's device type and dtype, else the reference. On CPU the C++
kernel of plugins/ registers itself on first use when its library is built
(``HIERAMAMBA_NATIVE_CPU=0`` keeps the reference); fp64 always runs the reference. Its autograd
recomputes through the reference.

``scan_override(fn)`` routes every ``hydra_scan`` call to ``fn`` for the duration of a block:
the exporter uses it to turn each call into a ``hieramamba::HydraScan`` ONNX node, wherever the
model calls the op from.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional

import torch
from torch import Tensor

from ...errors import InputError
from .reference import compute_dtype, hydra_scan_reference
from .validate import empty_result, is_empty, validate

# --------------------------------------------------------------------------------------------
# Native-kernel registry
# --------------------------------------------------------------------------------------------

_KERNELS: dict[str, tuple[Callable, frozenset]] = {}


def register_kernel(device_type: str, fn: Callable,
                    dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> None:
    """Plug a native HydraScan kernel in for ``device_type`` (e.g. ``"cuda"``, ``"cpu"``).

    ``fn`` takes the arguments of ``hydra_scan`` (positionally, states possibly ``None``) and
    returns the same triple. It is used when the op's input ``x`` is on ``device_type`` with a
    dtype in ``dtypes``; anything else falls back to the reference. The choice is made when the op
    runs, so it is never baked into an exported program. Gradients are always recomputed by the
    reference. Registering again replaces the previous kernel.
    """
    if not callable(fn):
        raise InputError(f"register_kernel: fn must be callable, got {type(fn).__name__}")
    if not isinstance(device_type, str) or not device_type:
        raise InputError(f"register_kernel: device_type must be a non-empty str, got {device_type!r}")
    _KERNELS[device_type] = (fn, frozenset(dtypes))


def unregister_kernel(device_type: str) -> bool:
    """Remove the kernel for ``device_type``; returns whether one was registered."""
    return _KERNELS.pop(device_type, None) is not None


def register_native_cpu_kernel(required: bool = False) -> bool:
    """Register the C++ CPU kernel (``native.native_hydra_scan_cpu``) when its library is
    available. Returns whether it was registered; with ``required`` a missing library raises
    ``BackendUnavailableError`` instead."""
    from . import native

    if native.load_native_library(required=required) is None:
        return False
    register_kernel("cpu", native.native_hydra_scan_cpu)
    return True


def register_native_cuda_kernel(required: bool = False) -> bool:
    """Register the CUDA kernel (``native.native_hydra_scan_cuda``) for CUDA tensors (opt-in:
    not yet validated on a GPU, see plugins/hydra_scan/README.md). Returns whether it was
    registered."""
    from ...errors import BackendUnavailableError
    from . import native

    lib = native.load_native_library(required=required)
    if lib is None or not lib.hm_has_cuda():
        if required:
            raise BackendUnavailableError(
                f"the native library has no CUDA kernel; rebuild with nvcc on PATH: {native.BUILD_COMMAND}")
        return False
    register_kernel("cuda", native.native_hydra_scan_cuda)
    return True


_NATIVE_CPU_ENV = "HIERAMAMBA_NATIVE_CPU"
_native_cpu_tried = False


def _maybe_register_native_cpu() -> None:
    """Use the C++ CPU kernel (plugins/) when its library is built, unless
    ``HIERAMAMBA_NATIVE_CPU=0``. Tried once per process, on the first CPU call; it agrees with the
    reference to fp32 rounding (tests/test_native_scan.py) and is several times faster."""
    global _native_cpu_tried
    if _native_cpu_tried:
        return
    _native_cpu_tried = True
    if os.environ.get(_NATIVE_CPU_ENV, "1") == "0" or "cpu" in _KERNELS:
        return
    register_native_cpu_kernel(required=False)


def _select_impl(x: Tensor) -> Callable:
    if x.device.type == "cpu":
        _maybe_register_native_cpu()
    entry = _KERNELS.get(x.device.type)
    if entry is not None and x.dtype in entry[1]:
        return entry[0]
    return hydra_scan_reference


# --------------------------------------------------------------------------------------------
# The custom op
# --------------------------------------------------------------------------------------------

# device_types=None registers the body as the default (CompositeExplicitAutograd) kernel for every
# device: the reference is device-agnostic torch code, so one registration serves CPU, CUDA, ...
# Native kernels go through the Python registry above instead of per-device torch.library impls,
# because a per-device impl would replace the reference for every dtype on that device, while the
# registry can fall back per dtype (e.g. fp64 on CUDA).
@torch.library.custom_op("hieramamba::hydra_scan", mutates_args=())
def _hydra_scan_op(
    x: Tensor,
    dt_f: Tensor,
    dt_b: Tensor,
    A: Tensor,
    dt_bias: Tensor,
    B_f: Tensor,
    C_f: Tensor,
    B_b: Tensor,
    C_b: Tensor,
    state_f0: Optional[Tensor],
    state_b0: Optional[Tensor],
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor]:
    fn = _select_impl(x)
    with torch.no_grad():
        y, sf, sb = fn(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, chunk_size)
    # Dense outputs for whatever consumes them (an exporter, a plugin); copies only if needed.
    return y.contiguous(), sf.contiguous(), sb.contiguous()


@_hydra_scan_op.register_fake
def _hydra_scan_fake(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, chunk_size):
    bsz, _, H, P = x.shape
    N = B_f.shape[-1]
    sd = compute_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty((bsz, H, P, N), dtype=sd), x.new_empty((bsz, H, P, N), dtype=sd)


_N_TENSOR_ARGS = 11  # everything but chunk_size


def _setup_context(ctx, inputs, output):
    ctx.chunk_size = inputs[_N_TENSOR_ARGS]
    ctx.save_for_backward(*inputs[:_N_TENSOR_ARGS])  # None states are saved as None


def _backward(ctx, grad_y, grad_sf, grad_sb):
    # Recompute through the differentiable reference (also when a native kernel ran forward).
    # First-order only: the returned gradients carry no graph.
    saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[:_N_TENSOR_ARGS]
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(bool(need)) for t, need in zip(saved, needs)]
        outs = hydra_scan_reference(*leaves, chunk_size=ctx.chunk_size)
        pairs = [(o, g) for o, g in zip(outs, (grad_y, grad_sf, grad_sb)) if g is not None]
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = iter(
            torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
            if wanted and pairs else [None] * len(wanted))
    result = [next(grads) if (t is not None and t.requires_grad) else None for t in leaves]
    return (*result, None)


_hydra_scan_op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------

_override: Optional[Callable] = None


@contextlib.contextmanager
def scan_override(fn: Callable):
    """Within this block every ``hydra_scan`` call goes to ``fn`` (same arguments), before any
    validation: the exporter's symbolic node runs on traced values."""
    global _override
    previous, _override = _override, fn
    try:
        yield
    finally:
        _override = previous


def hydra_scan(
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
    """Hydra's bidirectional shifted SSD scan (``reference`` has the math and the chunk contract).

    x [B,L,H,P]; dt_f, dt_b [B,L,H] raw (before softplus); A [H] (negative); dt_bias [H];
    B_f, C_f, B_b, C_b [B,L,G,N] with H % G == 0; state_f0 / state_b0 [B,H,P,N] optional (zero).
    x, B, C: float32/float16/bfloat16/float64 (all the same); dt, A, dt_bias: float32 or x's dtype;
    states: float32 or the compute dtype. Non-contiguous inputs are made contiguous. B = 0 or
    L = 0 returns an empty y and the initial states (``validate``).
    Returns (y [B,L,H,P] in x's dtype, state_f = S^f_{L-1}, state_b = S^b_0), the states in fp32
    (fp64 for fp64 x). Raises ``InputError`` on bad shapes, dtypes or devices.
    """
    if _override is not None:
        return _override(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, chunk_size)
    validate(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, chunk_size)
    if is_empty(x):
        return empty_result(x, B_f, state_f0, state_b0)

    def c(t):
        return None if t is None else t.contiguous()

    return _hydra_scan_op(c(x), c(dt_f), c(dt_b), c(A), c(dt_bias), c(B_f), c(C_f), c(B_b), c(C_b),
                          c(state_f0), c(state_b0), int(chunk_size))
