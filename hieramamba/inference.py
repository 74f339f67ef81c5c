"""Grounding API: video features + any number of queries → ranked ``(start_sec, end_sec, score)``.

It follows the official per-video evaluator (REFERENCE §8.2): the video is zero-padded to a
multiple of ``2^(levels−1)·stride``; with ``eval.batchify_text_queries`` (Ego4D, TACoS) all
queries are padded to ``eval.max_text_len`` and run as one batch, otherwise (MAD) each query
runs the whole pipeline alone at its own length. Under ``official`` mask semantics the number
of queries run together changes the result (REFERENCE §13.1), which is why the default keeps
the official grouping.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .device import resolve_device
from .errors import InputError
from .features import TEXT_OVERFLOW, check_video_shape, query_tokens_to_keep
from .model import HieraMamba
from .postprocess import ground_query


@dataclass(frozen=True)
class Segment:
    start_sec: float
    end_sec: float
    score: float


@dataclass(frozen=True)
class VideoMeta:
    """How feature indices map to seconds (REFERENCE §1). ``clip_stride`` is the effective
    stride in frames between consecutive feature rows (clip_stride × downsample_rate)."""
    fps: float
    clip_size: float
    clip_stride: float
    duration: float

    @staticmethod
    def default_duration(num_clips: int, fps: float, clip_size: float, clip_stride: float) -> float:
        """End of the last clip, for callers that have no annotated duration."""
        return ((num_clips - 1) * clip_stride + clip_size) / fps


def _as_float_array(x, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        raise InputError(f"{what}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise InputError(f"{what}: expected floating-point features, got dtype {x.dtype}")
    return x


def _check_finite(x: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise InputError(f"{what} contains NaN/Inf (first at row {row}); clean or drop those features")


class Grounder:
    """Ground text queries in one video with a loaded model.

    ``text_overflow``: what to do with a query longer than ``eval.max_text_len`` tokens. The
    official evaluator crashes on such a query; ``"error"`` (default) raises an InputError,
    ``"truncate"`` keeps the first ``max_text_len`` tokens."""

    def __init__(self, model: HieraMamba, opt: dict, device="cpu", dtype=torch.float32,
                 text_overflow: str = "error"):
        if text_overflow not in TEXT_OVERFLOW:
            raise InputError(f"text_overflow must be 'error' or 'truncate', got {text_overflow!r}")
        device = resolve_device(device)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.opt = opt
        self.device, self.dtype = device, dtype
        self.text_overflow = text_overflow
        ev = opt["eval"]
        self.eval_cfg = ev
        self.batchify = ev.get("batchify_text_queries", True)
        self.max_text_len = ev.get("max_text_len", 24)
        self.pad_multiple = 2 ** (model.num_levels - 1) * model.vid_stride
        data = opt["train"]["data"]
        self.default_clip_size = data.get("clip_size", 1)
        self.default_clip_stride = data.get("clip_stride", 1) * data.get("downsample_rate", 1)

    @classmethod
    def from_experiment(cls, folder: str | Path, ckpt: str = "last", **kwargs) -> "Grounder":
        from .checkpoint import load_experiment

        mask_semantics = kwargs.pop("mask_semantics", "official")
        model, opt = load_experiment(folder, ckpt, mask_semantics=mask_semantics)
        return cls(model, opt, **kwargs)

    # -- validation ----------------------------------------------------------------------
    def _video(self, video) -> torch.Tensor:
        v = _as_float_array(video, "video features")
        check_video_shape(v.shape, self.model.vid_in_dim)
        _check_finite(v, "video features")
        return v

    def _queries(self, queries) -> list[torch.Tensor]:
        if isinstance(queries, (np.ndarray, torch.Tensor)) and getattr(queries, "ndim", 0) == 2:
            queries = [queries]
        if not isinstance(queries, (list, tuple)) or len(queries) == 0:
            raise InputError("queries: expected a non-empty list of (num_tokens, dim) arrays")
        out = []
        for i, q in enumerate(queries):
            q = _as_float_array(q, f"query {i}")
            keep = query_tokens_to_keep(i, q.shape, self.model.text_in_dim, self.max_text_len,
                                        self.batchify, self.text_overflow)
            q = q[:keep]
            _check_finite(q, f"query {i}")
            out.append(q)
        return out

    # -- running --------------------------------------------------------------------------
    def _prepare_video(self, v: torch.Tensor):
        length = v.shape[0]
        padded = -(-length // self.pad_multiple) * self.pad_multiple
        vid = F.pad(v.t().to(self.device, self.dtype), (0, padded - length))[None]
        mask = (torch.arange(padded, device=self.device) < length)[None, None]
        return vid, mask

    def _text_batch(self, qs: list[torch.Tensor], length: int):
        text = torch.zeros(len(qs), qs[0].shape[1], length, device=self.device, dtype=self.dtype)
        mask = torch.zeros(len(qs), 1, length, device=self.device, dtype=torch.bool)
        for i, q in enumerate(qs):
            text[i, :, : q.shape[0]] = q.t().to(self.device, self.dtype)
            mask[i, 0, : q.shape[0]] = True
        return text, mask

    @torch.no_grad()
    def level_outputs(self, video, queries):
        """Per query, per level numpy ``(logits (T_l,), offsets (T_l, 2), masks (T_l,))``."""
        v, qs = self._video(video), self._queries(queries)
        vid, vid_mask = self._prepare_video(v)
        groups = [qs] if self.batchify else [[q] for q in qs]
        results = []
        for group in groups:
            length = self.max_text_len if self.batchify else group[0].shape[0]
            text, text_mask = self._text_batch(group, length)
            logits, offsets, masks = self.model.forward_levels(vid, vid_mask, text, text_mask)
            for i in range(len(group)):
                results.append(([l[i].double().cpu().numpy() for l in logits],
                                 [o[i].double().cpu().numpy() for o in offsets],
                                 [m[i].cpu().numpy() for m in masks]))
        return results

    def ground(self, video, queries, fps: float, duration: float | None = None,
               clip_size: float | None = None, clip_stride: float | None = None) -> list[list[Segment]]:
        """Ground ``queries`` (list of ``(num_tokens, Dt)``) in ``video`` (``(num_clips, Dv)``).
        ``clip_size``/``clip_stride`` default to the config's data section (stride × downsample);
        ``duration`` defaults to the end of the last clip. Returns, per query, segments sorted
        by score (at most ``eval.nms.max_num_segs``)."""
        if not fps or fps <= 0:
            raise InputError(f"fps must be positive, got {fps}")
        cs = self.default_clip_size if clip_size is None else clip_size
        st = self.default_clip_stride if clip_stride is None else clip_stride
        num_clips = int(getattr(video, "shape", [0])[0]) if hasattr(video, "shape") else 0
        dur = VideoMeta.default_duration(num_clips, fps, cs, st) if duration is None else duration
        meta = {"fps": fps, "clip_size": cs, "clip_stride": st, "duration": dur}
        out = []
        for logits, offsets, masks in self.level_outputs(video, queries):
            segs, scores = ground_query(logits, offsets, masks, self.eval_cfg, meta, self.model.vid_stride)
            out.append([Segment(float(s[0]), float(s[1]), float(c)) for s, c in zip(segs, scores)])
        return out
