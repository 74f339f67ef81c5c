"""Execution paths the benchmark compares, as a registry.

Each path says whether it can run here (``unavailable`` returns the reason, or None) and builds
a runner for one config. A path that cannot run is reported as *skipped* with its reason, one
that raises is reported as *failed* with the error: never silently dropped.

Every runner takes the same inputs, the official per-video eval layout (``Grounder``): one
padded video ``(1, Dv, T)`` + mask and a list of query groups ``(text (n, Dt, Tt), mask)``
(one group of all queries when ``eval.batchify_text_queries``, else one group per query), and
returns, per group, the per-level logits and offsets as numpy arrays (for the output check).
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from hieramamba.errors import BackendUnavailableError


@dataclass
class BenchContext:
    model: object          # HieraMamba, fp32, eval, on ``device``
    opt: dict
    device: str
    threads: int
    workdir: Path          # artifacts (ONNX files) live here, shared with memory subprocesses
    allow_export: bool = True  # False: ONNX paths use files already in workdir, never export
    max_clips: int = 65536     # the longest video and largest query group of the run: what
    max_queries: int = 64      # TensorRT engines are built for


@dataclass
class PathSpec:
    name: str
    description: str
    unavailable: Callable[[BenchContext], Optional[str]]
    build: Callable[[BenchContext], Callable]   # → runner(inputs) -> list[(logits, offsets)]
    prepare: Optional[Callable[[BenchContext], None]] = None  # one-time artifacts (parent only)


REGISTRY: dict[str, PathSpec] = {}


def register(spec: PathSpec) -> PathSpec:
    REGISTRY[spec.name] = spec
    return spec


def _cuda(ctx) -> bool:
    return ctx.device.startswith("cuda")


def _to_numpy(levels):
    logits, offsets = levels[0], levels[1]
    return ([np.asarray(x.detach().float().cpu()) for x in logits],
            [np.asarray(x.detach().float().cpu()) for x in offsets])


# -- eager torch ------------------------------------------------------------------------------

def _eager_runner(ctx: BenchContext, dtype_name: str):
    import torch

    dtype = getattr(torch, dtype_name)
    model = ctx.model if dtype == torch.float32 else copy.deepcopy(ctx.model).to(dtype)

    def run(inputs):
        vid, vmask, groups = inputs
        out = []
        with torch.inference_mode():
            v, vm = vid.to(ctx.device, dtype), vmask.to(ctx.device)
            for text, tmask in groups:
                levels = model.forward_levels(v, vm, text.to(ctx.device, dtype), tmask.to(ctx.device))
                out.append(levels)
            if _cuda(ctx):
                torch.cuda.synchronize()
        return [_to_numpy(o) for o in out]

    return run


def _half_unavailable(dtype_name):
    def check(ctx):
        import torch

        if _cuda(ctx) and dtype_name == "bfloat16" and not torch.cuda.is_bf16_supported():
            return "this GPU does not support bfloat16"
        return None

    return check


register(PathSpec("eager_fp32", "PyTorch eager, fp32 (the reference of every ratio)",
                  lambda ctx: None, lambda ctx: _eager_runner(ctx, "float32")))
register(PathSpec("eager_fp16", "PyTorch eager, fp16 weights and activations",
                  _half_unavailable("float16"), lambda ctx: _eager_runner(ctx, "float16")))
register(PathSpec("eager_bf16", "PyTorch eager, bf16 weights and activations",
                  _half_unavailable("bfloat16"), lambda ctx: _eager_runner(ctx, "bfloat16")))


# -- eager with the fused CUDA scan kernel -----------------------------------------------------

def _fused_unavailable(ctx) -> Optional[str]:
    if not _cuda(ctx):
        return "the fused HydraScan kernel is CUDA only (eager on CPU already uses the C++ kernel)"
    from hieramamba.native_library import BUILD_COMMAND, native_library_info

    info = native_library_info()
    if info is None:
        return f"plugin library not built ({BUILD_COMMAND})"
    if not info["has_cuda"]:
        return "plugin library built without the CUDA kernel (nvcc was not found at build time)"
    return None


def _fused_runner(ctx: BenchContext):
    """Eager fp16 with the CUDA kernel of plugins/ as the op's CUDA implementation, registered
    only around this path's own calls (the other paths keep the reference scan on CUDA)."""
    from hieramamba.ops import register_kernel, unregister_kernel
    from hieramamba.ops.hydra_scan.native import native_hydra_scan_cuda

    base = _eager_runner(ctx, "float16")

    def run(inputs):
        register_kernel("cuda", native_hydra_scan_cuda)
        try:
            return base(inputs)
        finally:
            unregister_kernel("cuda")

    return run


