"""TensorRT engine building from an exported ONNX file (TensorRT 10 Python API).

Everything except the calls into TensorRT is plain code (profile computation, argument checks,
plugin lookup, the engine manifest) and is unit-tested without TensorRT. ``build_engine`` imports
``tensorrt`` lazily and raises BackendUnavailableError when it (or the plugin library) is absent.

Engine = ``<name>.engine`` + ``<name>.engine.json`` (the ONNX manifest's config/dtype/mask
semantics, the profile, TensorRT version, plugin library + version, GPU name).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from hieramamba.errors import BackendUnavailableError, ExportError

from . import scan_node
from .manifest import file_sha256, load_manifest

PLUGIN_LIBRARY_NAME = "libhieramamba_trt_plugin.so"
PLUGIN_ENV = "HIERAMAMBA_TRT_PLUGIN"
MIN_TRT_MAJOR = 10


@dataclass(frozen=True)
class ProfileSpec:
    """One optimization profile: video length ``T`` and query batch ``Nq`` ranges; text length
    is fixed per profile range ``text_min..text_max`` (opt = text_opt)."""
    len_min: int
    len_opt: int
    len_max: int
    q_min: int
    q_opt: int
    q_max: int
    text_min: int
    text_opt: int
    text_max: int

    def validate(self) -> "ProfileSpec":
        for what, lo, opt, hi in (("video length", self.len_min, self.len_opt, self.len_max),
                                  ("query batch", self.q_min, self.q_opt, self.q_max),
                                  ("text length", self.text_min, self.text_opt, self.text_max)):
            for v in (lo, opt, hi):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise ExportError(f"profile {what}: values must be ints, got {v!r}")
            if not 1 <= lo <= opt <= hi:
                raise ExportError(f"profile {what}: need 1 <= min <= opt <= max, got "
                                  f"min={lo}, opt={opt}, max={hi}")
        return self

    def shapes(self, vid_dim: int, text_dim: int) -> dict:
        """``{input name: (min, opt, max) shapes}`` for the whole-model graph's inputs."""
        self.validate()
        T = (self.len_min, self.len_opt, self.len_max)
        Q = (self.q_min, self.q_opt, self.q_max)
        Tt = (self.text_min, self.text_opt, self.text_max)
        return {
            "video": tuple((1, vid_dim, t) for t in T),
            "video_mask": tuple((1, 1, t) for t in T),
            "text": tuple((q, text_dim, tt) for q, tt in zip(Q, Tt)),
            "text_mask": tuple((q, 1, tt) for q, tt in zip(Q, Tt)),
        }


