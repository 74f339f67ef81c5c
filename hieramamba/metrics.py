"""Grounding metric R@k, IoU≥θ and the official predictions JSON (REFERENCE §8.4).

Follows ``EvaluatorOriginal.run`` / ``save_predictions``: per query, predictions are ranked by
score, the first ``max(ranks)`` kept, and rank ``k`` is a hit at ``θ`` when the largest IoU among
the first ``k`` is ``≥ θ``. Recall is averaged over queries, not videos. As in the official code,
segments and ground truth are handled in float32 (the NMS output dtype) and IoU has no epsilon.

Choices where the official code has no answer:
* a query with zero predictions is a miss at every rank (the official evaluator crashes:
  ``max()`` of an empty tensor);
* a query with fewer than ``k`` predictions uses those it has (official behaviour);
* equal scores keep their input order (a stable sort; torch's ``argsort`` is stable for the
  ≤ 16 predictions NMS usually leaves, not beyond).

NumPy only (the torch-free runtime reuses it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from .errors import InputError

__all__ = ["segment_iou", "rank_hits", "recall_at_iou", "predictions_json", "metric_key"]

_F32 = np.float32


def metric_key(rank: int, iou_thresh: float) -> str:
    """Official metric name, e.g. ``Rank@1_IoU@0.3`` (θ printed with one decimal, as upstream)."""
    return f"Rank@{rank}_IoU@{iou_thresh:.1f}"


def segment_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """1-D IoU of each predicted segment ``(k, 2)`` (or one ``(2,)``) with one target ``(2,)``.

    ``overlap / union`` with no epsilon, in the inputs' common float dtype, like the official
    ``iou``. A zero union (both segments zero-length, hence no overlap) gives NaN, as upstream;
    :func:`rank_hits` then counts that rank as a miss, again as upstream (``max`` propagates NaN).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape[-1:] != (2,) or pred.ndim > 2:
        raise InputError(f"pred: expected shape (k, 2) or (2,), got {pred.shape}")
    if gt.shape != (2,):
        raise InputError(f"gt: expected shape (2,), got {gt.shape}")
    dtype = np.result_type(pred.dtype, gt.dtype, _F32)
    pred = pred.astype(dtype, copy=False)
    gt = gt.astype(dtype, copy=False)
    ps, pe = pred[..., 0], pred[..., 1]
    gs, ge = gt[0], gt[1]
    overlap = np.maximum(np.minimum(pe, ge) - np.maximum(ps, gs), dtype.type(0))
    union = (pe - ps) + (ge - gs) - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        return overlap / union


def _check_ranks(ranks, iou_threshs) -> tuple[tuple[int, ...], np.ndarray]:
    ranks = tuple(ranks)
    if not ranks or any(not isinstance(r, (int, np.integer)) or isinstance(r, bool) or r < 1 for r in ranks):
        raise InputError(f"ranks must be positive ints, got {ranks!r}")
    threshs = np.asarray(iou_threshs, dtype=np.float64)
    if threshs.ndim != 1 or len(threshs) == 0 or not np.isfinite(threshs).all():
        raise InputError(f"iou_threshs must be a non-empty list of numbers, got {iou_threshs!r}")
    keys = [metric_key(r, t) for r in ranks for t in threshs]
    if len(set(keys)) != len(keys):
        raise InputError(f"ranks {ranks} × iou_threshs {threshs.tolist()} give duplicate metric names")
    return ranks, threshs


def _ranked(segs, scores, topk: int) -> tuple[np.ndarray, np.ndarray]:
    segs = np.asarray(segs)
    scores = np.asarray(scores)
    if segs.ndim != 2 or segs.shape[1:] != (2,):
        raise InputError(f"predicted segments: expected shape (k, 2), got {segs.shape}")
    if scores.shape != (segs.shape[0],):
        raise InputError(f"predicted scores: expected shape ({segs.shape[0]},), got {scores.shape}")
    if np.isnan(scores).any():
        raise InputError("predicted scores contain NaN")
    order = np.argsort(-scores.astype(np.float64), kind="stable")[:topk]
    return segs[order].astype(_F32), scores[order].astype(_F32)


def _check_target(target) -> np.ndarray:
    target = np.asarray(target)
    if target.shape != (2,):
        raise InputError(f"target: expected shape (2,), got {target.shape}")
    return target.astype(_F32)


def rank_hits(segs: np.ndarray, scores: np.ndarray, target: np.ndarray, ranks: Sequence[int] = (1, 5),
              iou_threshs: Sequence[float] = (0.3, 0.5)) -> np.ndarray:
    """Hits of one query: bool ``(len(ranks), len(iou_threshs))``."""
    ranks, threshs = _check_ranks(ranks, iou_threshs)
    return _hits(segs, scores, target, ranks, threshs)


