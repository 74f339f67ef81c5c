"""Per-video result files: ``OUT/results/<video_id>.json``, the checkpoint a rerun resumes from.

A result records the bundle it came from (``bundle_fingerprint``) and a hash of everything else
its answer depends on (``task_hash``: feature paths, fps, duration, query ids, the run's data
settings). A rerun trusts a result only when the file reads as this schema, names the same video,
bundle and task hash, and holds one list of ``[start_sec, end_sec, score]`` per query; anything
else is recomputed. Written atomically (``write_artifact``): never a half file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from hieramamba.artifacts import read_artifact, write_artifact
from hieramamba.errors import CheckpointError

RESULT_SCHEMA, RESULT_VERSION = "hieramamba.corpus_result", 1


@dataclass(frozen=True)
class DataSettings:
    """How a run turns files into pipeline inputs, the same for every video: every
    ``downsample_rate``-th feature row (as the dataset reads them), the clip geometry in frames
    (None: the bundle plan's) and what to do with over-long queries."""
    downsample_rate: int = 1
    clip_size: Optional[float] = None
    clip_stride: Optional[float] = None   # effective: stride × downsample_rate
    text_overflow: str = "error"


def result_path(out, video_id: str) -> Path:
    """Any video id becomes one safe file name (``/``, ``%`` and a leading dot escaped)."""
    name = quote(video_id, safe=" -_.~+=,@")
    if name.startswith("."):  # hidden names are the atomic writer's temporary files
        name = "%2E" + name[1:]
    return Path(out) / "results" / f"{name}.json"


def task_hash(task, settings: DataSettings) -> str:
    """What a video's answer depends on besides the bundle (not the ground truth: re-annotating
    a corpus does not recompute it)."""
    inputs = {"video_path": task.video_path, "fps": task.fps, "duration": task.duration,
              "query_ids": list(task.query_ids), "query_paths": list(task.query_paths), **asdict(settings)}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def write_result(out, task, predictions, bundle: str, thash: str, seconds: float, worker: str) -> Path:
    """``predictions``: per query, ``[[start_sec, end_sec, score], ...]`` ranked by score."""
    path = result_path(out, task.video_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_artifact(path, RESULT_SCHEMA, RESULT_VERSION, {
        "video_id": task.video_id, "bundle": bundle, "task": thash, "query_ids": list(task.query_ids),
        "predictions": predictions, "seconds": seconds, "worker": worker})


def _valid_predictions(preds, n: int) -> bool:
    return isinstance(preds, list) and len(preds) == n and all(
        isinstance(q, list) and all(
            isinstance(s, list) and len(s) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in s)
            for s in q)
        for q in preds)


def read_result(out, task, bundle: str, thash: str) -> tuple:
    """``(document, None)`` for a trustworthy result of ``task``, else ``(None, reason)``
    (reason None: there is no result file)."""
    path = result_path(out, task.video_id)
    if not path.is_file():
        return None, None
    try:
        doc = read_artifact(path, RESULT_SCHEMA, RESULT_VERSION, "it is recomputed")
    except CheckpointError as exc:
        return None, str(exc)
    if doc.get("video_id") != task.video_id:
        return None, f"{path}: holds video {doc.get('video_id')!r}"
    if doc.get("bundle") != bundle:
        return None, f"{path}: computed with another bundle"
    if doc.get("task") != thash or doc.get("query_ids") != list(task.query_ids):
        return None, f"{path}: computed for other inputs (paths, fps, duration, queries or data settings)"
    if not _valid_predictions(doc.get("predictions"), task.num_queries):
        return None, f"{path}: malformed predictions"
    return doc, None
