"""Reduce: every trustworthy per-video result, in manifest order, into ``OUT/predictions.json``.

With ground truth on every video this is exactly what ``hieramamba eval`` writes
(``hieramamba.metrics.predictions_json``: the same float32 segments and scores, the same R@k ×
IoU summary) plus ``OUT/eval.txt`` (``format_metrics``). Without ground truth the file has the
same layout less ``ground_truth`` and ``recall_at_iou``. A partial run reduces the videos it has.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from hieramamba.artifacts import write_atomic
from hieramamba.metrics import predictions_json

from .results import read_result


def _arrays(query: list) -> tuple:
    """``[[start, end, score], ...]`` → ``(segments (k, 2), scores (k,))`` float32, as the
    evaluator builds them from the pipeline's segments."""
    segs = np.array([[s, e] for s, e, _ in query], dtype=np.float32).reshape(-1, 2)
    return segs, np.array([c for _, _, c in query], dtype=np.float32)


def _without_ground_truth(videos, ranks) -> dict:
    keep = min(5, max(ranks))  # what the official file stores per query
    out = {}
    for task, preds in videos:
        out[task.video_id] = {"queries": [
            {"query_id": i, "predictions": [{"segment": s.tolist(), "score": float(c)}
                                            for s, c in zip(segs[:keep], scores[:keep])]}
            for i, (segs, scores) in enumerate(preds)]}
    return {"summary": {"total_queries": sum(len(p) for _, p in videos), "total_videos": len(out)},
            "videos": out}


def reduce_results(out, tasks, bundle: str, hashes: dict, ranks=(1, 5), iou_threshs=(0.3, 0.5)) -> Optional[dict]:
    """Write ``predictions.json`` (and ``eval.txt`` when annotated) from the results in ``out``;
    returns the predictions dict, or None when no video has a result."""
    out = Path(out)
    videos = []
    for task in tasks:
        doc, _ = read_result(out, task, bundle, hashes[task.video_id])
        if doc is not None:
            videos.append((task, [_arrays(q) for q in doc["predictions"]]))
    if not videos:
        for name in ("predictions.json", "eval.txt"):  # an earlier run's, of other results
            (out / name).unlink(missing_ok=True)
        return None
    if all(task.segments is not None for task, _ in videos):
        result = predictions_json(((task.video_id, preds, [np.asarray(s, dtype=np.float32) for s in task.segments])
                                   for task, preds in videos), ranks, iou_threshs)
        from hieramamba.evaluate import format_metrics  # imports torch: only for annotated corpora

        write_atomic(out / "eval.txt", format_metrics(result["summary"]).encode())
    else:
        result = _without_ground_truth(videos, ranks)
        (out / "eval.txt").unlink(missing_ok=True)
    write_atomic(out / "predictions.json", json.dumps(result, indent=2).encode())
    return result
