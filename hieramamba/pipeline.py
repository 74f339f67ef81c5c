"""The grounding pipeline: one video's features + any number of queries → per query ranked
``Segment(start_sec, end_sec, score)``. Torch-free (NumPy), one home for what every way of
running the network shares: input checks, the official query grouping, batching, decoding,
Soft-NMS and seconds (``hieramamba.postprocess``).

The network itself is an *engine* with ``plan`` (``hieramamba.artifacts.Plan``), ``max_batch``
and ``level_outputs(clips, text, text_mask, official_batch, on_level)``. Two exist: the eager
whole-sequence forward (``hieramamba.inference.EagerEngine``, behind ``Grounder``) and the chunk
scheduler on a stage backend (``hieramamba.runtime.ChunkedEngine``, behind ``GroundingRuntime``).

Query grouping follows the official evaluator (REFERENCE §8.2): with ``plan.batchify`` all
queries form one group padded to ``plan.max_text_len``, else each query is its own group at its
own length. A group larger than the engine's ``max_batch`` is split into batches; the official
batch-summed mask count (REFERENCE §13.1) still uses the whole group's size, so splitting never
changes the result. Calls are re-entrant: all per-call state lives in the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np

from .errors import InputError
from .features import TEXT_OVERFLOW, NpyRows, check_video_shape, query_tokens_to_keep
from .postprocess import ground_query


@dataclass(frozen=True)
class Segment:
    start_sec: float
    end_sec: float
    score: float


class LevelOutputsEngine(Protocol):
    plan: object            # hieramamba.artifacts.Plan
    max_batch: Optional[int]  # most queries run together; None: a whole group at once
    input_dtype: str        # the dtype features are cast to ("float32", "float16", ...)

    def level_outputs(self, clips: np.ndarray, text: np.ndarray, text_mask: np.ndarray,
                      official_batch: int, on_level: Optional[Callable[[int], None]] = None):
        """``clips (T, Dv)`` float (not padded), ``text (B, Dt, Tt)``, ``text_mask (B, 1, Tt)``
        bool → per level numpy logits ``(B, T_l)``, offsets ``(B, T_l, 2)`` (float64) and masks
        ``(B, T_l)`` bool. ``on_level(level)`` after each level, for progress."""


def default_duration(num_clips: int, fps: float, clip_size: float, clip_stride: float) -> float:
    """End of the last clip (REFERENCE §1), for callers that have no annotated duration."""
    return ((num_clips - 1) * clip_stride + clip_size) / fps


def check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value) \
            or value <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")


def check_duration(duration, num_clips: int, fps: float, clip_stride: float) -> None:
    """A duration the features contradict is refused: segments are clamped to ``[0, duration]``
    (as the official evaluator does), so a duration shorter than the time the clips start
    within would silently squash every answer (e.g. all 10.00–10.00 s). One clip stride of slack:
    a video's features may start their last clip just before its end."""
    if isinstance(duration, bool) or not isinstance(duration, (int, float, np.number)) or not np.isfinite(duration) \
            or duration <= 0:
        raise InputError(f"duration must be a positive number of seconds, got {duration!r}")
    last_start = (num_clips - 1) * clip_stride / fps
    if duration + clip_stride / fps < last_start:
        raise InputError(f"duration {duration:g} s is shorter than the video the features cover: {num_clips} clips "
                         f"at fps {fps:g} and clip stride {clip_stride:g} frames start up to {last_start:.2f} s; every "
                         "segment would be clamped to it. Pass the video's real duration (or none: the end of "
                         "the last clip), or check fps")


def as_feature_array(x, what: str) -> np.ndarray:
    """A NumPy view of floating-point features in native byte order (a torch tensor is converted
    without importing torch; bfloat16, which NumPy lacks, becomes float32 exactly; a big-endian
    ``.npy`` is byte-swapped, values unchanged)."""
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu()
        if not x.is_floating_point():
            raise InputError(f"{what}: expected floating-point features, got dtype {x.dtype}")
        x = (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    if isinstance(x, NpyRows):  # read window by window by the chunked runtime; native order per read
        return x
    if not isinstance(x, np.ndarray):
        raise InputError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what}: expected floating-point features, got dtype {x.dtype}")
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return x


def check_finite(x: np.ndarray, what: str, rows: int = 4096, limit: Optional[float] = None,
                 dtype_name: str = "") -> None:
    """NaN/Inf, and with ``limit`` values beyond what the engine's dtype holds, are refused with
    the first row named (checked in blocks: no mask of the whole video)."""
    for r0 in range(0, x.shape[0], rows):
        block = x[r0:r0 + rows]
        bad = ~np.isfinite(block)
        if bad.any():
            row = r0 + int(np.argwhere(bad)[0, 0])
            raise InputError(f"{what} contains NaN/Inf (first at row {row}); clean or drop those features")
        if limit is not None:
            big = np.abs(block) > limit
            if big.any():
                row = r0 + int(np.argwhere(big)[0, 0])
                raise InputError(f"{what} hold {float(np.abs(block).max()):.6g} (first beyond range at row {row}), "
                                 f"more than {dtype_name} holds ({limit:g}), the precision this runs in: scale "
                                 "the features or use a float32 bundle / model")