register(PathSpec("eager_fused", "PyTorch eager fp16 with the fused CUDA HydraScan kernel (plugins/)",
                  _fused_unavailable, _fused_runner))


# -- eager + CUDA graphs ----------------------------------------------------------------------

def _cuda_graph_runner(ctx: BenchContext, graph_factory=None):
    """The whole forward as one CUDA graph per input shape (``runtime/backends/cuda_graphs.StageGraphs``:
    captured at first sight after a side-stream warm-up, inputs copied into static tensors,
    outputs cloned after each replay). ``graph_factory``: a stand-in for tests on CPU."""
    import torch

    from hieramamba.runtime.backends.cuda_graphs import StageGraphs

    graphs = StageGraphs(ctx.device, capture_after=1, graph_factory=graph_factory)
    model = ctx.model

    def run(inputs):
        vid, vmask, groups = inputs
        v, vm = vid.to(ctx.device), vmask.to(ctx.device)
        results = []
        with torch.inference_mode():
            for text, tmask in groups:
                results.append(graphs.run("forward_levels", model.forward_levels, v, vm,
                                          text.to(ctx.device), tmask.to(ctx.device)))
        if _cuda(ctx):
            torch.cuda.synchronize()
        return [_to_numpy(o) for o in results]

    return run


register(PathSpec("eager_cuda_graphs", "PyTorch eager fp32 captured into CUDA graphs",
                  lambda ctx: None if _cuda(ctx) else "needs a CUDA device (none here)",
                  _cuda_graph_runner))


# -- ONNX Runtime (whole-model graphs from the export package) ---------------------------------

def _onnx_file(ctx, portable: bool) -> Path:
    return ctx.workdir / f"model_{'portable' if portable else 'custom'}.onnx"


