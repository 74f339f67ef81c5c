"""``GroundingRuntime``: one video's features + any number of queries → per query ranked
``(start_sec, end_sec, score)``, the same answer as ``hieramamba.inference.Grounder``.

Torch-free: validation, padding, query grouping and batching, decoding, Soft-NMS and seconds
are NumPy (``hieramamba.postprocess``); the network runs chunk by chunk (``ChunkScheduler``) on
a backend. Query grouping follows the official evaluator (REFERENCE §8.2): with
``batchify_text_queries`` all queries form one group padded to ``max_text_len``, else each query
is its own group at its own length. A group larger than ``max_batch`` is split into batches;
the official batch-summed mask count (REFERENCE §13.1) still uses the whole group's size, so
splitting never changes the result. Calls are re-entrant: all per-call state lives in the call,
so one runtime may serve several threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hieramamba.errors import InputError
from hieramamba.features import TEXT_OVERFLOW, check_video_shape, query_tokens_to_keep
from hieramamba.postprocess import ground_query

from .scheduler import ChunkScheduler, PaddedClips


@dataclass(frozen=True)
class Segment:
    start_sec: float
    end_sec: float
    score: float


def _as_array(x, what: str) -> np.ndarray:
    if type(x).__module__.startswith("torch"):  # a torch tensor, without importing torch
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what}: expected floating-point features, got dtype {x.dtype}")
    return x


def _check_finite(x: np.ndarray, what: str, rows: int = 4096) -> None:
    for r0 in range(0, x.shape[0], rows):  # in blocks: no mask of the whole video
        bad = ~np.isfinite(x[r0:r0 + rows])
        if bad.any():
            row = r0 + int(np.argwhere(bad)[0, 0])
            raise InputError(f"{what} contains NaN/Inf (first at row {row}); clean or drop those features")


class GroundingRuntime:
    """Chunked grounding on a backend. ``chunk``: level tokens per chunk; ``max_batch``: most
    queries run through the backbone together; ``attn_rows``: query rows per block of the
    global-attention levels (default: a fixed score-matrix size per block, see
    ``runtime/scheduler.py``; any value is exact); ``text_overflow``:
    ``"error"`` or ``"truncate"`` for queries longer than ``eval.max_text_len``; ``progress``: a
    tqdm bar over levels."""

    def __init__(self, backend, plan: dict, chunk: int = 2048, max_batch: int = 16,
                 text_overflow: str = "error", progress: bool = False, attn_rows=None):
        if text_overflow not in TEXT_OVERFLOW:
            raise InputError(f"text_overflow must be 'error' or 'truncate', got {text_overflow!r}")
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InputError(f"max_batch must be a positive int, got {max_batch!r}")
        ChunkScheduler(plan, backend, chunk, attn_rows=attn_rows)  # validates chunk, attn_rows
        if hasattr(backend, "check_request"):  # backends built for limits (TensorRT engines)
            backend.check_request(chunk=chunk, max_batch=max_batch)
        self.backend, self.plan = backend, plan
        self.chunk, self.max_batch, self.attn_rows = chunk, max_batch, attn_rows
        self.text_overflow, self.progress = text_overflow, progress

    @classmethod
    def from_model(cls, model, opt: dict, device="cpu", dtype="float32", cuda_graphs=False,
                   **kwargs) -> "GroundingRuntime":
        """Torch backend over a loaded ``HieraMamba`` (imports torch): eager, or with
        ``cuda_graphs=True`` (CUDA ``device`` only) each stage replays a CUDA graph captured for
        its shapes the second time they occur (``runtime/cuda_graphs.py``; same results, fewer
        launches; memory: one set of stage outputs per captured shape). A ``StageGraphs`` may be
        passed instead of ``True`` to set its capture policy."""
        import torch

        from .plan import plan_from_model
        from .torch_backend import TorchBackend

        tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(
            dtype, dtype)
        backend = TorchBackend(model, device, tdtype, cuda_graphs=cuda_graphs)
        return cls(backend, plan_from_model(model, opt), **kwargs)

    @classmethod
    def load(cls, bundle_dir, backend: str = "onnxruntime", providers=None, threads=None,
             plugin_library=None, engines=None, device="cuda", scan_kernel="auto",
             cpu_arena="shared", **kwargs) -> "GroundingRuntime":
        """Open an export bundle (``hieramamba.export.stages.export_bundle``) on ``backend``:
        ``"onnxruntime"`` (``providers`` as ORT takes them, ``threads`` intra-op threads per
        call, default ORT's: one per physical core; ``scan_kernel``: ``"auto"`` runs the
        HydraScan nodes with the C++ kernel of ``libhieramamba_plugins`` when it is built, else
        with their ONNX function body — ``"native"`` / ``"graph"`` force one; the choice made is
        ``runtime.backend.scan_kernel``; ``cpu_arena``: ``"shared"`` (one CPU arena for every stage
        session), ``"off"`` (leanest memory with large query batches) or ``"session"``, see
        ``OrtBackend``) or ``"tensorrt"`` (the engines
        ``hieramamba build-engines`` wrote, default ``<bundle>/trt``, on CUDA ``device``; chunk,
        max_batch and attn_rows default to the engines' limits). The torch backend runs a model,
        not a bundle: use ``from_model``."""
        if backend == "onnxruntime":
            from .bundle import OrtBackend

            be = OrtBackend(bundle_dir, providers=providers, intra_op_threads=threads,
                            scan_kernel=scan_kernel, cpu_arena=cpu_arena)
            return cls(be, be.plan, **kwargs)
        if backend == "tensorrt":
            from .trt import TrtBackend, import_tensorrt

            import_tensorrt()  # the reason first, before any file is looked at
            be = TrtBackend(bundle_dir, engines_dir=engines, plugin_library=plugin_library, device=device)
            kwargs.setdefault("chunk", be.limits.chunk)
            kwargs.setdefault("max_batch", min(16, be.limits.max_batch))
            kwargs.setdefault("attn_rows", be.limits.attn_rows)
            return cls(be, be.plan, **kwargs)
        raise InputError(f"backend must be 'onnxruntime' or 'tensorrt' for a bundle, got {backend!r} "
                         "(the torch backend: GroundingRuntime.from_model)")

    # -- validation ------------------------------------------------------------------------
    def _video(self, video) -> np.ndarray:
        v = _as_array(video, "video features")
        check_video_shape(v.shape, self.plan["vid_in_dim"])
        _check_finite(v, "video features")
        return v

    def _queries(self, queries) -> list[np.ndarray]:
        if (isinstance(queries, np.ndarray) or type(queries).__module__.startswith("torch")) \
                and getattr(queries, "ndim", 0) == 2:
            queries = [queries]
        if not isinstance(queries, (list, tuple)) or len(queries) == 0:
            raise InputError("queries: expected a non-empty list of (num_tokens, dim) arrays")
        out = []
        for i, q in enumerate(queries):
            q = _as_array(q, f"query {i}")
            q = q[:query_tokens_to_keep(i, q.shape, self.plan["text_in_dim"], self.plan["max_text_len"],
                                        self.plan["batchify"], self.text_overflow)]
            _check_finite(q, f"query {i}")
            out.append(q)
        return out

    # -- running ---------------------------------------------------------------------------
    def level_outputs(self, video, queries):
        """Per query, per level numpy ``(logits (T_l,), offsets (T_l, 2), masks (T_l,))``."""
        v, qs = self._video(video), self._queries(queries)
        pm = self.plan["pad_multiple"]
        length = v.shape[0]
        if hasattr(self.backend, "check_request"):
            self.backend.check_request(num_clips=length)
        vid = PaddedClips(v, -(-length // pm) * pm)  # windows are padded as they are read
        groups = [qs] if self.plan["batchify"] else [[q] for q in qs]
        bar = None
        if self.progress:
            from tqdm import tqdm

            n_batches = sum(-(-len(g) // self.max_batch) for g in groups)
            bar = tqdm(total=n_batches * self.plan["num_levels"], desc="levels", unit="level")
        results = []
        try:
            for group in groups:
                tlen = self.plan["max_text_len"] if self.plan["batchify"] else group[0].shape[0]
                for b0 in range(0, len(group), self.max_batch):
                    batch = group[b0: b0 + self.max_batch]
                    text = np.zeros((len(batch), batch[0].shape[1], tlen), dtype=np.float32)
                    tmask = np.zeros((len(batch), 1, tlen), dtype=bool)
                    for i, q in enumerate(batch):
                        text[i, :, : q.shape[0]] = q.T
                        tmask[i, 0, : q.shape[0]] = True
                    sched = ChunkScheduler(self.plan, self.backend, self.chunk, attn_rows=self.attn_rows,
                                           progress=(lambda _l: bar.update(1)) if bar else None)
                    logits, offsets, masks = sched.run(vid, length, text, tmask, official_batch=len(group))
                    for i in range(len(batch)):
                        results.append(([lg[i] for lg in logits], [of[i] for of in offsets],
                                        [m[i] for m in masks]))
        finally:
            if bar is not None:
                bar.close()
        return results

    def ground(self, video, queries, fps: float, duration: float | None = None,
               clip_size: float | None = None, clip_stride: float | None = None) -> list[list[Segment]]:
        """As ``Grounder.ground``: per query, segments sorted by score."""
        if not fps or fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        cs = self.plan["clip_size"] if clip_size is None else clip_size
        st = self.plan["clip_stride"] if clip_stride is None else clip_stride
        num_clips = int(video.shape[0]) if hasattr(video, "shape") and len(video.shape) else 0
        dur = ((num_clips - 1) * st + cs) / fps if duration is None else duration
        meta = {"fps": fps, "clip_size": cs, "clip_stride": st, "duration": dur}
        out = []
        for logits, offsets, masks in self.level_outputs(video, queries):
            segs, scores = ground_query(logits, offsets, masks, self.plan["eval"], meta, self.plan["vid_stride"])
            out.append([Segment(float(s[0]), float(s[1]), float(c)) for s, c in zip(segs, scores)])
        return out
