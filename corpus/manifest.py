"""The corpus manifest: one ``VideoTask`` per video, all of its queries together (the official
group, DESIGN §7). Read from a JSONL or parquet file (``read_manifest``) or built from an
official-layout dataset split (``manifest_from_dataset``); run longest video first
(``longest_first``) so a long straggler does not start last.

A manifest row (JSONL: one JSON object per line; parquet: one row, same column names)::

    video_id     str                     unique within the manifest
    video_path   str                     (num_clips, Dv) features, .npy or .pt; relative paths
                                         resolve against the manifest's folder
    fps          number > 0
    duration     number > 0 or null      seconds (null: the end of the last clip)
    query_ids    [str, ...]              ≥ 1, one per query, in the order results are reported
    query_paths  [str, ...]              (num_tokens, Dt) features, same length as query_ids
    segments     [[start, end], ...]     optional ground truth in seconds (one per query): with it
                                         on every row the reduce step also scores R@k × IoU
    num_clips    int                     optional; for ordering only (else read from the .npy header)
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hieramamba.errors import DataError

FIELDS = ("video_id", "video_path", "fps", "duration", "query_ids", "query_paths", "segments", "num_clips")


@dataclass(frozen=True)
class VideoTask:
    video_id: str
    video_path: str
    fps: float
    duration: Optional[float]
    query_ids: tuple
    query_paths: tuple
    segments: Optional[tuple] = None   # ((start, end), ...) seconds, or None
    num_clips: Optional[int] = None

    @property
    def num_queries(self) -> int:
        return len(self.query_ids)

    def to_row(self) -> dict:
        row = {k: getattr(self, k) for k in FIELDS}
        row["query_ids"], row["query_paths"] = list(self.query_ids), list(self.query_paths)
        if self.segments is not None:
            row["segments"] = [list(s) for s in self.segments]
        return row


def _number(row, key, where, optional=False):
    v = row.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise DataError(f"{where}: {key!r} must be a positive number{' or null' if optional else ''}, got {v!r}")
    return float(v)


def _as_list(v):
    """Parquet list columns come back as arrays or tuples; JSON as lists."""
    return v.tolist() if hasattr(v, "tolist") else list(v) if isinstance(v, tuple) else v


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _strings(row, key, where) -> tuple:
    v = _as_list(row.get(key))
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise DataError(f"{where}: {key!r} must be a non-empty list of non-empty strings, got {v!r}")
    return tuple(v)


def _segments(row, n: int, where) -> Optional[tuple]:
    v = _as_list(row.get("segments"))
    if v is None:
        return None
    out = []
    for s in v if isinstance(v, list) else [None]:
        s = _as_list(s)
        if not (isinstance(s, list) and len(s) == 2 and all(_is_number(x) for x in s) and s[0] <= s[1]):
            raise DataError(f"{where}: 'segments' must be one [start, end] per query (seconds, start ≤ end), "
                            f"got {s!r}")
        out.append((float(s[0]), float(s[1])))
    if len(out) != n:
        raise DataError(f"{where}: {len(out)} segments for {n} queries")
    return tuple(out)


def task_from_row(row, where: str, base: Path) -> VideoTask:
    """One validated ``VideoTask`` from a manifest row; relative paths resolve against ``base``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        raise DataError(f"{where}: unknown field(s) {unknown}; a manifest row has {list(FIELDS)}")
    vid = row.get("video_id")
    if not isinstance(vid, str) or not vid:
        raise DataError(f"{where}: 'video_id' must be a non-empty string, got {vid!r}")
    where = f"{where} (video {vid!r})"
    path = row.get("video_path")
    if not isinstance(path, str) or not path:
        raise DataError(f"{where}: 'video_path' must be a non-empty string, got {path!r}")
    qids, qpaths = _strings(row, "query_ids", where), _strings(row, "query_paths", where)
    if len(qids) != len(qpaths):
        raise DataError(f"{where}: {len(qids)} query_ids but {len(qpaths)} query_paths")
    segments = _segments(row, len(qids), where)
    num_clips = row.get("num_clips")
    if num_clips is not None and (isinstance(num_clips, bool) or not isinstance(num_clips, int) or num_clips < 1):
        raise DataError(f"{where}: 'num_clips' must be a positive int or null, got {num_clips!r}")
    resolve = (lambda p: p if os.path.isabs(p) else str(base / p))
    return VideoTask(video_id=vid, video_path=resolve(path), fps=_number(row, "fps", where),
                     duration=_number(row, "duration", where, optional=True), query_ids=qids,
                     query_paths=tuple(resolve(p) for p in qpaths), segments=segments, num_clips=num_clips)


