"""``GroundingRuntime``: the grounding pipeline (``hieramamba.pipeline``) over ``ChunkedEngine``,
the chunk scheduler on a stage backend: the same answers as ``hieramamba.inference.Grounder``
(to the backend dtype's rounding), with memory bounded by the chunk size, not the video length.

Torch-free: the pipeline and the scheduler are NumPy; the backend runs the network (ONNX Runtime
on a bundle, TensorRT engines, or the torch model itself).
"""

from __future__ import annotations

from hieramamba.errors import InputError
from hieramamba.ort_options import DEFAULT_SCAN_KERNEL
from hieramamba.pipeline import GroundingPipeline

from .scheduler import (DEFAULT_CHUNK, DEFAULT_SPILL_MB, WHOLE_LEVEL_TOKENS, ChunkScheduler, PaddedClips,
                        check_chunking, check_spill)


def _check_max_batch(max_batch):
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise InputError(f"max_batch must be a positive int, got {max_batch!r}")
    return max_batch


def auto_chunk(level0_tokens: int) -> int:
    """The chunk for ``chunk=None``: a video of at most ``WHOLE_LEVEL_TOKENS`` level-0 tokens runs
    every level as one chunk (each stage called once per level: no halo windows, no second pass
    over the scan inputs; Ego4D 2304 clips, fp32 bundle: 1.20 → 1.07 s); longer videos use
    ``DEFAULT_CHUNK`` (memory flat in length)."""
    return level0_tokens + level0_tokens % 2 if level0_tokens <= WHOLE_LEVEL_TOKENS else DEFAULT_CHUNK


