"""Decoding of head outputs into ranked moments: point grid, candidates, Soft-NMS + voting, seconds.

Reproduces the official evaluator path (REFERENCE §8; ``EvaluatorAuxiliary.predict`` →
``_collect_segments`` → ``libs/nms`` → seconds) for one query at a time.

NumPy only, on purpose: the torch-free runtime imports this module, so it must never import torch.

Precision follows the official code: candidates are computed in the dtype of the head outputs
(float64 for the golden float64 run, float32 in deployment); Soft-NMS, voting and the conversion
to seconds run in float32 because the official C++ NMS only accepts float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hieramamba.nvtx import nvtx_range  # torch-free, like this module

from .errors import InputError

__all__ = [
    "level_points",
    "regression_ranges",
    "collect_candidates",
    "soft_nms_voting",
    "to_seconds",
    "ground_query",
]

_F32 = np.float32
# Added to every length inside the official C++ NMS (``areas = x2 - x1 + 1e-6``).
_NMS_LEN_EPS = _F32(1e-6)


# --------------------------------------------------------------------------------------------
# Point grid (official ``PtGenerator``)
# --------------------------------------------------------------------------------------------

def _check_grid(num_levels, max_len) -> None:
    if not isinstance(num_levels, (int, np.integer)) or num_levels < 1:
        raise InputError(f"num_levels must be a positive int, got {num_levels!r}")
    if not isinstance(max_len, (int, np.integer)) or max_len < 1:
        raise InputError(f"max_len must be a positive int, got {max_len!r}")
    if max_len % 2 ** (num_levels - 1) != 0:
        raise InputError(
            f"max_len must be a multiple of 2**(num_levels-1) = {2 ** (num_levels - 1)}, got {max_len}")


def regression_ranges(num_levels: int, max_len: int, regression_range: float = 4,
                      sigma: float = 0.5) -> list[tuple[float, float]]:
    """Per-level ``(min, max)`` regression range in level-0 grid units (REFERENCE §8.1).

    Level 0 is ``(0, r)``; each next level is ``(r·sigma, 2r)`` with ``r`` the previous upper
    bound; the last level's upper bound is raised to ``max_len + 1`` so that the coarsest level
    can regress any segment (not applied when there is a single level, as in the official code).
    """
    _check_grid(num_levels, max_len)
    if not 0 < sigma <= 1:
        raise InputError(f"sigma must be in (0, 1], got {sigma!r}")
    if not 0 < regression_range <= max_len:
        raise InputError(f"regression_range must be in (0, max_len={max_len}], got {regression_range!r}")
    ranges = [(0.0, float(regression_range))]
    upper = regression_range
    for level in range(1, num_levels):
        lo, hi = upper * sigma, upper * 2
        if level == num_levels - 1:
            hi = max(hi, max_len + 1)
        ranges.append((float(lo), float(hi)))
        upper = hi
    return ranges


def level_points(num_levels: int, max_len: int, regression_range: float = 4, sigma: float = 0.5,
                 use_offset: bool = False) -> list[np.ndarray]:
    """Candidate points per pyramid level, in the official ``PtGenerator`` layout.

    Level ``l`` gets ``max_len // 2**l`` rows ``(position, range_min, range_max, stride)``
    (float32, as the official buffers): position ``i·2**l`` (``+ 2**l / 2`` with ``use_offset``),
    the level's regression range (used only by training labels) and the stride ``2**l`` that
    scales the predicted offsets. A video whose level ``l`` has ``T_l`` steps uses the first
    ``T_l`` rows.
    """
    ranges = regression_ranges(num_levels, max_len, regression_range, sigma)
    points = []
    for level, (lo, hi) in enumerate(ranges):
        stride = 2 ** level
        pos = np.arange(0, max_len, stride, dtype=_F32)
        if use_offset:
            pos += _F32(0.5 * stride)
        table = np.empty((len(pos), 4), dtype=_F32)
        table[:, 0] = pos
        table[:, 1] = lo
        table[:, 2] = hi
        table[:, 3] = stride
        points.append(table)
    return points


# --------------------------------------------------------------------------------------------
# Candidates (official ``_collect_segments``)
# --------------------------------------------------------------------------------------------

def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0: sigmoid is then 0
        return 1 / (1 + np.exp(-x))


def _as_levels(logits_per_level, offsets_per_level, masks_per_level):
    n = len(logits_per_level)
    if n == 0:
        raise InputError("expected at least one pyramid level, got 0")
    if len(offsets_per_level) != n or len(masks_per_level) != n:
        raise InputError(
            "logits, offsets and masks must have one entry per level: got "
            f"{n}, {len(offsets_per_level)}, {len(masks_per_level)}")
    logits = [np.asarray(x) for x in logits_per_level]
    offsets = [np.asarray(x) for x in offsets_per_level]
    masks = [np.asarray(x) for x in masks_per_level]
    wide = any(a.dtype == np.float64 for a in logits + offsets)
    dtype = np.dtype(np.float64 if wide else np.float32)
    for level, (lg, off, m) in enumerate(zip(logits, offsets, masks)):
        if lg.ndim != 1:
            raise InputError(f"logits at level {level}: expected shape (T_l,), got {lg.shape}")
        t = lg.shape[0]
        if off.shape != (t, 2):
            raise InputError(f"offsets at level {level}: expected shape ({t}, 2), got {off.shape}")
        if m.shape != (t,):
            raise InputError(f"masks at level {level}: expected shape ({t},), got {m.shape}")
        for name, a in (("logits", lg), ("offsets", off), ("masks", m)):
            if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
                raise InputError(f"{name} at level {level}: expected a numeric array, got dtype {a.dtype}")
        if np.isnan(lg.astype(dtype, copy=False)).any():
            raise InputError(f"logits at level {level} contain NaN")
        if not np.isfinite(off.astype(dtype, copy=False)).all():
            raise InputError(f"offsets at level {level} contain NaN or Inf")
    return logits, offsets, masks, dtype


def _check_topk(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _sort_desc(scores: np.ndarray) -> np.ndarray:
    # Stable: equal scores keep their order (level order, then time). torch's argsort
    # (descending=True) is not stable beyond 16 elements; its tie order cannot be reproduced,
    # and the golden candidates have no exact ties.
    return np.argsort(-scores, kind="stable")


def collect_candidates(logits_per_level: Sequence[np.ndarray], offsets_per_level: Sequence[np.ndarray],
                       masks_per_level: Sequence[np.ndarray], pre_nms_thresh: float = 0.001,
                       pre_nms_topk: int = 2000, seg_len_thresh: float = 0.1
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Pre-NMS candidates of one query (REFERENCE §8.2 step 4).

    Per level ``l``: logits ``(T_l,)``, offsets ``(T_l, 2)`` in units of the level stride,
    valid mask ``(T_l,)``. Returns segments ``(n, 2)`` in level-0 grid units and scores ``(n,)``,
    sorted by score descending. Computed in float64 when logits or offsets are float64, else
    float32.
    """
    logits, offsets, masks, dtype = _as_levels(logits_per_level, offsets_per_level, masks_per_level)
    pre_nms_topk = _check_topk("pre_nms_topk", pre_nms_topk)
    # Thresholds compare in the working dtype, as torch does with a Python scalar.
    thresh = dtype.type(pre_nms_thresh)

    pos_list, stride_list, score_list, off_list = [], [], [], []
    for level, (lg, off, m) in enumerate(zip(logits, offsets, masks)):
        scores = _sigmoid(lg.astype(dtype, copy=False)) * m.astype(dtype)
        keep = np.flatnonzero(scores > thresh)
        stride = 2 ** level
        pos_list.append(keep.astype(dtype) * stride)
        stride_list.append(np.full(len(keep), stride, dtype=dtype))
        score_list.append(scores[keep])
        off_list.append(off[keep].astype(dtype, copy=False))

    pos = np.concatenate(pos_list)
    stride = np.concatenate(stride_list)
    scores = np.concatenate(score_list)
    off = np.concatenate(off_list).reshape(-1, 2)

    order = _sort_desc(scores)[:pre_nms_topk]
    pos, stride, scores, off = pos[order], stride[order], scores[order], off[order]

    left = pos - off[:, 0] * stride
    right = pos + off[:, 1] * stride
    keep = (right - left) > dtype.type(seg_len_thresh)
    segs = np.stack((left, right), axis=-1)[keep]
    return segs, scores[keep]