class GroundingPipeline:
    """Ground queries in one video with an engine. ``text_overflow``: what to do with a query
    longer than ``plan.max_text_len`` tokens when queries are batched (the official evaluator
    crashes on one): ``"error"`` raises ``InputError``, ``"truncate"`` keeps the first tokens.
    ``progress``: a tqdm bar over levels."""

    def __init__(self, engine, text_overflow: str = "error", progress: bool = False):
        if text_overflow not in TEXT_OVERFLOW:
            raise InputError(f"text_overflow must be 'error' or 'truncate', got {text_overflow!r}")
        self.engine, self.plan = engine, engine.plan
        self.text_overflow, self.progress = text_overflow, progress
        # The largest magnitude the engine's input dtype holds (16-bit engines): beyond it the
        # features would become inf inside the network and be reported as a model NaN.
        self._dtype_name = getattr(engine, "input_dtype", "float32")
        self._limit = float(np.finfo(np.float16).max) if self._dtype_name == "float16" else None

    # -- validation ------------------------------------------------------------------------
    def _check(self, x, what):
        check_finite(x, what, limit=self._limit, dtype_name=self._dtype_name)

    def _video(self, video) -> np.ndarray:
        v = as_feature_array(video, "video features")
        check_video_shape(v.shape, self.plan.vid_in_dim)
        self._check(v, "video features")
        return v

    def _queries(self, queries) -> list:
        if (isinstance(queries, np.ndarray) or type(queries).__module__.startswith("torch")) \
                and getattr(queries, "ndim", 0) == 2:
            queries = [queries]
        if not isinstance(queries, (list, tuple)) or len(queries) == 0:
            raise InputError("queries: expected a non-empty list of (num_tokens, dim) arrays")
        out = []
        for i, q in enumerate(queries):
            q = as_feature_array(q, f"query {i}")
            q = q[:query_tokens_to_keep(i, q.shape, self.plan.text_in_dim, self.plan.max_text_len,
                                        self.plan.batchify, self.text_overflow)]
            self._check(q, f"query {i}")
            out.append(q)
        return out

    # -- running ---------------------------------------------------------------------------
    def groups(self, queries: list) -> list:
        """The official groups: all queries together when batched, else one group per query."""
        return [queries] if self.plan.batchify else [[q] for q in queries]

    def level_outputs(self, video, queries):
        """Per query, per level numpy ``(logits (T_l,), offsets (T_l, 2), masks (T_l,))``."""
        v, qs = self._video(video), self._queries(queries)
        groups = self.groups(qs)
        step = self.engine.max_batch
        batches = [(g, g[b0: b0 + (step or len(g))]) for g in groups for b0 in range(0, len(g), step or len(g))]
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(batches) * self.plan.num_levels, desc="levels", unit="level")
        results = []
        try:
            for group, batch in batches:
                tlen = self.plan.max_text_len if self.plan.batchify else group[0].shape[0]
                dtype = np.result_type(np.float32, *(q.dtype for q in batch))
                text = np.zeros((len(batch), batch[0].shape[1], tlen), dtype=dtype)
                tmask = np.zeros((len(batch), 1, tlen), dtype=bool)
                for i, q in enumerate(batch):
                    text[i, :, : q.shape[0]] = q.T
                    tmask[i, 0, : q.shape[0]] = True
                logits, offsets, masks = self.engine.level_outputs(
                    v, text, tmask, official_batch=len(group),
                    on_level=(lambda _l: bar.update(1)) if bar is not None else None)
                for i in range(len(batch)):
                    results.append(([lg[i] for lg in logits], [of[i] for of in offsets], [m[i] for m in masks]))
        finally:
            if bar is not None:
                bar.close()
        return results

    def ground(self, video, queries, fps: float, duration: Optional[float] = None,
               clip_size: Optional[float] = None, clip_stride: Optional[float] = None) -> list:
        """Ground ``queries`` (list of ``(num_tokens, Dt)``) in ``video`` (``(num_clips, Dv)``).
        ``clip_size``/``clip_stride`` (effective: stride × downsample) default to the plan's;
        ``duration`` defaults to the end of the last clip. Returns, per query, segments sorted by
        score (at most ``plan.max_num_segs``)."""
        check_positive("fps", fps)
        cs = self.plan.clip_size if clip_size is None else clip_size
        st = self.plan.clip_stride if clip_stride is None else clip_stride
        check_positive("clip_stride", st)
        num_clips = int(video.shape[0]) if hasattr(video, "shape") and len(video.shape) else 0
        dur = default_duration(num_clips, fps, cs, st) if duration is None else duration
        if duration is not None:
            check_duration(duration, num_clips, fps, st)
        meta = {"fps": fps, "clip_size": cs, "clip_stride": st, "duration": dur}
        out = []
        for logits, offsets, masks in self.level_outputs(video, queries):
            segs, scores = ground_query(logits, offsets, masks, self.plan.decode, meta, self.plan.vid_stride)
            out.append([Segment(float(s[0]), float(s[1]), float(c)) for s, c in zip(segs, scores)])
        return out