def _hits(segs, scores, target, ranks, threshs) -> np.ndarray:
    segs, _ = _ranked(segs, scores, max(ranks))
    target = _check_target(target)
    hits = np.zeros((len(ranks), len(threshs)), dtype=bool)
    if len(segs) == 0:
        return hits  # official: crash; here: a miss
    iou = segment_iou(segs, target)
    # float32 IoU vs float64 thresholds, as upstream (``.item()`` then a NumPy comparison)
    best = np.array([np.max(iou[:k]) for k in ranks], dtype=np.float64)
    return best[:, None] >= threshs[None, :]


def _check_queries(predictions, targets) -> None:
    if len(predictions) != len(targets):
        raise InputError(f"got {len(predictions)} predictions for {len(targets)} targets")


def recall_at_iou(predictions: Sequence[tuple[np.ndarray, np.ndarray]], targets: Sequence[np.ndarray],
                  ranks: Sequence[int] = (1, 5), iou_threshs: Sequence[float] = (0.3, 0.5)
                  ) -> dict[str, float]:
    """R@k, IoU≥θ averaged over all queries: ``{"Rank@1_IoU@0.3": 0.41, ...}`` (fractions).

    ``predictions[i] = (segments (k, 2), scores (k,))`` in seconds for query ``i``;
    ``targets[i] = (start, end)`` in seconds.
    """
    ranks, threshs = _check_ranks(ranks, iou_threshs)
    _check_queries(predictions, targets)
    if len(targets) == 0:
        raise InputError("recall_at_iou needs at least one query, got 0")
    counts = np.zeros((len(ranks), len(threshs)))
    for (segs, scores), target in zip(predictions, targets):
        counts += _hits(segs, scores, target, ranks, threshs)
    return _as_dict(counts / len(targets), ranks, threshs)


def _as_dict(metrics: np.ndarray, ranks, threshs) -> dict[str, float]:
    return {metric_key(r, t): float(metrics[i, j])
            for i, r in enumerate(ranks) for j, t in enumerate(threshs)}


def predictions_json(videos: Iterable[tuple[str, Sequence[tuple[np.ndarray, np.ndarray]], Sequence[np.ndarray]]],
                     ranks: Sequence[int] = (1, 5), iou_threshs: Sequence[float] = (0.3, 0.5)) -> dict:
    """The official ``predictions_<ckpt>.json`` content (``save_predictions``), ready for
    ``json.dump(..., indent=2)``.

    ``videos`` yields ``(vid_id, predictions, targets)`` per evaluated video, in evaluation
    order, with ``predictions``/``targets`` as in :func:`recall_at_iou`. Layout::

        {"summary": {"overall_recall_at_iou": {key: float}, "total_queries": int,
                     "total_videos": int},
         "videos": {vid_id: {"queries": [{"query_id": i, "ground_truth": [s, e],
                                          "predictions": [{"segment": [s, e], "score": x}, ...]}],
                             "recall_at_iou": {key: float}}}}

    Per query the stored predictions are the top ``min(5, max(ranks))`` by score (the official
    code keeps the top ``max(ranks)``, then at most 5), values float32 as upstream. ``query_id``
    is the index within the video. A video id seen twice appends its queries and its per-video
    recall is that of the later occurrence, as upstream.
    """
    ranks, threshs = _check_ranks(ranks, iou_threshs)
    topk = max(ranks)
    out_videos: dict = {}
    total = np.zeros((len(ranks), len(threshs)))
    n_queries = 0
    for vid_id, predictions, targets in videos:
        _check_queries(predictions, targets)
        if len(targets) == 0:
            raise InputError(f"video {vid_id!r} has no queries")
        entry = out_videos.setdefault(vid_id, {"queries": [], "recall_at_iou": {}})
        counts = np.zeros_like(total)
        for query_id, ((segs, scores), target) in enumerate(zip(predictions, targets)):
            counts += _hits(segs, scores, target, ranks, threshs)
            top_segs, top_scores = _ranked(segs, scores, topk)
            entry["queries"].append({
                "query_id": query_id,
                "ground_truth": _check_target(target).tolist(),
                "predictions": [{"segment": s.tolist(), "score": float(c)}
                                for s, c in zip(top_segs[:5], top_scores[:5])],
            })
        entry["recall_at_iou"] = _as_dict(counts / len(targets), ranks, threshs)
        total += counts
        n_queries += len(targets)
    if n_queries == 0:
        raise InputError("predictions_json needs at least one video with queries, got none")
    return {
        "summary": {
            "overall_recall_at_iou": _as_dict(total / n_queries, ranks, threshs),
            "total_queries": int(n_queries),
            "total_videos": len(out_videos),
        },
        "videos": out_videos,
    }
