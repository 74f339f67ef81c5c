"""How this project runs ONNX graphs in ONNX Runtime: one set of session options for the export
checks, ``hieramamba check-onnx`` and the runtime's ONNX Runtime backend, and the choice of how
``hieramamba::HydraScan`` nodes run (the C++ kernel of ``libhieramamba_plugins`` or the node's
ONNX function body). Torch-free; ``onnxruntime`` is passed in by the caller.
"""

from __future__ import annotations

import threading

from .errors import InputError

# How ONNX Runtime runs HydraScan nodes: native kernel, function body, or native when the library
# is built.
SCAN_KERNEL_CHOICES = ("auto", "native", "graph")
DEFAULT_SCAN_KERNEL = "auto"


def ort_session_options(ort, threads=None, *, arena: bool = True, mem_pattern: bool = False,
                        spinning: bool = True, scan_kernel: str = "graph"):
    """``onnxruntime.SessionOptions`` as this project runs its graphs. ``threads``: intra-op
    threads (None: ORT's default, one per physical core); ``arena``: the CPU memory arena;
    ``mem_pattern``: ORT plans one block for all of a run's intermediates per input shape — off
    by default: the whole-model MAD graph (8192 clips, 2 threads) peaked at 1282 MB (1 query) /
    3797 MB (4 queries) with it and 856 / 2112 MB without, at equal latency (docs/export.md);
    ``spinning``: idle intra-op threads spin (see ``OrtBackend``); ``scan_kernel``: how
    ``hieramamba::HydraScan`` nodes run — ``"graph"``: their ONNX function body, op by op;
    ``"native"``: the C++ kernel of ``libhieramamba_plugins`` (required; same results, faster,
    docs/export.md); ``"auto"``: native when the library is built, else the body. Use
    ``resolve_scan_kernel`` first to know which one ``"auto"`` gives."""
    so = ort.SessionOptions()
    so.enable_mem_pattern = mem_pattern
    so.enable_cpu_mem_arena = arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads:
        so.intra_op_num_threads = threads
    if resolve_scan_kernel(scan_kernel) == "native":
        from .native_library import register_ort_scan_kernel

        register_ort_scan_kernel(so, required=True)
    return so


CPU_ARENA_CHOICES = ("shared", "session", "off")
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def use_shared_cpu_arena(ort, so) -> None:
    """Sessions created with ``so`` take their CPU buffers from one arena registered in ONNX
    Runtime's environment (created on the first call, once per process) instead of each
    owning an arena or none. For the runtime's ~50 stage sessions: buffers are reused across
    calls and stages (no fresh pages per call), and memory is the largest stage's, not the sum
    of every session's largest (docs/runtime.md). Extends by exactly what is requested."""
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _shared_arena_registered = True
    so.enable_cpu_mem_arena = True
    so.add_session_config_entry("session.use_env_allocators", "1")


def resolve_scan_kernel(choice: str) -> str:
    """``"native"`` or ``"graph"`` for a ``scan_kernel`` choice (``"auto"``: native when
    ``libhieramamba_plugins`` can be loaded). ``"native"`` without the library raises
    ``BackendUnavailableError`` with the build command."""
    from .native_library import load_native_library

    if choice not in SCAN_KERNEL_CHOICES:
        raise InputError(f"scan_kernel must be one of {SCAN_KERNEL_CHOICES}, got {choice!r}")
    if choice == "graph":
        return "graph"
    found = load_native_library(required=choice == "native") is not None
    return "native" if found else "graph"