def parse_range(text: str, what: str) -> tuple[int, int, int]:
    """``"min:opt:max"`` or a single ``"n"`` (fixed) → three ints."""
    try:
        parts = [int(p) for p in str(text).split(":")]
    except ValueError:
        raise ExportError(f"{what}: expected MIN:OPT:MAX or N (integers), got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise ExportError(f"{what}: expected MIN:OPT:MAX or N, got {text!r}")
    return tuple(parts)


def profile_from_args(lengths: str, queries: str, text: str) -> ProfileSpec:
    return ProfileSpec(*parse_range(lengths, "--lengths"), *parse_range(queries, "--queries"),
                       *parse_range(text, "--text-len")).validate()


def input_dims_from_manifest(manifest: dict) -> tuple[int, int]:
    """Static channel dims of ``video`` and ``text`` from the manifest's input shapes."""
    shapes = {i["name"]: i["shape"] for i in manifest["inputs"]}
    try:
        vd, td = shapes["video"][1], shapes["text"][1]
    except (KeyError, IndexError):
        raise ExportError("build-engine needs a whole-model graph with inputs video, video_mask, "
                          f"text, text_mask; manifest lists {sorted(shapes)}") from None
    if not isinstance(vd, int) or not isinstance(td, int):
        raise ExportError(f"video/text channel dims must be static, got {vd}, {td}")
    return vd, td


def find_plugin_library(path: Optional[str] = None) -> Path:
    """The TensorRT plugin library: ``path``, else ``$HIERAMAMBA_TRT_PLUGIN``, else
    ``build/libhieramamba_trt_plugin.so`` under the repository (CMake output)."""
    candidates = []
    if path:
        candidates = [Path(path)]
    elif os.environ.get(PLUGIN_ENV):
        candidates = [Path(os.environ[PLUGIN_ENV])]
    else:
        repo = Path(__file__).resolve().parents[1]
        candidates = [repo / "build" / PLUGIN_LIBRARY_NAME, Path.cwd() / "build" / PLUGIN_LIBRARY_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise BackendUnavailableError(
        f"HydraScan TensorRT plugin library not found (looked at {', '.join(map(str, candidates))}); "
        "build it with `cmake -S . -B build -DTensorRT_ROOT=<tensorrt> && cmake --build build` "
        f"(needs CUDA and TensorRT >= {MIN_TRT_MAJOR}) or pass --plugin / set {PLUGIN_ENV}")


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


def gpu_name() -> Optional[str]:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def engine_manifest(onnx_manifest: dict, onnx_path, engine_path, profile: ProfileSpec, *,
                    trt_version: str, plugin_library: Optional[str], gpu: Optional[str],
                    timing_cache: Optional[str]) -> dict:
    return {
        "format": "hieramamba-engine-manifest",
        "format_version": 1,
        "engine": Path(engine_path).name,
        "engine_sha256": file_sha256(engine_path) if Path(engine_path).is_file() else None,
        "onnx": Path(onnx_path).name,
        "onnx_sha256": onnx_manifest.get("sha256"),
        "dtype": onnx_manifest.get("dtype"),
        "mask_semantics": onnx_manifest.get("mask_semantics"),
        "config": onnx_manifest.get("config"),
        "padding": onnx_manifest.get("padding"),
        "inputs": onnx_manifest.get("inputs"),
        "outputs": onnx_manifest.get("outputs"),
        "profile": asdict(profile),
        "tensorrt_version": trt_version,
        "plugin": {"library": plugin_library, "name": scan_node.OP_TYPE,
                   "version": scan_node.PLUGIN_VERSION, "namespace": scan_node.PLUGIN_NAMESPACE},
        "gpu": gpu,
        "timing_cache": timing_cache,
        "strongly_typed": True,
    }


def build_engine(onnx_path, engine_path, profile: ProfileSpec, *, plugin_library=None,
                 timing_cache=None, workspace_gib: float = 8.0) -> dict:
    """Build a strongly typed engine from ``onnx_path`` (manifest validated first). Returns the
    engine manifest (also written to ``<engine_path>.json``)."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    man = load_manifest(onnx_path)
    vd, td = input_dims_from_manifest(man)
    shapes = profile.shapes(vd, td)
    if workspace_gib <= 0:
        raise ExportError(f"--workspace-gib must be positive, got {workspace_gib}")
    trt = import_tensorrt()
    needs_plugin = man["hydra_scan"]["custom_nodes"] > 0
    lib = find_plugin_library(plugin_library) if needs_plugin else None

    logger = trt.Logger(trt.Logger.WARNING)
    registry = trt.get_plugin_registry()
    if lib is not None:
        handle = registry.load_library(str(lib))
        if handle is None:
            raise BackendUnavailableError(f"TensorRT could not load the plugin library {lib}")
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, (mn, op, mx) in shapes.items():
        opt_profile.set_shape(name, mn, op, mx)
    config.add_optimization_profile(opt_profile)
    cache = None
    if timing_cache:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(bytes(serialized))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(config.get_timing_cache().serialize()))
    em = engine_manifest(man, onnx_path, engine_path, profile, trt_version=trt.__version__,
                         plugin_library=str(lib) if lib else None, gpu=gpu_name(),
                         timing_cache=str(timing_cache) if timing_cache else None)
    Path(str(engine_path) + ".json").write_text(json.dumps(em, indent=2, default=str))
    return em
