"""TensorRT in this process: importing it with a clear reason when it is absent or too old,
loading the HydraScan plugin library into its registry, and the GPU the engines are built on.
Shared by the engine builder (``hieramamba.export.trt_build``) and the TensorRT backend
(``hieramamba.runtime.backends.tensorrt``). Importing this module imports neither TensorRT nor torch.
"""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import Optional

from .artifacts import MIN_TRT_MAJOR, SCAN_OP
from .errors import BackendUnavailableError
from .native_library import TRT_PLUGIN, find_library


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            "TensorRT is not installed (python package `tensorrt`); install "
            f"'hieramamba[tensorrt]' (TensorRT >= {MIN_TRT_MAJOR}) on a machine with an NVIDIA GPU") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TRT_MAJOR:
        raise BackendUnavailableError(f"TensorRT {trt.__version__} found; the HydraScan plugin "
                                      f"(IPluginV3) needs TensorRT >= {MIN_TRT_MAJOR}")
    return trt


_loaded: dict = {}  # resolved path -> TensorRT's handle
_lock = threading.Lock()


def load_scan_plugin(trt, path: Optional[str] = None, recorded: Optional[str] = None) -> Path:
    """Load the TensorRT plugin library (``native_library.find_library``: ``path``, then
    ``$HIERAMAMBA_PLUGIN_LIB``, the library the engines were built with, the build folder) into
    TensorRT's registry, and check that it provides the ``HydraScan`` creator of the version and
    namespace the graphs use."""
    lib = find_library(TRT_PLUGIN, path, recorded)
    registry = trt.get_plugin_registry()
    key = str(lib.resolve())
    # Once per process and file: building engines then running them (bench, CLI) would load it
    # twice, and TensorRT may refuse a second registration of the same creators.
    with _lock:
        if key not in _loaded:
            handle = registry.load_library(str(lib))
            if handle is None:
                raise BackendUnavailableError(f"TensorRT could not load the plugin library {lib}")
            _loaded[key] = handle
    if registry.get_creator(SCAN_OP.op_type, SCAN_OP.version, SCAN_OP.domain) is None:
        raise BackendUnavailableError(
            f"{lib} does not provide plugin {SCAN_OP.op_type} version {SCAN_OP.version} in namespace "
            f"{SCAN_OP.domain!r} (the version the graphs use); rebuild plugins/ from this checkout")
    return lib


def gpu_info() -> dict:
    """Name and compute capability of GPU 0 from ``nvidia-smi`` (``None`` values without one)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        line = ""
    name, _, cap = line.rpartition(",")
    return {"name": name.strip() or None, "compute_capability": cap.strip() or None}
