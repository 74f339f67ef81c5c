"""The TensorRT backend: a bundle's stages as per-stage engines on a CUDA device, tensors staying
on the device between stages (torch CUDA tensors on the current stream).

An engines folder (default ``<bundle>/trt``, written by ``hieramamba build-engines``) holds
``engines.json`` (``hieramamba.artifacts.EnginesManifest``) and one ``<stage>.engine`` per bundle
stage. Engines are specific to the TensorRT version, the GPU's compute capability, the bundle
(its manifest hash) and the limits (``EngineLimits``); anything else is refused with a message
saying what to rebuild. Importing this module needs neither torch nor TensorRT; ``TrtBackend``
needs both (torch for CUDA buffers and the stream). Tests run it on a stand-in ``tensorrt``
module (tests/fake_tensorrt.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from hieramamba.artifacts import REBUILD, EnginesManifest, verify_file
from hieramamba.errors import BackendUnavailableError, CheckpointError, InputError
from hieramamba.trt_env import import_tensorrt, load_scan_plugin

from . import GraphBackend
from .arrays import TorchArrays

# IExecutionContext::setTensorAddress: "The pointer must have at least 256-byte alignment".
TRT_ALIGNMENT = 256


class _Engine:
    """A deserialized engine and its I/O: ``inputs``/``outputs`` as (name, torch dtype, in host
    memory?). Where a tensor must live is ``get_tensor_location`` (HOST for shape tensors, and
    for anything else the network placed on the host), not ``is_shape_inference_io``."""

    def __init__(self, engine, trt, torch_dtypes):
        self.engine = engine
        self.inputs, self.outputs = [], []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dt = torch_dtypes[str(engine.get_tensor_dtype(name)).split(".")[-1]]
            host = engine.get_tensor_location(name) == trt.TensorLocation.HOST
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs.append((name, dt, host))
            elif host:  # a shape output: no stage graph computes one
                raise CheckpointError(f"engine output {name} lives in host memory; the runtime takes device "
                                      f"outputs only; {REBUILD}")
            else:
                self.outputs.append((name, dt))
        self.contexts = threading.local()  # an execution context is not thread-safe: one per thread


class TrtBackend(GraphBackend):
    """Runs a bundle's stages as TensorRT engines on a CUDA device, tensors staying on the
    device between stages (torch CUDA tensors on the current stream). ``engines_dir``: the
    folder ``hieramamba build-engines`` wrote (default ``<bundle>/trt``). Checks, before any
    run: engines format and bundle, TensorRT version, GPU compute capability, engine file
    checksums (on first use of a stage), the plugin library and its HydraScan version."""

    name = "tensorrt"

    def __init__(self, bundle_dir, engines_dir=None, plugin_library=None, device="cuda"):
        super().__init__(bundle_dir)
        self.engines_dir = Path(engines_dir) if engines_dir else self.dir / "trt"
        self.engines_manifest = EnginesManifest.read(self.engines_dir, self.dir, self.manifest)
        self.limits = self.engines_manifest.limits
        trt = self.trt = import_tensorrt()
        built = self.engines_manifest.tensorrt_version
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
        cap, want = self._device_capability(), self.engines_manifest.gpu.get("compute_capability")
        if want is not None and cap != want:
            raise CheckpointError(f"{self.engines_dir}: engines were built for compute capability {want} "
                                  f"({self.engines_manifest.gpu.get('name')}), this GPU is {cap}; "
                                  "rebuild them on this GPU")
        if any(st.hydra_scan_nodes for st in self.manifest.stages.values()):
            load_scan_plugin(trt, plugin_library, self.engines_manifest.plugin.get("library"))
        self.dtype = torch.float16 if self.manifest.dtype == "float16" else torch.float32
        self.arrays = TorchArrays(self.device, self.dtype)
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

    def _device_empty(self, shape, dtype):
        """An uninitialized tensor in this backend's device memory."""
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def _in_device_memory(self, t) -> bool:
        return t.device == self.device

    def _placed(self, t, host: bool):
        """``t`` as TensorRT may take its address: in host or device memory as the engine says,
        at a 256-byte boundary (slices of a chunk, e.g. the scan inputs of a one-query window,
        start anywhere; host tensors too: setTensorAddress asks it of every pointer)."""
        torch = self.torch
        in_place = (t.device.type == "cpu" and not self._in_device_memory(t)) if host else self._in_device_memory(t)
        if in_place and t.data_ptr() % TRT_ALIGNMENT == 0 and t.is_contiguous():
            return t
        n = t.numel() * t.element_size()
        buf = (torch.empty(n + TRT_ALIGNMENT, dtype=torch.uint8) if host
               else self._device_empty((n + TRT_ALIGNMENT,), torch.uint8))
        start = (-buf.data_ptr()) % TRT_ALIGNMENT
        out = buf[start:start + n].view(t.dtype).view(t.shape)
        out.copy_(t)
        return out

    # -- engines ---------------------------------------------------------------------------
    def _engine(self, stage) -> _Engine:
        with self._lock:
            eng = self._engines.get(stage)
            if eng is None:
                st = self.engines_manifest.stages.get(stage)
                if st is None:
                    raise CheckpointError(f"{self.engines_dir}: no engine for stage {stage!r}; {REBUILD}")
                path = self.engines_dir / st.file
                verify_file(path, st.sha256, f"engine of stage {stage!r}", REBUILD)
                with self._device_scope():
                    engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
                if engine is None:
                    raise CheckpointError(f"{path}: TensorRT could not deserialize the engine (corrupt, or "
                                          f"built by another TensorRT/plugin); {REBUILD}")
                eng = self._engines[stage] = _Engine(engine, self.trt, self._torch_dtypes)
            return eng

    def _context(self, eng: _Engine):
        ctx = getattr(eng.contexts, "ctx", None)
        if ctx is None:  # its activation memory goes to the current device: make it self.device
            with self._device_scope():
                ctx = eng.contexts.ctx = eng.engine.create_execution_context()
        return ctx

    def _check_profile(self, stage, eng, name, shape):
        lo, _, hi = eng.engine.get_tensor_profile_shape(name, 0)
        if len(lo) != len(shape) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            raise InputError(f"stage {stage}: input {name} has shape {tuple(shape)}, outside the engines' "
                             f"profile {tuple(lo)}..{tuple(hi)} (built for {self.limits.describe()}); "
                             "rebuild the engines with larger limits or lower chunk / max_batch")

    def _run(self, stage, feeds):
        torch = self.torch
        eng = self._engine(stage)
        ctx = self._context(eng)
        keep = []  # inputs converted here live until the enqueue is done
        for name, dt, host in eng.inputs:
            if name not in feeds:
                raise CheckpointError(f"engine of stage {stage} wants input {name!r}, which the bundle "
                                      f"stage does not take; {REBUILD}")
            t = torch.as_tensor(feeds[name])
            t = self._placed(t if t.dtype == dt else t.to(dt), host)
            if not host and -1 in tuple(eng.engine.get_tensor_shape(name)):  # static inputs have no profile
                self._check_profile(stage, eng, name, t.shape)
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise InputError(f"stage {stage}: TensorRT rejected shape {tuple(t.shape)} for input {name}")
            self._bind(ctx, stage, name, t)
            keep.append(t)
        outs = []
        for name, dt in eng.outputs:
            t = self._placed(self._device_empty(tuple(ctx.get_tensor_shape(name)), dt), False)
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
