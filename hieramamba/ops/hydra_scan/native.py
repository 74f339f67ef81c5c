"""Native HydraScan kernels for torch tensors, through the C ABI of ``libhieramamba_plugins``
(``plugins/``; found and loaded by ``hieramamba.native_library``, which says where it looks).
A leaf: it registers nothing (the op's dispatch does, ``op.register_native_cpu_kernel``).

``native_hydra_scan_cpu`` has the calling convention of a kernel for ``register_kernel("cpu", fn)``::

    fn(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0[, chunk_size])
        -> (y in x's dtype, state_f fp32, state_b fp32)

``native_hydra_scan_cuda`` wraps the CUDA kernel (``hm_hydra_scan_cuda``) the same way, on torch's
current stream; ``cuda_scan_plan`` reports how the CUDA kernel would run a shape (host-side).
"""

from __future__ import annotations

import ctypes
from typing import Optional

from ...errors import BackendUnavailableError, HieraMambaError, InputError
from ...native_library import (  # noqa: F401  (re-exported: this module's public names)
    ABI_VERSION,
    BUILD_COMMAND,
    LIBRARY_ENV,
    _HmScanShape,
    library_candidates,
    loaded_library_path,
    load_native_library,
    native_library_info,
)

TILES_PER_CHUNK_ENV = "HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK"  # plugins/hydra_scan/hydraScanKernel.h

__all__ = [
    "ABI_VERSION",
    "LIBRARY_ENV",
    "BUILD_COMMAND",
    "library_candidates",
    "load_native_library",
    "native_library_info",
    "native_hydra_scan_cpu",
    "native_hydra_scan_cuda",
    "cuda_scan_plan",
    "TILES_PER_CHUNK_ENV",
]

# Return codes of the C ABI (plugins/hydra_scan/hydraScanKernel.h).
_HM_OK, _HM_ERR_INVALID_ARGUMENT, _HM_ERR_UNSUPPORTED, _HM_ERR_RUNTIME = 0, 1, 2, 3
_ERR_LEN = 1024


def _raise_for(code: int, err: ctypes.Array) -> None:
    message = err.value.decode(errors="replace") or f"error code {code}"
    if code == _HM_ERR_INVALID_ARGUMENT:
        raise InputError(message)
    if code == _HM_ERR_UNSUPPORTED:
        raise BackendUnavailableError(message)
    raise HieraMambaError(message)


def _prepare_call(fn_name, device_type, x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
                  state_f0, state_b0):
    """Check the tensors of a native call (the op's validator, plus what the C ABI needs:
    contiguous tensors on one device of ``device_type``, fp32 states); returns ``(shape, dtype
    code, dt dtype code, params [dt_f, dt_b, A, dt_bias] as passed to C, y, state_f, state_b)``."""
    import torch  # deferred: loading the library must not require torch

    from .validate import validate

    dtype_codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    named = {"x": x, "dt_f": dt_f, "dt_b": dt_b, "A": A, "dt_bias": dt_bias,
             "B_f": B_f, "C_f": C_f, "B_b": B_b, "C_b": C_b, "state_f0": state_f0, "state_b0": state_b0}
    for name, t in named.items():
        if t is None and name.startswith("state"):
            continue
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{fn_name}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != device_type or t.device != x.device:
            where = "the CPU" if device_type == "cpu" else f"x's CUDA device ({x.device})"
            raise InputError(f"{fn_name}: {name} must be on {where}, got {t.device}")
        if not t.is_contiguous():
            raise InputError(f"{fn_name}: {name} must be contiguous (call .contiguous()), "
                             f"got strides {t.stride()} for shape {list(t.shape)}")
    validate(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, where=fn_name,
             dtypes=tuple(dtype_codes))
    bsz, L, H, P = x.shape
    G, N = B_f.shape[2], B_f.shape[3]
    params = [dt_f, dt_b, A, dt_bias]
    dts = {t.dtype for t in params}
    if len(dts) == 1:
        dt_dtype = next(iter(dts))
    else:  # fp32 and x's dtype mixed: fp32 holds every fp16/bf16 value exactly
        params = [t.to(torch.float32) for t in params]
        dt_dtype = torch.float32

    y = torch.empty_like(x)
    state_f = x.new_empty((bsz, H, P, N), dtype=torch.float32)
    state_b = x.new_empty((bsz, H, P, N), dtype=torch.float32)
    shape = _HmScanShape(bsz, L, H, P, G, N)
    return shape, dtype_codes[x.dtype], dtype_codes[dt_dtype], params, y, state_f, state_b


def _ptr(t):
    return None if t is None else t.data_ptr()