class ChunkedEngine:
    """Level outputs of one query batch by ``ChunkScheduler`` on ``backend``: ``chunk`` level
    tokens per chunk (None: ``auto_chunk`` of each video), at most ``max_batch`` queries per
    backbone batch, ``attn_rows`` query rows per block of the global-attention levels (default:
    a fixed score-matrix size per block, ``hieramamba.stage_table.ATTN_SCORES_PER_BLOCK``; any
    value is exact); ``spill_mb``/``spill_dir``: host-array levels larger than this many MB are
    kept in a temporary file in ``spill_dir`` (None: never; ``runtime/scheduler.py``)."""

    def __init__(self, backend, chunk=None, max_batch: int = 16, attn_rows=None, spill_mb=DEFAULT_SPILL_MB,
                 spill_dir=None):
        check_chunking(DEFAULT_CHUNK if chunk is None else chunk, attn_rows)
        check_spill(spill_mb, spill_dir)
        self.spill_mb, self.spill_dir = spill_mb, spill_dir
        self.max_batch = _check_max_batch(max_batch)
        if chunk is not None:
            backend.check_request(chunk=chunk, max_batch=max_batch)
        else:
            backend.check_request(max_batch=max_batch)
        self.backend, self.plan = backend, backend.plan
        self.chunk, self.attn_rows = chunk, attn_rows
        self.input_dtype = str(backend.arrays.dtype).replace("torch.", "")

    def level_outputs(self, clips, text, text_mask, official_batch, on_level=None):
        length = clips.shape[0]
        self.backend.check_request(num_clips=length)
        pm = self.plan.pad_multiple
        padded = -(-length // pm) * pm
        vid = PaddedClips(clips, padded)  # windows are padded as they are read
        chunk = self.chunk if self.chunk is not None else auto_chunk(padded // self.plan.vid_stride)
        sched = ChunkScheduler(self.plan, self.backend, chunk, attn_rows=self.attn_rows, progress=on_level,
                               spill_mb=self.spill_mb, spill_dir=self.spill_dir)
        return sched.run(vid, length, text, text_mask, official_batch=official_batch)


class GroundingRuntime(GroundingPipeline):
    """Chunked grounding on a backend. ``chunk``: level tokens per chunk (default None: the whole
    level for videos up to ``WHOLE_LEVEL_TOKENS`` level-0 tokens, else ``DEFAULT_CHUNK``; ``auto_chunk``);
    ``max_batch``: most queries run through the backbone together; ``attn_rows``: query rows per block of the
    global-attention levels; ``text_overflow``: ``"error"`` or ``"truncate"`` for queries longer
    than ``eval.max_text_len``; ``progress``: a tqdm bar over levels; ``spill_mb``, ``spill_dir``:
    levels of host arrays larger than ``spill_mb`` MB (default 16; None: never) wait for the next
    level in an unlinked temporary file in ``spill_dir`` (default: the system's), which keeps peak
    memory flat in video length."""

    def __init__(self, backend, chunk=None, max_batch: int = 16, text_overflow: str = "error",
                 progress: bool = False, attn_rows=None, spill_mb=DEFAULT_SPILL_MB, spill_dir=None):
        super().__init__(ChunkedEngine(backend, chunk, max_batch, attn_rows, spill_mb, spill_dir),
                         text_overflow=text_overflow, progress=progress)
        self.backend = backend
        self.chunk, self.max_batch, self.attn_rows = chunk, max_batch, attn_rows

    @classmethod
    def from_model(cls, model, opt: dict, device="cpu", dtype="float32", cuda_graphs=False,
                   **kwargs) -> "GroundingRuntime":
        """Torch backend over a loaded ``HieraMamba`` (imports torch; the model is moved to
        ``device``/``dtype`` in place): eager, or with ``cuda_graphs=True`` (CUDA ``device`` only)
        each stage replays a CUDA graph captured for its shapes the second time they occur
        (``runtime/backends/cuda_graphs.py``; same results, fewer launches; memory: one set of
        stage outputs per captured shape). A ``StageGraphs`` may be passed instead of ``True`` to
        set its capture policy."""
        import torch

        from .backends.torch import TorchBackend

        tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype, dtype)
        return cls(TorchBackend(model, opt, device, tdtype, cuda_graphs=cuda_graphs), **kwargs)

    @classmethod
    def load(cls, bundle_dir, backend: str = "onnxruntime", providers=None, threads=None,
             plugin_library=None, engines=None, device="cuda", scan_kernel=DEFAULT_SCAN_KERNEL,
             cpu_arena="shared", **kwargs) -> "GroundingRuntime":
        """Open an export bundle (``hieramamba export-bundle``) on ``backend``: ``"onnxruntime"``
        (``providers`` as ORT takes them, ``threads`` intra-op threads per call, default ORT's:
        one per physical core; ``scan_kernel``: ``"auto"`` runs the HydraScan nodes with the C++
        kernel of ``libhieramamba_plugins`` when it is built, else with their ONNX function body —
        ``"native"`` / ``"graph"`` force one; the choice made is ``runtime.backend.scan_kernel``;
        ``cpu_arena``: ``"shared"`` (one CPU arena for every stage session), ``"off"`` (leanest
        memory with large query batches) or ``"session"``) or ``"tensorrt"`` (the engines
        ``hieramamba build-engines`` wrote, default ``<bundle>/trt``, on CUDA ``device``; chunk,
        max_batch and attn_rows default to the engines' limits). The torch backend runs a model,
        not a bundle: use ``from_model``."""
        if backend == "onnxruntime":
            from .backends.onnxruntime import OrtBackend

            return cls(OrtBackend(bundle_dir, providers=providers, intra_op_threads=threads,
                                  scan_kernel=scan_kernel, cpu_arena=cpu_arena), **kwargs)
        if backend == "tensorrt":
            from hieramamba.trt_env import import_tensorrt

            from .backends.tensorrt import TrtBackend

            import_tensorrt()  # the reason first, before any file is looked at
            be = TrtBackend(bundle_dir, engines_dir=engines, plugin_library=plugin_library, device=device)
            kwargs.setdefault("chunk", be.limits.chunk)
            kwargs.setdefault("max_batch", min(16, be.limits.max_batch))
            kwargs.setdefault("attn_rows", be.limits.attn_rows)
            return cls(be, **kwargs)
        raise InputError(f"backend must be 'onnxruntime' or 'tensorrt' for a bundle, got {backend!r} "
                         "(the torch backend: GroundingRuntime.from_model)")