# --------------------------------------------------------------------------------------------
# Soft-NMS (Gaussian) + segment voting (official ``libs/nms``)
# --------------------------------------------------------------------------------------------

def _check_segments(segs, scores) -> tuple[np.ndarray, np.ndarray]:
    segs = np.asarray(segs)
    scores = np.asarray(scores)
    if segs.ndim != 2 or segs.shape[1:] != (2,):
        raise InputError(f"segs: expected shape (n, 2), got {segs.shape}")
    if scores.shape != (segs.shape[0],):
        raise InputError(f"scores: expected shape ({segs.shape[0]},), got {scores.shape}")
    # The official C++ extension reads float32 buffers only.
    segs = segs.astype(_F32)
    scores = scores.astype(_F32)
    if not np.isfinite(segs).all():
        raise InputError("segs contain NaN or Inf")
    if not np.isfinite(scores).all():
        raise InputError("scores contain NaN or Inf")
    if (segs[:, 1] < segs[:, 0]).any():
        bad = int(np.flatnonzero(segs[:, 1] < segs[:, 0])[0])
        raise InputError(f"segs[{bad}] = {segs[bad].tolist()} ends before it starts")
    return segs, scores


def _swap_remove_order(keep: np.ndarray) -> np.ndarray:
    """New order of a list after the C++ loop's "swap with last" removals.

    The loop scans forward; a dropped entry is overwritten by the current last entry (which is
    then examined in its place). Net effect: the first ``n_keep`` slots keep their survivors and
    their holes are filled, in order, by the survivors beyond ``n_keep`` taken from the back.
    The order matters: later picks break score ties by position.
    """
    n_keep = int(keep.sum())
    order = np.arange(n_keep)
    holes = np.flatnonzero(~keep[:n_keep])
    order[holes] = n_keep + np.flatnonzero(keep[n_keep:])[::-1]
    return order


