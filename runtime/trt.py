"""TensorRT per-stage engines: the limits they are built for, their optimization profiles, the
engines manifest, and ``TrtBackend`` that runs a bundle's stages as engines.

Everything except the calls into TensorRT is plain code tested without TensorRT (tests use a
stand-in ``tensorrt`` module that runs the stage graphs in ONNX Runtime and enforces profiles,
shapes and bindings the way TensorRT does). Importing this module needs neither torch nor
TensorRT; ``TrtBackend`` needs both (torch for CUDA buffers and the stream).

An engines folder (default ``<bundle>/trt``) holds ``engines.json`` and one ``<stage>.engine``
per bundle stage. Engines are specific to the TensorRT version, the GPU's compute capability,
the bundle (its manifest hash) and the limits: ``chunk`` (level tokens per chunk),
``max_batch`` (queries per backbone batch), ``max_text_len`` and ``max_clips`` (video features).
Anything else is refused with a message saying what to rebuild.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import subprocess
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from hieramamba.errors import BackendUnavailableError, CheckpointError, InputError

from .bundle import (SCAN_OP_DOMAIN, SCAN_OP_TYPE, SCAN_OP_VERSION, StageGraphBackend, file_sha256,
                     read_json, read_manifest, require_stage_files)
from .scheduler import ATTN_SCORES_PER_BLOCK, FRONT_HALO, HEAD_HALO, ceil_div, level_geometry

ENGINES_FORMAT = "hieramamba-trt-engines/1"
ENGINES_MANIFEST = "engines.json"
PLUGIN_LIBRARY_NAME = "libhieramamba_trt_plugin.so"
PLUGIN_ENV = "HIERAMAMBA_TRT_PLUGIN"
MIN_TRT_MAJOR = 10
# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment".
TRT_ALIGNMENT = 256
INDEX_MAX = 2 ** 31 - 1


# -- environment ---------------------------------------------------------------------------
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


def find_plugin_library(path: Optional[str] = None, recorded: Optional[str] = None) -> Path:
    """The TensorRT plugin library: ``path``, else ``$HIERAMAMBA_TRT_PLUGIN``, else the library
    the engines were built with (``recorded``), else ``build/libhieramamba_trt_plugin.so``
    under the repository or the working directory."""
    if path:
        candidates = [Path(path)]
    elif os.environ.get(PLUGIN_ENV):
        candidates = [Path(os.environ[PLUGIN_ENV])]
    else:
        repo = Path(__file__).resolve().parents[1]
        candidates = [Path(recorded)] if recorded else []
        candidates += [repo / "build" / PLUGIN_LIBRARY_NAME, Path.cwd() / "build" / PLUGIN_LIBRARY_NAME]
    for c in candidates:
        if c.is_file():
            return c
    raise BackendUnavailableError(
        f"HydraScan TensorRT plugin library not found (looked at {', '.join(map(str, candidates))}); "
        "build it with `cmake -S . -B build -DTensorRT_ROOT=<tensorrt> && cmake --build build` "
        f"(needs CUDA and TensorRT >= {MIN_TRT_MAJOR}) or pass --plugin / set {PLUGIN_ENV}")


_loaded_plugin_libraries: dict = {}  # resolved path -> TensorRT's handle


def load_scan_plugin(trt, path: Optional[str] = None, recorded: Optional[str] = None) -> Path:
    """Load the plugin library (``find_plugin_library``) into TensorRT's registry and check
    that it provides the ``HydraScan`` creator of the version the graphs use."""
    lib = find_plugin_library(path, recorded)
    registry = trt.get_plugin_registry()
    key = str(lib.resolve())
    # Once per process and file: building engines then running them (bench, CLI) would load it
    # twice, and TensorRT may refuse a second registration of the same creators.
    if key not in _loaded_plugin_libraries:
        handle = registry.load_library(str(lib))
        if handle is None:
            raise BackendUnavailableError(f"TensorRT could not load the plugin library {lib}")
        _loaded_plugin_libraries[key] = handle
    if registry.get_creator(SCAN_OP_TYPE, SCAN_OP_VERSION, SCAN_OP_DOMAIN) is None:
        raise BackendUnavailableError(
            f"{lib} does not provide plugin {SCAN_OP_TYPE} version {SCAN_OP_VERSION} in namespace "
            f"{SCAN_OP_DOMAIN!r} (the version the graphs use); rebuild plugins/ from this checkout")
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


# -- limits and profiles -------------------------------------------------------------------
@dataclass(frozen=True)
class EngineLimits:
    """What the engines must accept: ``chunk`` level tokens per chunk (the runtime's ``chunk``
    may be smaller), ``max_batch`` queries per backbone batch, ``max_text_len`` query tokens,
    ``max_clips`` video features, ``attn_rows`` rows per global-attention block (None: the
    runtime's default)."""
    chunk: int
    max_batch: int
    max_text_len: int
    max_clips: int
    attn_rows: Optional[int] = None

    def validate(self) -> "EngineLimits":
        for what in ("chunk", "max_batch", "max_text_len", "max_clips"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"engine limit {what} must be a positive int, got {v!r}")
        if self.chunk < 2 or self.chunk % 2:
            raise InputError(f"engine limit chunk must be an even int ≥ 2, got {self.chunk}")
        if self.attn_rows is not None and (not isinstance(self.attn_rows, int) or self.attn_rows < 1):
            raise InputError(f"engine limit attn_rows must be a positive int or None, got {self.attn_rows!r}")
        return self

    def describe(self) -> str:
        return (f"chunk={self.chunk}, max_batch={self.max_batch}, max_text_len={self.max_text_len}, "
                f"max_clips={self.max_clips}" + (f", attn_rows={self.attn_rows}" if self.attn_rows else ""))


def stage_level(stage: str) -> Optional[int]:
    m = re.search(r"(\d+)$", stage)
    return int(m.group(1)) if m else None


def largest_attn_block(slots_max: int, attn_rows: Optional[int]) -> int:
    """Most query rows one ``gattn_rows`` call gets for levels of up to ``slots_max`` slots
    (``ChunkScheduler._global_level``: ``attn_rows`` or ``ATTN_SCORES_PER_BLOCK // slots``)."""
    if attn_rows is not None:
        return min(attn_rows, slots_max)
    best = 0
    for s in range(1, slots_max + 1):
        best = max(best, min(s, max(1, ATTN_SCORES_PER_BLOCK // s)))
        if s >= ATTN_SCORES_PER_BLOCK // s:  # min(s, budget // s) only falls from here on
            break
    return best


def _longest_video_geometry(plan: dict, limits: EngineLimits):
    """Per-level lengths of the longest video the engines take (padded as the runtime pads)."""
    pm = plan["pad_multiple"]
    return level_geometry(ceil_div(limits.max_clips, pm) * pm, limits.max_clips, plan["vid_stride"],
                          plan["num_levels"])


def dim_ranges(stage: str, plan: dict, limits: EngineLimits, text1=None) -> dict:
    """``{dim symbol: (min, opt, max)}`` for the symbols of the stage graphs' input shapes
    (``export.stages._stage_specs`` names them), from the scheduler's windows at these limits
    (every window also capped by its level's length at ``max_clips``). ``text1``: the range of
    the encoded text length (the text stage's output), when known."""
    lim = limits.validate()
    geo = _longest_video_geometry(plan, lim)
    c, cp = lim.chunk, lim.chunk // 2
    level = stage_level(stage)
    g = geo[level if level is not None else 0]
    upto = lambda n, cap: (1, min(n, cap), min(n, cap))  # noqa: E731  opt = max: chunks are mostly full
    r = {"batch": (1, lim.max_batch, lim.max_batch),
         "text": (1, lim.max_text_len, lim.max_text_len),
         # front: a pre window (≤ chunk + one pair each side) plus FRONT_HALO each side, level-0 steps
         "vtime": upto(c + 4 + 2 * FRONT_HALO, geo[0].length),
         "tok": upto(c + 4, g.length),                     # pre: chunk + one pair each side
         "slen": (3,) + upto(3 * cp, 3 * g.pairs)[1:],     # scan/post: the chunk's slots
         }
    if text1 is not None:
        r["text1"] = text1
    if stage.startswith("local"):
        r["slots"] = upto(cp + 3, g.pairs)                # chunk + SLOT_HALO slots each side (in 3s)
    elif stage.startswith("gattn"):
        r["slots"] = upto(g.pairs, g.pairs)              # the whole level
        r["rows"] = upto(largest_attn_block(3 * g.pairs, lim.attn_rows), 3 * g.pairs)
    if stage == "heads":  # one graph for every level: the largest window of any level
        r["htime"] = max((upto(c + 4 + 3 * HEAD_HALO, geo[l].length) if plan["windowed"][l]
                          else upto(geo[l].length, geo[l].length)) for l in range(plan["num_levels"]))
    return r


def index_ranges(stage: str, plan: dict, limits: EngineLimits) -> dict:
    """Value ranges of the scalar int64 inputs, for TensorRT when it treats one as a shape
    tensor (``IOptimizationProfile.set_shape_input``)."""
    geo = _longest_video_geometry(plan, limits)
    level = stage_level(stage)
    g = geo[level if level is not None else 0]
    return {"pe_start": (0, 0, geo[0].length), "pe_total": (1, geo[0].length, geo[0].length),
            "slot_offset": (0, 0, 3 * g.pairs), "n_valid": (0, g.valid + g.valid_pairs, INDEX_MAX)}


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.FloorDiv: lambda a, b: a // b}


def eval_dim(expr, values: dict) -> int:
    """Value of an ONNX dim (an int, a symbol, or an expression such as ``3*(((tok + 1)//2))``)
    with the symbols in ``values``; only + - * // on ints (no ``eval``)."""
    if isinstance(expr, int):
        return expr

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise KeyError(node.id)
            return values[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"unsupported dim expression {expr!r}")

    return ev(ast.parse(str(expr), mode="eval").body)


def profile_shapes(stage: str, input_dims: dict, ranges: dict) -> dict:
    """``{input: (min shape, opt shape, max shape)}`` for the inputs with symbolic dims;
    ``input_dims``: ``{input: [dim, ...]}`` as the ONNX graph declares them."""
    out = {}
    for name, dims in input_dims.items():
        if all(isinstance(d, int) for d in dims):
            continue
        shapes = []
        for k in range(3):
            try:
                shapes.append(tuple(eval_dim(d, {s: v[k] for s, v in ranges.items()}) for d in dims))
            except KeyError as exc:
                raise CheckpointError(f"stage {stage}: input {name} has dim symbol {exc.args[0]!r} "
                                      "that this runtime does not know how to bound") from None
        out[name] = tuple(shapes)
    return out


# -- engines manifest ----------------------------------------------------------------------
def bundle_fingerprint(bundle_dir) -> str:
    """The bundle's manifest hash plus its stage files' sizes: engines belong to one bundle."""
    d = Path(bundle_dir)
    man = read_manifest(d)
    h = hashlib.sha256((d / "manifest.json").read_bytes())
    for name in sorted(man["stages"]):
        h.update(f"{name}:{(d / man['stages'][name]['file']).stat().st_size}".encode())
    return h.hexdigest()


def engines_manifest(bundle_dir, limits: EngineLimits, stages: dict, *, trt_version: str,
                     plugin_library: Optional[str], gpu: dict, seconds: float) -> dict:
    return {"format": ENGINES_FORMAT, "bundle": bundle_fingerprint(bundle_dir),
            "dtype": read_manifest(bundle_dir)["dtype"], "limits": asdict(limits),
            "tensorrt_version": trt_version, "gpu": gpu,
            "plugin": {"library": plugin_library, "name": SCAN_OP_TYPE, "version": SCAN_OP_VERSION,
                       "namespace": SCAN_OP_DOMAIN},
            "stages": stages, "build_seconds": round(seconds, 1)}


def read_engines_manifest(engines_dir, bundle_dir) -> dict:
    """Read and check an engines folder against its bundle (format, bundle fingerprint, one
    engine file per stage). TensorRT version, GPU and checksums are checked by ``TrtBackend``."""
    path = Path(engines_dir) / ENGINES_MANIFEST
    em = read_json(path, "engines manifest", f"{engines_dir}: no TensorRT engines there ({ENGINES_MANIFEST} "
                   f"missing); build them with `hieramamba build-engines {bundle_dir}`")
    if em.get("format") != ENGINES_FORMAT:
        raise CheckpointError(f"{path}: engines format {em.get('format')!r}, this runtime reads "
                              f"{ENGINES_FORMAT!r}; rebuild the engines")
    if em.get("bundle") != bundle_fingerprint(bundle_dir):
        raise CheckpointError(f"{path}: these engines were built from another bundle than {bundle_dir} "
                              "(re-exported or changed since); rebuild the engines")
    missing = [s for s in read_manifest(bundle_dir)["stages"] if s not in em.get("stages", {})]
    if missing:
        raise CheckpointError(f"{path}: no engine for stage(s) {', '.join(missing)}; rebuild the engines")
    require_stage_files(engines_dir, em["stages"], "engine")
    return em


# -- the backend ---------------------------------------------------------------------------
class _Engine:
    """A deserialized engine and its I/O: ``inputs``/``outputs`` as (name, torch dtype,
    host-resident shape input?)."""

    def __init__(self, engine, trt, torch_dtypes):
        self.engine = engine
        self.inputs, self.outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dt = torch_dtypes[str(engine.get_tensor_dtype(name)).split(".")[-1]]
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append((name, dt, bool(engine.is_shape_inference_io(name))))
            else:
                self.outputs.append((name, dt))
        self.contexts = threading.local()  # an execution context is not thread-safe: one per thread


class TrtBackend(StageGraphBackend):
    """Runs a bundle's stages as TensorRT engines on a CUDA device, tensors staying on the
    device between stages (torch CUDA tensors on the current stream). ``engines_dir``: the
    folder ``hieramamba build-engines`` wrote (default ``<bundle>/trt``). Checks, before any
    run: engines format and bundle, TensorRT version, GPU compute capability, engine file
    checksums (on first use of a stage), the plugin library and its HydraScan version."""

    name = "tensorrt"

    def __init__(self, bundle_dir, engines_dir=None, plugin_library=None, device="cuda"):
        super().__init__(bundle_dir)
        self.engines_dir = Path(engines_dir) if engines_dir else self.dir / "trt"
        self.engines_manifest = read_engines_manifest(self.engines_dir, self.dir)
        self.limits = EngineLimits(**self.engines_manifest["limits"]).validate()
        trt = self.trt = import_tensorrt()
        built = self.engines_manifest["tensorrt_version"]
        if built != trt.__version__:
            raise CheckpointError(f"{self.engines_dir}: engines were built with TensorRT {built}, this is "
                                  f"TensorRT {trt.__version__} (engines are not portable across versions); "
                                  "rebuild them with `hieramamba build-engines`")
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError("the tensorrt backend needs PyTorch with CUDA for device "
                                          "buffers") from exc
        self.torch = torch
        self.device = torch.device(device)
        self._check_device()
        cap, want = self._device_capability(), self.engines_manifest["gpu"].get("compute_capability")
        if want is not None and cap != want:
            raise CheckpointError(f"{self.engines_dir}: engines were built for compute capability {want} "
                                  f"({self.engines_manifest['gpu'].get('name')}), this GPU is {cap}; "
                                  "rebuild them on this GPU")
        if any(st.get("hydra_scan_nodes", 0) for st in self.manifest["stages"].values()):
            load_scan_plugin(trt, plugin_library, self.engines_manifest["plugin"].get("library"))
        self.dtype = torch.float16 if self.manifest["dtype"] == "float16" else torch.float32
        self._torch_dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                              "INT64": torch.int64, "INT32": torch.int32, "BOOL": torch.bool,
                              "INT8": torch.int8, "UINT8": torch.uint8}
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines, self._lock = {}, threading.Lock()
        self._side_streams = threading.local()

    # Device hooks (tests run the stand-in TensorRT on host memory through a subclass).
    def _check_device(self):
        if self.device.type != "cuda" or not self.torch.cuda.is_available():
            raise BackendUnavailableError(f"the tensorrt backend runs on a CUDA device, got {self.device} "
                                          f"(CUDA available: {self.torch.cuda.is_available()})")

    def _device_capability(self) -> str:
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return f"{major}.{minor}"

    def _device_scope(self):
        """TensorRT deserializes and runs on the current CUDA device: make it ``self.device``."""
        return self.torch.cuda.device(self.device)

    def _execute(self, ctx, inputs) -> bool:
        """``execute_async_v3`` on torch's current stream, or, when that is the legacy default
        stream (handle 0; TensorRT would then synchronise the device around every call), on a
        per-thread side stream ordered after the current one, which then waits for it."""
        torch = self.torch
        current = torch.cuda.current_stream(self.device)
        if current.cuda_stream != 0:
            return ctx.execute_async_v3(current.cuda_stream)
        side = getattr(self._side_streams, "stream", None)
        if side is None:
            side = self._side_streams.stream = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        ok = ctx.execute_async_v3(side.cuda_stream)
        for t in inputs:  # their memory is not handed out again before TensorRT has read it
            if t.is_cuda:
                t.record_stream(side)
        current.wait_stream(side)
        return ok

    def _aligned(self, t):
        """``t`` itself when TensorRT may take its address, else a copy at a 256-byte boundary
        (slices of a chunk, e.g. the scan inputs of a one-query window, start anywhere)."""
        if t.data_ptr() % TRT_ALIGNMENT == 0:
            return t
        n = t.numel() * t.element_size()
        buf = self.torch.empty(n + TRT_ALIGNMENT, dtype=self.torch.uint8, device=t.device)
        start = (-buf.data_ptr()) % TRT_ALIGNMENT
        out = buf[start:start + n].view(t.dtype).view(t.shape)
        out.copy_(t)
        return out

    # -- engines ---------------------------------------------------------------------------
    def _engine(self, stage) -> _Engine:
        with self._lock:
            eng = self._engines.get(stage)
            if eng is None:
                st = self.engines_manifest["stages"].get(stage)
                if st is None:
                    raise CheckpointError(f"{self.engines_dir}: no engine for stage {stage!r}")
                path = self.engines_dir / st["file"]
                if file_sha256(path) != st["sha256"]:
                    raise CheckpointError(f"{path}: engine file is corrupt (checksum differs from "
                                          f"{ENGINES_MANIFEST}); rebuild the engines")
                with self._device_scope():
                    engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise CheckpointError(f"{path}: TensorRT could not deserialize the engine (corrupt, or "
                                          "built by another TensorRT/plugin); rebuild the engines")
                eng = self._engines[stage] = _Engine(engine, self.trt, self._torch_dtypes)
            return eng

    def _context(self, eng: _Engine):
        ctx = getattr(eng.contexts, "ctx", None)
        if ctx is None:
            ctx = eng.contexts.ctx = eng.engine.create_execution_context()
        return ctx

    def _check_profile(self, stage, eng, name, shape):
        lo, _, hi = eng.engine.get_tensor_profile_shape(name, 0)
        if len(lo) != len(shape) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise InputError(f"stage {stage}: input {name} has shape {tuple(shape)}, outside the engines' "
                             f"profile {tuple(lo)}..{tuple(hi)} (built for {self.limits.describe()}); "
                             "rebuild the engines with larger limits or lower chunk / max_batch")

    def _run(self, stage, **feeds):
        torch = self.torch
        eng = self._engine(stage)
        ctx = self._context(eng)
        keep = []  # inputs converted here live until the enqueue is done
        for name, dt, host in eng.inputs:
            if name not in feeds:
                raise CheckpointError(f"engine of stage {stage} wants input {name!r}, which the bundle "
                                      "stage does not take; rebuild the engines from this bundle")
            t = feeds[name]
            t = torch.as_tensor(t).to(device="cpu" if host else self.device, dtype=dt).contiguous()
            if not host:
                t = self._aligned(t)
                if -1 in tuple(eng.engine.get_tensor_shape(name)):  # static inputs have no profile
                    self._check_profile(stage, eng, name, t.shape)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise InputError(f"stage {stage}: TensorRT rejected shape {tuple(t.shape)} for input {name}")
            self._bind(ctx, stage, name, t)
            keep.append(t)
        outs = []
        for name, dt in eng.outputs:
            t = self._aligned(torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dt, device=self.device))
            self._bind(ctx, stage, name, t)
            outs.append(t)
        with self._device_scope():
            if not self._execute(ctx, keep):
                raise RuntimeError(f"TensorRT failed to run the engine of stage {stage} (see its log)")
        return outs

    @staticmethod
    def _bind(ctx, stage, name, t):
        if not ctx.set_tensor_address(name, t.data_ptr()):
            raise RuntimeError(f"TensorRT refused the buffer of {name} (stage {stage}) at address "
                               f"{t.data_ptr():#x}; see its log")

    def _dense(self, t):
        return t.contiguous() if hasattr(t, "contiguous") else np.ascontiguousarray(t)

    # -- array helpers ---------------------------------------------------------------------
    def from_numpy(self, a):
        a = np.ascontiguousarray(a)
        t = self.torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        return t if t.dtype == self.torch.bool else t.to(self.dtype)

    def to_numpy(self, t):
        t = t.detach().to("cpu")
        return t.to(self.torch.float64).numpy() if t.is_floating_point() else t.numpy()

    def cat(self, arrays, axis):
        return self.torch.cat(arrays, dim=axis)

    def copy(self, t):
        return t.clone(memory_format=self.torch.contiguous_format)

    def empty_like(self, t, shape):
        return t.new_empty(shape)

    def zeros_state(self, level, batch):
        s = self.plan["scan"][level]
        return self.torch.zeros(batch, s["H"], s["P"], s["N"], device=self.device)

    def zeros_row(self, level, batch):
        s = self.plan["scan"][level]
        return self.torch.zeros(batch, s["G"], s["N"], device=self.device, dtype=self.dtype)

    # -- requests --------------------------------------------------------------------------
    def check_request(self, num_clips=None, chunk=None, max_batch=None) -> None:
        """Refuse, before running, what the engines were not built for."""
        lim = self.limits
        if chunk is not None and chunk > lim.chunk:
            raise InputError(f"chunk {chunk} exceeds the engines' chunk {lim.chunk} ({self.engines_dir}); "
                             "use a chunk ≤ that or rebuild the engines")
        if max_batch is not None and max_batch > lim.max_batch:
            raise InputError(f"max_batch {max_batch} exceeds the engines' max_batch {lim.max_batch} "
                             f"({self.engines_dir})")
        if num_clips is not None and num_clips > lim.max_clips:
            raise InputError(f"video has {num_clips} clips, the engines take at most {lim.max_clips} "
                             f"({self.engines_dir}); rebuild them with a larger --max-clips")
