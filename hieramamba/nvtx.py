"""NVTX ranges for the whole project, under one domain ``hieramamba`` (REFERENCE §14, DESIGN §6).

The range primitive sits at the bottom of the package (the model, the runtime and the exporter
mark their work with it); ``hieramamba.profiling`` is the harness that switches it on and reads
what it recorded.

Call sites write ``with nvtx_range("hydra.scan"): ...``. Three modes:

- ``off`` (default): ``nvtx_range`` returns one shared do-nothing context manager. Nothing is
  imported (not ``nvtx``, not ``torch``), nothing is recorded; the cost is one function call and
  a global read (measured by :func:`measure_disabled_overhead`).
- ``nvtx``: push/pop ranges in the ``hieramamba`` domain through the ``nvtx`` package (extra
  ``[cuda]``), for Nsight Systems. Without that package the range falls back to
  ``torch.cuda.nvtx`` (default domain, names prefixed ``hieramamba:``) when CUDA is present,
  and to nothing otherwise (a warning says so once).
- ``record``: wall-clock time per range in this process (``time.perf_counter_ns``), or CUDA
  events when ``record_cuda_events`` is set and CUDA is present: the per-range breakdown without
  Nsight (``hieramamba profile --mode record``).

Switch with the environment variable ``HIERAMAMBA_NVTX`` (``1``/``nvtx``, ``record``, ``0``/
``off``; read at import) or :func:`enable` / :func:`disable` / the :func:`profiling` context.

Ranges opened with ``scope=True`` (the AMP blocks, ``amp{l}``) qualify the names of the ranges
inside them, so ``hydra.scan`` inside ``amp3`` is reported as ``amp3.hydra.scan``.

While torch traces (``torch.export``, ``torch.onnx``, ``torch.compile``) or captures a CUDA graph
an enabled range does nothing either: a graph must not contain profiler calls, and host timings
of a trace or capture mean nothing. This module never imports torch itself: it asks torch only
if torch is already loaded, so the torch-free runtime can use the same ranges.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from contextlib import contextmanager

from hieramamba.errors import ProfilingError

DOMAIN = "hieramamba"
MODES = ("off", "nvtx", "record")
ENV_VAR = "HIERAMAMBA_NVTX"

# Range names of REFERENCE §14 (``{l}`` = pyramid level). Call sites use exactly these.
AMP_RANGES = ("interleave", "hydra.in_proj", "hydra.conv", "hydra.scan", "hydra.norm_out", "gate1",
              "local_attn", "gate2", "ffn", "split")
TOP_RANGES = ("text_encode", "vid_proj", "fusion_early", "backbone.embed", "fusion_late[{l}]", "heads",
              "decode_topk", "softnms_host")
# The chunked runtime's stage calls are ``runtime.<stage>`` / ``runtime.<stage>[{l}]`` for the
# stages of ``hieramamba.stage_table`` (``stage_table.nvtx_name``).


class _NullRange:
    """The disabled range: shared, stateless, reentrant."""

    __slots__ = ()

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NULL = _NullRange()
_mode = "off"
_backend = None           # object with push(name) / pop() in ``nvtx`` mode
_recorder = None          # _Recorder in ``record`` mode
_local = threading.local()  # per-thread stack of open scope names


def _tracing() -> bool:
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        if torch.compiler.is_compiling() or torch.compiler.is_exporting():
            return True
        if torch.jit.is_tracing():
            return True
        # A CUDA graph capture (runtime/backends/cuda_graphs.py) records kernels, not time: ranges there
        # would time the capture and put CUDA events into the graph.
        if torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing():
            return True
        # Non-strict torch.export runs Python with fake tensors under a proxy mode.
        from torch.fx.experimental.proxy_tensor import get_proxy_mode

        return get_proxy_mode() is not None
    except Exception:  # an older/newer torch without one of these helpers
        return False


def _scopes() -> list:
    s = getattr(_local, "scopes", None)
    if s is None:
        s = _local.scopes = []
    return s


def _qualified(name: str) -> str:
    s = _scopes()
    return f"{s[-1]}.{name}" if s else name


# -- nvtx backends ----------------------------------------------------------------------------

class _NvtxPackage:
    """The ``nvtx`` package, one domain (its Domain API when present, else the module-level
    ``push_range(message, domain=...)``/``pop_range(domain=...)``)."""

    def __init__(self, module):
        self._module = module
        domain = getattr(module, "get_domain", None)
        self._domain = domain(DOMAIN) if domain is not None else None
        if self._domain is not None and not hasattr(self._domain, "get_event_attributes"):
            self._domain = None
        self._attrs = {}

    def push(self, name):
        if self._domain is None:
            self._module.push_range(message=name, domain=DOMAIN)
            return
        attrs = self._attrs.get(name)
        if attrs is None:
            attrs = self._attrs[name] = self._domain.get_event_attributes(message=name)
        self._domain.push_range(attrs)

    def pop(self):
        if self._domain is None:
            self._module.pop_range(domain=DOMAIN)
        else:
            self._domain.pop_range()


class _TorchCudaNvtx:
    """``torch.cuda.nvtx`` has no domains: names carry the domain as a prefix instead."""

    def __init__(self, torch_nvtx):
        self._nvtx = torch_nvtx

    def push(self, name):
        self._nvtx.range_push(f"{DOMAIN}:{name}")

    def pop(self):
        self._nvtx.range_pop()


def _load_nvtx_backend():
    try:
        import nvtx  # noqa: PLC0415  (optional, imported only when switched on)

        return _NvtxPackage(nvtx), "nvtx package, domain 'hieramamba'"
    except ImportError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return _TorchCudaNvtx(torch.cuda.nvtx), "torch.cuda.nvtx (no domain; names prefixed 'hieramamba:')"
    return None, "no NVTX backend: the 'nvtx' package is not installed and CUDA is not available"


# -- recording --------------------------------------------------------------------------------

class _Recorder:
    """Per-range durations in nanoseconds. With ``cuda_events`` each range records a pair of
    CUDA events on the current stream, resolved (one synchronize) by :meth:`durations`."""

    def __init__(self, cuda_events: bool = False):
        self.samples: dict[str, list[int]] = {}
        self.order: list[str] = []
        self._stack: list = []
        self._pending: list = []
        self._cuda = None
        if cuda_events:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available():
                self._cuda = torch.cuda

    @property
    def clock(self) -> str:
        return "cuda_events" if self._cuda is not None else "perf_counter_ns (host wall clock)"

    def push(self, name):
        if self._cuda is not None:
            ev = self._cuda.Event(enable_timing=True)
            ev.record()
            self._stack.append((name, ev))
        else:
            self._stack.append((name, time.perf_counter_ns()))

    def pop(self):
        name, start = self._stack.pop()
        if self._cuda is not None:
            end = self._cuda.Event(enable_timing=True)
            end.record()
            self._pending.append((name, start, end))
        else:
            self._add(name, time.perf_counter_ns() - start)

    def _add(self, name, ns):
        bucket = self.samples.get(name)
        if bucket is None:
            bucket = self.samples[name] = []
            self.order.append(name)
        bucket.append(int(ns))

    def durations(self) -> dict[str, list[int]]:
        if self._pending:
            self._cuda.synchronize()
            for name, start, end in self._pending:
                self._add(name, start.elapsed_time(end) * 1e6)
            self._pending.clear()
        return {k: self.samples[k] for k in self.order}


# -- the range --------------------------------------------------------------------------------

class _Range:
    __slots__ = ("name", "scope", "pushed")

    def __init__(self, name, scope):
        self.name, self.scope, self.pushed = name, scope, False

    def __enter__(self):
        if _tracing():
            return None
        full = _qualified(self.name)
        if self.scope:
            _scopes().append(full)
        if _mode == "nvtx" and _backend is not None:
            _backend.push(full)
        elif _mode == "record" and _recorder is not None:
            _recorder.push(full)
        self.pushed = True
        return None

    def __exit__(self, *exc):
        if not self.pushed:
            return False
        if _mode == "nvtx" and _backend is not None:
            _backend.pop()
        elif _mode == "record" and _recorder is not None:
            _recorder.pop()
        if self.scope:
            _scopes().pop()
        return False


def nvtx_range(name: str, scope: bool = False):
    """Context manager for one range. Disabled: the shared no-op object."""
    if _mode == "off":
        return _NULL
    return _Range(name, scope)


def annotate(name: str):
    """Decorator form of :func:`nvtx_range`; the mode is read at call time."""

    def wrap(fn):
        import functools

        @functools.wraps(fn)
        def inner(*args, **kwargs):
            with nvtx_range(name):
                return fn(*args, **kwargs)

        return inner

    return wrap


# -- switches ---------------------------------------------------------------------------------

def mode() -> str:
    return _mode


def enabled() -> bool:
    return _mode != "off"


def backend_description() -> str:
    if _mode == "nvtx":
        return _backend_note
    if _mode == "record":
        return f"record ({_recorder.clock})"
    return "off"


_backend_note = ""


def enable(new_mode: str = "nvtx", record_cuda_events: bool = False) -> None:
    """Switch ranges on: ``nvtx`` (Nsight) or ``record`` (per-range timings here)."""
    global _mode, _backend, _recorder, _backend_note
    if new_mode not in MODES:
        raise ProfilingError(f"profiling mode must be one of {MODES}, got {new_mode!r}")
    if new_mode == "off":
        disable()
        return
    if new_mode == "nvtx":
        _backend, _backend_note = _load_nvtx_backend()
        if _backend is None:
            warnings.warn(f"NVTX ranges requested but {_backend_note}; ranges are no-ops", stacklevel=2)
    else:
        _recorder = _Recorder(cuda_events=record_cuda_events)
    _mode = new_mode
    _scopes().clear()


def disable() -> None:
    global _mode, _backend, _recorder
    _mode, _backend, _recorder = "off", None, None
    _scopes().clear()


def recorded() -> dict[str, list[int]]:
    """Durations (ns) per qualified range name, in first-seen order (``record`` mode)."""
    if _recorder is None:
        raise ProfilingError("no recording: call enable('record') first")
    return _recorder.durations()


def reset_recording() -> None:
    if _recorder is not None:
        _recorder.samples.clear()
        _recorder.order.clear()
        _recorder._pending.clear()


@contextmanager
def profiling(new_mode: str = "record", record_cuda_events: bool = False):
    """Enable ranges for a block and restore the previous mode after it."""
    previous = (_mode, _backend, _recorder, _backend_note)
    enable(new_mode, record_cuda_events=record_cuda_events)
    try:
        yield
    finally:
        _restore(previous)


def _restore(state) -> None:
    global _mode, _backend, _recorder, _backend_note
    _mode, _backend, _recorder, _backend_note = state


def measure_disabled_overhead(n: int = 200_000) -> dict:
    """Cost of one ``with nvtx_range(...)`` while off, against an empty loop (ns per range)."""
    if _mode != "off":
        raise ProfilingError("measure the disabled path with profiling off")
    best_loop = best_range = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            pass
        best_loop = min(best_loop, time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            with nvtx_range("hydra.scan"):
                pass
        best_range = min(best_range, time.perf_counter_ns() - t0)
    return {"ns_per_range": (best_range - best_loop) / n, "iterations": n, "best_of": 5}


def _init_from_env() -> None:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "off", "false", "no"):
        return
    if value in ("1", "on", "true", "yes", "nvtx"):
        enable("nvtx")
    elif value == "record":
        enable("record")
    else:
        warnings.warn(f"{ENV_VAR}={value!r} is not one of 0/off, 1/nvtx, record; profiling stays off",
                      stacklevel=2)


_init_from_env()