def native_hydra_scan_cpu(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
                          state_f0=None, state_b0=None, chunk_size: int = 256,
                          num_threads: Optional[int] = None):
    """HydraScan on CPU tensors with the C++ kernel; returns ``(y, state_f, state_b)``.

    Shapes: ``x [B,L,H,P]``, ``dt_f, dt_b [B,L,H]``, ``A, dt_bias [H]``, ``B_f, C_f, B_b, C_b
    [B,L,G,N]`` (G divides H), optional ``state_f0, state_b0 [B,H,P,N]`` float32. ``x`` and the B/C
    tensors share one dtype (float32, float16 or bfloat16); ``y`` comes back in it, the states in
    float32. ``dt_f, dt_b, A, dt_bias`` are passed as they are when all four are float32 or all
    have x's dtype, otherwise they are converted to float32 (all math is fp32 anyway).
    ``chunk_size`` is accepted for the op's calling convention; the CPU kernel runs the recurrence
    and does not need it. ``num_threads`` defaults to ``torch.get_num_threads()``.
    Every tensor must be a contiguous CPU tensor; violations raise ``InputError``.
    """
    import torch

    lib = load_native_library(required=True)
    shape, dtype, dt_dtype, params, y, state_f, state_b = _prepare_call(
        "native_hydra_scan_cpu", "cpu", x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
        state_f0, state_b0)
    err = ctypes.create_string_buffer(_ERR_LEN)
    threads = int(num_threads) if num_threads is not None else torch.get_num_threads()
    code = lib.hm_hydra_scan_cpu(
        ctypes.byref(shape), dtype, dt_dtype, _ptr(x), *[_ptr(t) for t in params],
        _ptr(B_f), _ptr(C_f), _ptr(B_b), _ptr(C_b), _ptr(state_f0), _ptr(state_b0),
        _ptr(y), _ptr(state_f), _ptr(state_b), threads, err, _ERR_LEN)
    if code != _HM_OK:
        _raise_for(code, err)
    return y, state_f, state_b


def native_hydra_scan_cuda(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
                           state_f0=None, state_b0=None, chunk_size: int = 256):
    """HydraScan on CUDA tensors with the chunked CUDA kernel (both directions in each of its three
    launches), enqueued on torch's current stream; same contract as :func:`native_hydra_scan_cpu`.
    ``chunk_size`` is accepted for the calling convention: the kernel picks its own chunk length
    (16-64 steps, from its shared-memory plan), which changes results only by rounding. The
    workspace (per-chunk fp32 states) comes from torch's allocator. Raises
    ``BackendUnavailableError`` when the library was built without CUDA."""
    import torch

    lib = load_native_library(required=True)
    if not lib.hm_has_cuda():
        raise BackendUnavailableError(
            f"{loaded_library_path()} was built without the CUDA kernel (no nvcc at configure time); rebuild "
            f"with nvcc on PATH: {BUILD_COMMAND}")
    shape, dtype, dt_dtype, params, y, state_f, state_b = _prepare_call(
        "native_hydra_scan_cuda", "cuda", x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
        state_f0, state_b0)
    ws_bytes = int(lib.hm_hydra_scan_workspace_size(ctypes.byref(shape), dtype))
    workspace = torch.empty(ws_bytes, dtype=torch.uint8, device=x.device) if ws_bytes else None
    stream = torch.cuda.current_stream(x.device).cuda_stream
    err = ctypes.create_string_buffer(_ERR_LEN)
    with torch.cuda.device(x.device):  # the launch goes to the current device: make it x's
        code = lib.hm_hydra_scan_cuda(
            ctypes.byref(shape), dtype, dt_dtype, _ptr(x), *[_ptr(t) for t in params],
            _ptr(B_f), _ptr(C_f), _ptr(B_b), _ptr(C_b), _ptr(state_f0), _ptr(state_b0),
            _ptr(y), _ptr(state_f), _ptr(state_b), _ptr(workspace), ws_bytes, stream, err, _ERR_LEN)
    if code != _HM_OK:
        _raise_for(code, err)
    return y, state_f, state_b


def cuda_scan_plan(batch: int, length: int, heads: int, headdim: int, groups: int, dstate: int,
                   dtype) -> dict:
    """How the CUDA kernel would run this shape (planned on the host: no GPU needed):
    ``{"tile": steps per block tile, "chunk": steps per state chunk, "tensor_cores": bool,
    "workspace_bytes": int}``. ``dtype`` is x's torch dtype; ``chunk`` follows
    ``$HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK`` (1, 2 or 4 tiles; default 1); ``workspace_bytes`` does
    not depend on that setting (an engine built with one runs with any other). Raises ``InputError``
    for a bad shape or dtype and ``BackendUnavailableError`` when the CUDA kernel cannot run the
    shape or the setting is invalid (the message says why)."""
    import torch

    codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
    if dtype not in codes:
        raise InputError(f"cuda_scan_plan: dtype must be float32, float16 or bfloat16, got {dtype}")
    lib = load_native_library(required=True)
    shape = _HmScanShape(batch, length, heads, headdim, groups, dstate)
    tile, chunk, tensor_cores, workspace = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    err = ctypes.create_string_buffer(_ERR_LEN)
    code = lib.hm_hydra_scan_cuda_plan(ctypes.byref(shape), codes[dtype], ctypes.byref(tile), ctypes.byref(chunk),
                                       ctypes.byref(tensor_cores), ctypes.byref(workspace), err, _ERR_LEN)
    if code != _HM_OK:
        _raise_for(code, err)
    return {"tile": tile.value, "chunk": chunk.value, "tensor_cores": bool(tensor_cores.value),
            "workspace_bytes": workspace.value}