def _ort_unavailable(ctx) -> Optional[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed (extra [export] or [runtime])"
    return None


def _ort_unavailable_for(portable: bool):
    def check(ctx):
        reason = _ort_unavailable(ctx)
        if reason is None and not ctx.allow_export and not _onnx_file(ctx, portable).is_file():
            reason = (f"no {_onnx_file(ctx, portable).name} in {ctx.workdir} and exporting was switched off "
                      "(--no-export)")
        return reason

    return check


def _ort_prepare(portable: bool):
    def prepare(ctx):
        import time

        path = _onnx_file(ctx, portable)
        if path.is_file():
            return
        t0 = time.perf_counter()
        from hieramamba.export.onnx_export import export_model

        model = copy.deepcopy(ctx.model).cpu() if _cuda(ctx) else ctx.model
        result = export_model(model.float().eval(), portable=portable)
        path.parent.mkdir(parents=True, exist_ok=True)
        proto = getattr(result, "model_proto", result)
        path.write_bytes(proto.SerializeToString())
        (path.with_suffix(".seconds")).write_text(f"{time.perf_counter() - t0:.3f}")

    return prepare


def _ort_runner(portable: bool, scan_kernel: str = "graph"):
    def build(ctx):
        import onnxruntime as ort

        path = _onnx_file(ctx, portable)
        if not path.is_file():
            raise BackendUnavailableError(f"{path} was not exported (prepare step skipped or failed)")
        from hieramamba.ort_options import ort_session_options

        so = ort_session_options(ort, ctx.threads, scan_kernel=scan_kernel)
        so.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if _cuda(ctx) and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        sess = ort.InferenceSession(str(path), so, providers=providers)
        names = [o.name for o in sess.get_outputs()]
        in_names = [i.name for i in sess.get_inputs()]

        def run(inputs):
            vid, vmask, groups = inputs
            v, vm = vid.cpu().numpy(), vmask.cpu().numpy()
            results = []
            for text, tmask in groups:
                outs = sess.run(None, dict(zip(in_names, (v, vm, text.cpu().numpy(), tmask.cpu().numpy()))))
                by = dict(zip(names, outs))
                n = len(names) // 3
                results.append(([by[f"logits_{l}"] for l in range(n)], [by[f"offsets_{l}"] for l in range(n)]))
            return results

        return run

    return build


register(PathSpec("ort_custom", "ONNX Runtime, graph with HydraScan nodes (local-function body)",
                  _ort_unavailable_for(False), _ort_runner(False), _ort_prepare(False)))
register(PathSpec("ort_portable", "ONNX Runtime, portable graph (HydraScan inlined)",
                  _ort_unavailable_for(True), _ort_runner(True), _ort_prepare(True)))


def _ort_native_unavailable(ctx) -> Optional[str]:
    from hieramamba.native_library import BUILD_COMMAND, load_native_library

    if load_native_library(required=False) is None:
        return f"plugin library not built ({BUILD_COMMAND})"
    return _ort_unavailable_for(False)(ctx)


register(PathSpec("ort_native", "ONNX Runtime, graph with HydraScan nodes run by the C++ kernel "
                                "(libhieramamba_plugins as custom-op library)",
                  _ort_native_unavailable, _ort_runner(False, "native"), _ort_prepare(False)))


# -- chunked runtime and TensorRT ------------------------------------------------------------

def _scheduler_runner(backend, chunk_for=None):
    """A runner driving ``ChunkScheduler`` over ``backend`` group by group, with the official
    batch count of each group, at the chunk ``GroundingRuntime`` picks (``auto_chunk``;
    ``chunk_for(level-0 tokens)`` overrides it: TensorRT engines have a largest chunk)."""
    from hieramamba.runtime.api import auto_chunk
    from hieramamba.runtime.scheduler import ChunkScheduler

    def run(inputs):
        vid, vmask, groups = inputs
        v = np.ascontiguousarray(vid[0].cpu().numpy())
        valid = int(vmask.sum())
        chunk = (chunk_for or auto_chunk)(v.shape[-1] // backend.plan.vid_stride)
        results = []
        for text, tmask in groups:
            sched = ChunkScheduler(backend.plan, backend, chunk)
            logits, offsets, _ = sched.run(v, valid, text.cpu().numpy(), tmask.cpu().numpy(),
                                           official_batch=text.shape[0])
            results.append(([np.asarray(x) for x in logits], [np.asarray(x) for x in offsets]))
        return results

    return run


def _runtime_runner(ctx: BenchContext):
    """``GroundingRuntime.from_model`` (torch backend) through the chunk scheduler."""
    from hieramamba.runtime.backends.torch import TorchBackend

    return _scheduler_runner(TorchBackend(ctx.model, ctx.opt, device=ctx.device))


register(PathSpec("runtime_chunked", "hieramamba.runtime chunk scheduler, torch backend (GroundingRuntime.from_model)",
                  lambda ctx: None, _runtime_runner))


def _runtime_graphs_runner(ctx: BenchContext):
    """The torch backend with each stage replayed as a CUDA graph, captured at first sight (in the
    bench's warm-up run, not in a timed round)."""
    from hieramamba.runtime.backends.cuda_graphs import StageGraphs
    from hieramamba.runtime.backends.torch import TorchBackend

    return _scheduler_runner(TorchBackend(ctx.model, ctx.opt, device=ctx.device,
                                          cuda_graphs=StageGraphs(ctx.device, capture_after=1)))


register(PathSpec("runtime_chunked_cuda_graphs",
                  "hieramamba.runtime chunk scheduler, torch backend, stages replayed as CUDA graphs",
                  lambda ctx: None if _cuda(ctx) else "needs a CUDA device (none here)",
                  _runtime_graphs_runner))


def _bundle_dir(ctx, dtype: str) -> Path:
    return ctx.workdir / f"bundle_{dtype}"


def _bundle_unavailable_for(dtype: str):
    def check(ctx):
        reason = _ort_unavailable(ctx)
        if reason is None and not ctx.allow_export and not (_bundle_dir(ctx, dtype) / "manifest.json").is_file():
            reason = f"no {_bundle_dir(ctx, dtype).name} in {ctx.workdir} and exporting was switched off (--no-export)"
        return reason

    return check


def _bundle_prepare(dtype: str):
    def prepare(ctx):
        import time

        out = _bundle_dir(ctx, dtype)
        if (out / "manifest.json").is_file():
            return
        from hieramamba.export.stages import export_bundle

        t0 = time.perf_counter()
        model = copy.deepcopy(ctx.model).cpu() if _cuda(ctx) else ctx.model
        export_bundle(model.float().eval(), ctx.opt, out, dtype=dtype)
        (ctx.workdir / f"bundle_{dtype}.seconds").write_text(f"{time.perf_counter() - t0:.3f}")

    return prepare


def _bundle_runner(dtype: str):
    """The exported stage bundle on ONNX Runtime through the chunk scheduler (default chunk),
    group by group with the official batch count of each group."""
    def build(ctx):
        import onnxruntime as ort

        from hieramamba.runtime.backends.onnxruntime import OrtBackend

        providers = ["CPUExecutionProvider"]
        if _cuda(ctx) and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        return _scheduler_runner(OrtBackend(_bundle_dir(ctx, dtype), providers=providers, intra_op_threads=ctx.threads))

    return build


for _dtype in ("float16", "float32"):
    register(PathSpec(f"runtime_ort_{_dtype.replace('float', 'fp')}",
                      f"hieramamba.runtime chunk scheduler on an exported {_dtype} bundle, ONNX Runtime "
                      "(the backend's defaults: HydraScan by the C++ kernel when built, one shared CPU arena)",
                      _bundle_unavailable_for(_dtype), _bundle_runner(_dtype), _bundle_prepare(_dtype)))


def _bf16_bundle_unavailable(ctx) -> Optional[str]:
    if _cuda(ctx):
        return "a bfloat16 bundle runs on ONNX Runtime's CPU provider only"
    from hieramamba.native_library import load_native_library

    if load_native_library() is None:
        return "needs libhieramamba_plugins (its Bf16Conv kernel): bash scripts/setup.sh builds it"
    return _bundle_unavailable_for("bfloat16")(ctx)


register(PathSpec("runtime_ort_bf16",
                  "hieramamba.runtime chunk scheduler on an exported bfloat16 bundle (float32 graphs, matrix products "
                  "with bf16 operands and fp32 accumulation: VDPBF16PS on AVX512-BF16 CPUs), ONNX Runtime CPU",
                  _bf16_bundle_unavailable, _bundle_runner("bfloat16"), _bundle_prepare("bfloat16")))


def _trt_engines_dir(ctx) -> Path:
    return ctx.workdir / f"trt_fp16_clips{ctx.max_clips}_q{ctx.max_queries}"


def _trt_limits(ctx):
    from hieramamba.artifacts import DEFAULT_ENGINE_CHUNK, EngineLimits

    return EngineLimits(chunk=DEFAULT_ENGINE_CHUNK, max_batch=ctx.max_queries,
                        max_text_len=ctx.opt["eval"]["max_text_len"], max_clips=ctx.max_clips)


def _trt_unavailable(ctx) -> Optional[str]:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (extra [tensorrt])"
    if not _cuda(ctx):
        return "TensorRT needs a CUDA device (none here)"
    reason = _bundle_unavailable_for("float16")(ctx)
    if reason is None and not ctx.allow_export and not (_trt_engines_dir(ctx) / "engines.json").is_file():
        reason = f"no {_trt_engines_dir(ctx).name} in {ctx.workdir} and building was switched off (--no-export)"
    return reason


def _trt_prepare(ctx):
    """The fp16 bundle, then its per-stage engines for this run's longest video and largest
    query group (``hieramamba build-engines``)."""
    _bundle_prepare("float16")(ctx)
    out = _trt_engines_dir(ctx)
    if not (out / "engines.json").is_file():
        from hieramamba.export.trt_build import build_bundle_engines

        build_bundle_engines(_bundle_dir(ctx, "float16"), _trt_limits(ctx), out, progress=False)


def _trt_runner(ctx):
    """Per-stage TensorRT engines of the fp16 bundle through the chunk scheduler."""
    from hieramamba.runtime.backends.tensorrt import TrtBackend

    backend = TrtBackend(_bundle_dir(ctx, "float16"), _trt_engines_dir(ctx), device=ctx.device)
    return _scheduler_runner(backend, lambda tokens: backend.limits.chunk)


register(PathSpec("runtime_trt_fp16", "hieramamba.runtime chunk scheduler on TensorRT engines per stage "
                  "(fp16 bundle, HydraScan plugin)", _trt_unavailable, _trt_runner, _trt_prepare))