def _soft_nms_gaussian(segs, scores, sigma, min_score, max_out):
    """Emulates ``softnms_1d_cpu`` with method 2 (Gaussian), float32 step for step.

    Stops after ``max_out`` picks: a pick depends only on earlier picks, so the first
    ``max_out`` outputs equal those of the full loop.
    """
    x1, x2 = segs[:, 0].copy(), segs[:, 1].copy()
    sc = scores.copy()
    area = (x2 - x1) + _NMS_LEN_EPS
    sigma, min_score = _F32(sigma), _F32(min_score)
    n = len(sc)
    out = []
    i = 0
    while i < n and len(out) < max_out:
        # First maximum wins (the C++ scan replaces only on a strictly larger score).
        m = i + int(np.argmax(sc[i:n]))
        for a in (x1, x2, sc, area):
            a[i], a[m] = a[m], a[i]
        out.append((x1[i], x2[i], sc[i]))

        rest = slice(i + 1, n)
        inter = np.maximum(_F32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        iou = inter / ((area[i] + area[rest]) - inter)
        # exp evaluated in float64 and rounded: matches glibc's expf far more often than
        # NumPy's float32 SIMD exp does.
        decay = np.exp((-(iou * iou) / sigma).astype(np.float64)).astype(_F32)
        sc[rest] *= decay

        keep = ~(sc[rest] < min_score)
        if not keep.all():
            order = i + 1 + _swap_remove_order(keep)
            for a in (x1, x2, sc, area):
                a[i + 1:i + 1 + len(order)] = a[order]
            n = i + 1 + len(order)
        i += 1
    if not out:
        return np.zeros((0, 2), _F32), np.zeros(0, _F32)
    res = np.array(out, dtype=_F32)
    return res[:, :2].copy(), res[:, 2].copy()


def _hard_nms(segs, scores, iou_thresh, min_score, max_out):
    """Emulates the official ``NMSop`` (score filter, then greedy ``nms_1d_cpu``)."""
    if min_score > 0:
        keep = scores > _F32(min_score)
        segs, scores = segs[keep], scores[keep]
    order = _sort_desc(scores)
    x1, x2 = segs[order, 0], segs[order, 1]
    area = (x2 - x1) + _NMS_LEN_EPS
    alive = np.ones(len(order), dtype=bool)
    picked = []
    for j in range(len(order)):
        if not alive[j]:
            continue
        picked.append(j)
        if len(picked) == max_out:
            break
        rest = slice(j + 1, None)
        inter = np.maximum(_F32(0), np.minimum(x2[j], x2[rest]) - np.maximum(x1[j], x1[rest]))
        iou = inter / ((area[j] + area[rest]) - inter)
        alive[rest] &= ~(iou >= _F32(iou_thresh))
    picked = order[np.asarray(picked, dtype=np.int64)]
    return segs[picked], scores[picked]


def _segment_voting(nms_segs, all_segs, all_scores, voting_thresh):
    """Each kept segment becomes the score-weighted mean of all candidates with IoU ≥ thresh."""
    left = np.maximum(nms_segs[:, None, 0], all_segs[None, :, 0])
    right = np.minimum(nms_segs[:, None, 1], all_segs[None, :, 1])
    overlap = np.maximum(right - left, _F32(0))
    nms_len = nms_segs[:, 1] - nms_segs[:, 0]
    all_len = all_segs[:, 1] - all_segs[:, 0]
    union = (nms_len[:, None] + all_len[None, :]) - overlap
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 for zero-length pairs: no vote
        iou = overlap / union
    weights = (iou >= _F32(voting_thresh)).astype(_F32) * all_scores[None, :]
    total = weights.sum(axis=1, keepdims=True)
    # Deviation: the official divides by a zero total (only possible for a zero-length kept
    # segment) and returns NaN; we keep the segment as it is instead.
    voted = (weights / np.where(total > 0, total, _F32(1))) @ all_segs
    return np.where(total > 0, voted, nms_segs).astype(_F32)


def soft_nms_voting(segs: np.ndarray, scores: np.ndarray, iou_thresh: float = 0.1,
                    min_score: float = 0.001, max_num_segs: int = 5, sigma: float = 0.9,
                    voting_thresh: float = 0.95, mode: str | None = "soft_nms"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Official ``batched_nms`` for one query: NMS, segment voting, sort, cap (REFERENCE §8.3).

    ``mode``: ``"soft_nms"`` (Gaussian decay ``exp(-IoU²/sigma)``, candidates below
    ``min_score`` dropped; ``iou_thresh`` unused), ``"nms"`` (greedy hard NMS: drop when
    IoU ≥ ``iou_thresh``) or ``None`` (no suppression, no voting). Voting (when
    ``voting_thresh > 0``) averages over *all* input candidates. Works in float32; returns
    ``(k, 2)`` segments and ``(k,)`` scores (float32), score descending, ``k ≤ max_num_segs``.
    """
    if mode not in ("soft_nms", "nms", None):
        raise InputError(f"NMS mode must be 'soft_nms', 'nms' or None, got {mode!r}")
    max_num_segs = _check_topk("max_num_segs", max_num_segs)
    if mode == "soft_nms" and not sigma > 0:
        raise InputError(f"sigma must be > 0, got {sigma!r}")
    segs, scores = _check_segments(segs, scores)
    if len(segs) == 0:
        return np.zeros((0, 2), _F32), np.zeros(0, _F32)

    if mode is None:
        nms_segs, nms_scores = segs, scores
    else:
        if mode == "soft_nms":
            nms_segs, nms_scores = _soft_nms_gaussian(segs, scores, sigma, min_score, max_num_segs)
        else:
            nms_segs, nms_scores = _hard_nms(segs, scores, iou_thresh, min_score, max_num_segs)
        if voting_thresh > 0 and len(nms_segs) > 0:
            nms_segs = _segment_voting(nms_segs, segs, scores, voting_thresh)

    order = _sort_desc(nms_scores)[:max_num_segs]
    return nms_segs[order], nms_scores[order]


# --------------------------------------------------------------------------------------------
# Grid units → seconds
# --------------------------------------------------------------------------------------------

def to_seconds(segs: np.ndarray, fps: float, clip_size: float, clip_stride: float, duration: float,
               vid_stride: int = 1) -> np.ndarray:
    """Level-0 grid units → seconds, clamped to ``[0, duration]`` (REFERENCE §1).

    ``t = (u·vid_stride·clip_stride + clip_size/2) / fps``. ``clip_stride`` is the *effective*
    stride in frames between features, i.e. the dataset's clip stride × downsample rate (16 for
    Ego4D = 8 × 2), as the official evaluator receives it. Computed in the dtype of ``segs``
    (float32 after NMS), scalars rounded to it, as torch does.
    """
    segs = np.asarray(segs)
    if segs.ndim != 2 or segs.shape[1:] != (2,):
        raise InputError(f"segs: expected shape (n, 2), got {segs.shape}")
    if not np.issubdtype(segs.dtype, np.floating):
        segs = segs.astype(_F32)
    for name, value in (("fps", fps), ("clip_stride", clip_stride)):
        if not np.isfinite(value) or value <= 0:
            raise InputError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("clip_size", clip_size), ("duration", duration)):
        if not np.isfinite(value) or value < 0:
            raise InputError(f"{name} must be a non-negative number, got {value!r}")
    if not isinstance(vid_stride, (int, np.integer)) or vid_stride < 1:
        raise InputError(f"vid_stride must be a positive int, got {vid_stride!r}")
    t = segs.dtype.type
    out = segs * t(vid_stride)
    out = (out * t(clip_stride) + t(0.5 * clip_size)) / t(fps)
    return np.clip(out, t(0), t(duration))


# --------------------------------------------------------------------------------------------
# Full per-query path
# --------------------------------------------------------------------------------------------

_NMS_KEYS = {"mode", "iou_thresh", "min_score", "max_num_segs", "sigma", "voting_thresh"}
_META_KEYS = ("fps", "clip_size", "clip_stride", "duration")


def ground_query(level_logits: Sequence[np.ndarray], level_offsets: Sequence[np.ndarray],
                 level_masks: Sequence[np.ndarray], eval_cfg: Mapping, meta: Mapping,
                 vid_stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Head outputs of one query → ``(segments_sec (k, 2), scores (k,))`` float32, score descending.

    ``eval_cfg`` is the config's ``eval`` section (``pre_nms_thresh``, ``pre_nms_topk``,
    ``seg_len_thresh``, ``nms``); ``meta`` holds ``fps``, ``clip_size``, ``clip_stride`` (effective,
    see :func:`to_seconds`) and ``duration``. One window covering the whole video (the released
    configs): no window offset.
    """
    for key in ("pre_nms_thresh", "pre_nms_topk", "seg_len_thresh", "nms"):
        if key not in eval_cfg:
            raise InputError(f"eval config lacks {key!r}")
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise InputError(f"video meta lacks {missing}; expected keys {list(_META_KEYS)}")
    nms = dict(eval_cfg["nms"])
    unknown = set(nms) - _NMS_KEYS
    if unknown:
        raise InputError(f"unknown eval.nms keys {sorted(unknown)}; known: {sorted(_NMS_KEYS)}")

    with nvtx_range("decode_topk"):
        segs, scores = collect_candidates(
            level_logits, level_offsets, level_masks,
            pre_nms_thresh=eval_cfg["pre_nms_thresh"], pre_nms_topk=eval_cfg["pre_nms_topk"],
            seg_len_thresh=eval_cfg["seg_len_thresh"])
    # The evaluator's second top-k (over all windows) is the identity for a single window.
    with nvtx_range("softnms_host"):
        segs, scores = soft_nms_voting(segs, scores, **nms)
    if len(segs) == 0:
        return segs, scores
    segs = to_seconds(segs, meta["fps"], meta["clip_size"], meta["clip_stride"], meta["duration"],
                      vid_stride)
    return segs, scores
