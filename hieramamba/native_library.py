"""Finding and loading the native libraries of ``plugins/``, without torch: one finder for both.

* ``libhieramamba_plugins`` — the C++ CPU and CUDA HydraScan kernels behind a C ABI (used by
  ``hieramamba.ops.hydra_scan.native`` for torch tensors) and, in the same file, an ONNX Runtime
  custom-op library that runs ``hieramamba::HydraScan`` nodes with the C++ kernel
  (``register_ort_scan_kernel``; ``plugins/hydra_scan/hydraScanOrtOp.cpp``).
* ``libhieramamba_trt_plugin`` — the TensorRT plugin (``hieramamba.trt_env.load_scan_plugin``).

Both are built by the top-level ``CMakeLists.txt``::

    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j

and found (``find_library``), in this order, at a path given by the caller, at
``$HIERAMAMBA_PLUGIN_LIB`` (a folder holding the libraries, or one library file: the other one is
then looked for beside it), at the path an artifact recorded (engines: the plugin they were built
with), in ``<repo>/build/`` and next to the ``hieramamba`` package. Nothing is loaded at import
time; the first call that needs a library loads it once per process.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from .errors import BackendUnavailableError

ABI_VERSION = 7  # must equal HM_ABI_VERSION in plugins/capi/hmCApi.h
LIBRARY_ENV = "HIERAMAMBA_PLUGIN_LIB"
BUILD_COMMAND = "cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j"

_REPO_ROOT = Path(__file__).resolve().parents[1]
_PACKAGE_DIR = Path(__file__).resolve().parent


KERNELS, TRT_PLUGIN = "hieramamba_plugins", "hieramamba_trt_plugin"  # the two libraries
_OLD_ENV = "HIERAMAMBA_TRT_PLUGIN"  # read by earlier versions: refused, not silently ignored


def library_file_name(library: str = KERNELS) -> str:
    if sys.platform == "darwin":
        return f"lib{library}.dylib"
    if sys.platform == "win32":
        return f"{library}.dll"
    return f"lib{library}.so"


def library_candidates(library: str = KERNELS, path=None, recorded=None) -> list[Path]:
    """Where ``library`` is looked for, in order (see the module text)."""
    if os.environ.get(_OLD_ENV):
        raise BackendUnavailableError(f"${_OLD_ENV} is no longer read; set ${LIBRARY_ENV} to the plugin "
                                      "library file or the folder holding the built libraries")
    name = library_file_name(library)
    if path:
        return [Path(path).expanduser()]
    paths = []
    env = os.environ.get(LIBRARY_ENV)
    if env:
        p = Path(env).expanduser()
        other = library_file_name(TRT_PLUGIN if library == KERNELS else KERNELS)
        paths.append(p / name if p.is_dir() else p.parent / name if p.name == other else p)
    if recorded:
        paths.append(Path(recorded))
    paths += [_REPO_ROOT / "build" / name, _PACKAGE_DIR / name]
    return paths


def find_library(library: str, path=None, recorded=None) -> Path:
    """The first existing candidate of ``library_candidates``; ``BackendUnavailableError`` naming
    every place tried and how to build it otherwise."""
    candidates = library_candidates(library, path, recorded)
    for c in candidates:
        if c.is_file():
            return c
    need = ("needs CUDA and TensorRT >= 10: add -DTensorRT_ROOT=<tensorrt>" if library == TRT_PLUGIN
            else "needs cmake and a C++17 compiler")
    raise BackendUnavailableError(
        f"{library_file_name(library)} not found (looked at {', '.join(map(str, candidates))}); build it from "
        f"the repository root ({_REPO_ROOT}) with: {BUILD_COMMAND} ({need}), or point ${LIBRARY_ENV} at it")


class _HmScanShape(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int64)
                for name in ("batch", "length", "heads", "headdim", "groups", "dstate")]


_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[Path] = None


def _bind(lib: ctypes.CDLL) -> None:
    vp, i32 = ctypes.c_void_p, ctypes.c_int
    shape_p = ctypes.POINTER(_HmScanShape)
    lib.hm_version.argtypes, lib.hm_version.restype = [], ctypes.c_char_p
    lib.hm_has_cuda.argtypes, lib.hm_has_cuda.restype = [], i32
    lib.hm_hydra_scan_validate.argtypes = [shape_p, i32, i32, ctypes.c_char_p, i32]
    lib.hm_hydra_scan_validate.restype = i32
    lib.hm_hydra_scan_workspace_size.argtypes = [shape_p, i32]
    lib.hm_hydra_scan_workspace_size.restype = ctypes.c_size_t
    lib.hm_hydra_scan_cuda_plan.argtypes = [shape_p, i32] + [ctypes.POINTER(i32)] * 3 + [
        ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p, i32]
    lib.hm_hydra_scan_cuda_plan.restype = i32
    # shape, dtype, dt_dtype, 9 inputs, 2 initial states, y, 2 states, threads, err, errlen
    lib.hm_hydra_scan_cpu.argtypes = [shape_p, i32, i32] + [vp] * 14 + [i32, ctypes.c_char_p, i32]
    lib.hm_hydra_scan_cpu.restype = i32
    # Same pointers (device memory), then workspace, workspace bytes, cudaStream_t, err, errlen.
    lib.hm_hydra_scan_cuda.argtypes = [shape_p, i32, i32] + [vp] * 14 + [
        vp, ctypes.c_size_t, vp, ctypes.c_char_p, i32]
    lib.hm_hydra_scan_cuda.restype = i32


def _try_load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls
    lib.hm_abi_version.argtypes, lib.hm_abi_version.restype = [], ctypes.c_int
    abi = lib.hm_abi_version()
    if abi != ABI_VERSION:
        raise BackendUnavailableError(
            f"{path} has C ABI version {abi}, this hieramamba expects {ABI_VERSION}: the library is "
            f"stale; rebuild it from the repository root with: {BUILD_COMMAND}")
    _bind(lib)
    return lib


def load_native_library(required: bool = False) -> Optional[ctypes.CDLL]:
    """Load ``libhieramamba_plugins`` (once per process) and return it.

    Returns ``None`` when it is not found and ``required`` is false; raises
    ``BackendUnavailableError`` (naming every path tried and the build command) when ``required``.
    A library that exists but cannot be loaded, or has another ABI version, is reported the same way.
    """
    global _lib, _lib_path
    with _lock:
        if _lib is not None:
            return _lib
        tried = []
        for path in library_candidates():
            if not path.is_file():
                tried.append(f"{path} (not found)")
                continue
            try:
                lib = _try_load(path)
            except (OSError, AttributeError, BackendUnavailableError) as e:
                tried.append(f"{path} (unusable: {e})")
                continue
            _lib, _lib_path = lib, path
            return lib
    if required:
        raise BackendUnavailableError(
            "the native HydraScan library libhieramamba_plugins is not available. Searched: "
            + "; ".join(tried)
            + f". Build it from the repository root ({_REPO_ROOT}) with: {BUILD_COMMAND} "
            + f"(needs cmake and a C++17 compiler), or point ${LIBRARY_ENV} at the built file.")
    return None


def loaded_library_path() -> Optional[Path]:
    """The file ``load_native_library`` loaded, or ``None`` before a successful load."""
    return _lib_path


def native_library_info() -> Optional[dict]:
    """``{"path", "version", "has_cuda", "abi"}`` of the loaded library, or ``None`` if unavailable."""
    lib = load_native_library(required=False)
    if lib is None:
        return None
    return {
        "path": str(_lib_path),
        "version": lib.hm_version().decode(),
        "has_cuda": bool(lib.hm_has_cuda()),
        "abi": lib.hm_abi_version(),
    }


# ONNX Runtime ----------------------------------------------------------------------------------

def register_ort_scan_kernel(session_options, required: bool = False) -> Optional[str]:
    """Make sessions created with ``session_options`` run ``hieramamba::HydraScan`` nodes with the
    C++ kernel of ``libhieramamba_plugins`` (``plugins/hydra_scan/hydraScanOrtOp.cpp``) instead of
    the node's ONNX function body, op by op. Same results (fp32 math either way; the kernel scans
    sequentially, the body in chunks: they agree to rounding) and several times faster on the scan.
    The kernel runs its heads on the session's intra-op thread pool (its thread count).

    Returns the library path, or ``None`` when the library is not built and ``required`` is false;
    raises ``BackendUnavailableError`` when it is required, or when ONNX Runtime refuses the
    library (e.g. older than 1.20)."""
    lib = load_native_library(required=required)
    if lib is None:
        return None
    path = str(_lib_path)
    try:
        session_options.register_custom_ops_library(path)
    except Exception as e:  # onnxruntime raises its own exception types
        raise BackendUnavailableError(
            f"ONNX Runtime could not register the HydraScan kernel from {path}: {e}") from e
    return path