def _check_unique(tasks: list, where) -> list:
    seen = set()
    for t in tasks:
        if t.video_id in seen:
            raise DataError(f"{where}: video {t.video_id!r} appears twice")
        seen.add(t.video_id)
    if not tasks:
        raise DataError(f"{where}: no videos")
    return tasks


def read_manifest(path) -> list:
    """The tasks of a ``.jsonl`` or ``.parquet`` manifest, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    base = path.resolve().parent
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading a parquet manifest needs pyarrow "
                            "(pip install 'hieramamba[corpus]'), or write it as JSONL") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises its own types for corrupt files
            raise DataError(f"{path}: not a readable parquet file ({exc})") from None
        tasks = [task_from_row(r, f"{path}: row {i}", base) for i, r in enumerate(rows)]
    elif path.suffix in (".jsonl", ".json"):
        tasks = []
        with open(path, encoding="utf-8") as f:
            for no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise DataError(f"{path}: line {no} is not JSON ({exc})") from None
                tasks.append(task_from_row(row, f"{path}: line {no}", base))
    else:
        raise DataError(f"{path}: a manifest is .jsonl (one JSON object per line) or .parquet")
    return _check_unique(tasks, path)


def write_manifest(tasks, path) -> Path:
    """The tasks as a JSONL manifest (atomically): the record of what a run was asked to do."""
    from hieramamba.artifacts import write_atomic

    return write_atomic(path, "".join(json.dumps(t.to_row()) + "\n" for t in tasks).encode())


def manifest_from_dataset(anno_file, vid_feat_dir, text_feat_dir, split: str,
                          outside_moments: str = "error") -> list:
    """The tasks of one split of an official-layout dataset, in the order ``hieramamba eval``
    evaluates it: the annotation JSON read by the dataset's own parser (same moments dropped or
    clipped, same text ids), video ``<vid_feat_dir>/<id>.npy`` (or ``.pt``), text
    ``<text_feat_dir>/<text_id>.npy``. A missing feature file fails that video, not the run."""
    from hieramamba.data import load_annotations  # the dataset's parser (imports torch: driver only)

    if text_feat_dir is None:
        raise DataError("the dataset needs a text feature folder (GloVe-tokenized sets such as TACoS are not "
                        "supported by ground-corpus: write text features per query)")
    videos, _ = load_annotations(anno_file, [split], outside_moments)
    tasks = []
    for vid, v in videos.items():
        stem = os.path.join(os.fspath(vid_feat_dir), vid)
        path = stem + ".pt" if os.path.isfile(stem + ".pt") and not os.path.isfile(stem + ".npy") else stem + ".npy"
        tasks.append(VideoTask(
            video_id=vid, video_path=path, fps=v["fps"], duration=v["duration"], query_ids=tuple(v["text_ids"]),
            query_paths=tuple(os.path.join(os.fspath(text_feat_dir), t + ".npy") for t in v["text_ids"]),
            segments=tuple((float(s), float(e)) for s, e in v["segments"]), num_clips=v["num_clips_raw"]))
    return _check_unique(tasks, f"{anno_file}: split {split!r}")


def video_length(task: VideoTask) -> int:
    """Feature rows of a video for ordering: ``num_clips`` or the ``.npy`` header (0 when unknown:
    such a video's error, if any, comes when it runs)."""
    if task.num_clips is not None:
        return task.num_clips
    if task.video_path.endswith(".npy"):
        import numpy as np

        try:
            return int(np.load(task.video_path, mmap_mode="r", allow_pickle=False).shape[0])
        except Exception:  # unreadable: the worker reports it with the video's id
            return 0
    return 0


def longest_first(tasks) -> list:
    """Longest videos first (ties keep manifest order)."""
    return sorted(tasks, key=lambda t: -video_length(t))
