"""The request adapter (DESIGN §7): named NumPy tensors in → one call of the grounding pipeline →
fixed-shape NumPy tensors out. Torch-free, and free of Triton too: the Triton model
(``serving/triton_model.py``), the client (``serving/client.py``) and the repository writer
(``serving/repository.py``) all read the tensor tables below, and the tests call the adapter
directly.

Two models:

* ``hieramamba_ground``: one request is one video and all its queries (the official group, so
  official and per-sample bundles both give the reference answer); no batching by Triton.
* ``hieramamba_ground_query``: one query per request, the video named by ``VIDEO_ID`` and looked
  up server-side (``VideoStore``); Triton's dynamic batcher merges requests and each batch is
  grouped by video, one pipeline call per video. Merging changes answers under ``official`` mask
  semantics (REFERENCE §13.1), so this model serves ``per_sample`` bundles only.

Outputs have a fixed ``K = plan.max_num_segs`` segments per query; ``NUM_SEGMENTS`` says how many
are real (Soft-NMS may return fewer), the rest are zeros.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from hieramamba.errors import InputError

GROUND_MODEL = "hieramamba_ground"
QUERY_MODEL = "hieramamba_ground_query"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str          # NumPy dtype name; "bytes" for Triton's BYTES
    dims: tuple         # Triton dims without the batch dimension; "Dv"/"Dt"/"K" from the plan
    optional: bool = False
    ragged: bool = False  # requests of different lengths may share a dynamic batch


_SCALARS = ("DURATION", "CLIP_SIZE", "CLIP_STRIDE")

GROUND_INPUTS = (
    TensorSpec("VIDEO_FEATURES", "float32", (-1, "Dv")),
    TensorSpec("QUERY_FEATURES", "float32", (-1, -1, "Dt")),
    TensorSpec("QUERY_LENGTHS", "int32", (-1,)),
    TensorSpec("FPS", "float32", (1,)),
) + tuple(TensorSpec(n, "float32", (1,), optional=True) for n in _SCALARS)
GROUND_OUTPUTS = (
    TensorSpec("SEGMENTS", "float32", (-1, "K", 2)),
    TensorSpec("SCORES", "float32", (-1, "K")),
    TensorSpec("NUM_SEGMENTS", "int32", (-1,)),
)
QUERY_INPUTS = (
    TensorSpec("VIDEO_ID", "bytes", (1,)),
    TensorSpec("QUERY_FEATURES", "float32", (-1, "Dt"), ragged=True),
    TensorSpec("FPS", "float32", (1,)),
) + tuple(TensorSpec(n, "float32", (1,), optional=True) for n in _SCALARS)
QUERY_OUTPUTS = (
    TensorSpec("SEGMENTS", "float32", ("K", 2)),
    TensorSpec("SCORES", "float32", ("K",)),
    TensorSpec("NUM_SEGMENTS", "int32", (1,)),
)
VIDEO_DTYPES = ("float32", "float16")  # VIDEO_FEATURES may be sent in either (a server option)


def resolve_dims(spec: TensorSpec, plan) -> tuple:
    sizes = {"Dv": plan.vid_in_dim, "Dt": plan.text_in_dim, "K": plan.max_num_segs}
    return tuple(sizes.get(d, d) for d in spec.dims)


# -- reading request tensors -------------------------------------------------------------------
def _tensor(tensors: Mapping[str, np.ndarray], name: str, ndim: int) -> np.ndarray:
    if name not in tensors or tensors[name] is None:
        raise InputError(f"missing input {name}")
    x = np.asarray(tensors[name])
    if x.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    return x


def _scalar(tensors: Mapping[str, np.ndarray], name: str, required: bool) -> Optional[float]:
    if tensors.get(name) is None:
        if required:
            raise InputError(f"missing input {name}")
        return None
    x = np.asarray(tensors[name])
    if x.size != 1 or not np.issubdtype(x.dtype, np.number):
        raise InputError(f"{name} must hold one number, got shape {tuple(x.shape)} of {x.dtype}")
    value = float(x.reshape(()))
    if not np.isfinite(value) or value <= 0:
        raise InputError(f"{name} must be a positive number, got {value!r}")
    return value


def _timing(tensors: Mapping[str, np.ndarray]) -> dict:
    """``fps`` and the optional ``duration``/``clip_size``/``clip_stride`` of a request."""
    out = {"fps": _scalar(tensors, "FPS", True)}
    for name in _SCALARS:
        out[name.lower()] = _scalar(tensors, name, False)
    return out


def _queries(features: np.ndarray, lengths: np.ndarray, text_dim: int) -> list:
    if features.shape[0] == 0:
        raise InputError("QUERY_FEATURES holds no queries")
    if features.shape[2] != text_dim:
        raise InputError(f"QUERY_FEATURES has feature dim {features.shape[2]}, the model expects {text_dim}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise InputError(f"QUERY_LENGTHS must be integers, got {lengths.dtype}")
    if lengths.shape[0] != features.shape[0]:
        raise InputError(f"QUERY_LENGTHS has {lengths.shape[0]} entries for {features.shape[0]} queries")
    bad = [i for i, n in enumerate(lengths) if not 1 <= int(n) <= features.shape[1]]
    if bad:
        i = bad[0]
        raise InputError(f"QUERY_LENGTHS[{i}] = {int(lengths[i])} is outside 1..{features.shape[1]} (the padded "
                         "token count)")
    return [features[i, : int(n)] for i, n in enumerate(lengths)]


def pack_segments(results: list, k: int) -> dict:
    """Per query ranked ``Segment``s → ``SEGMENTS (Q, K, 2)``, ``SCORES (Q, K)``, ``NUM_SEGMENTS (Q,)``."""
    segments = np.zeros((len(results), k, 2), np.float32)
    scores = np.zeros((len(results), k), np.float32)
    counts = np.zeros((len(results),), np.int32)
    for i, segs in enumerate(results):
        segs = segs[:k]
        counts[i] = len(segs)
        for j, s in enumerate(segs):
            segments[i, j] = (s.start_sec, s.end_sec)
            scores[i, j] = s.score
    return {"SEGMENTS": segments, "SCORES": scores, "NUM_SEGMENTS": counts}


def unpack_segments(outputs: Mapping[str, np.ndarray]) -> list:
    """The inverse of :func:`pack_segments`: per query a list of ``(start_sec, end_sec, score)``."""
    segs, scores, counts = (np.asarray(outputs[n]) for n in ("SEGMENTS", "SCORES", "NUM_SEGMENTS"))
    return [[(float(segs[i, j, 0]), float(segs[i, j, 1]), float(scores[i, j])) for j in range(int(counts[i]))]
            for i in range(counts.shape[0])]


# -- the two models ---------------------------------------------------------------------------
def ground_request(pipeline, tensors: Mapping[str, np.ndarray]) -> dict:
    """``hieramamba_ground``: one video and its queries → its outputs. ``InputError`` on a bad
    request (the message names the input)."""
    plan = pipeline.plan
    video = _tensor(tensors, "VIDEO_FEATURES", 2)
    if video.dtype.name not in VIDEO_DTYPES:
        raise InputError(f"VIDEO_FEATURES must be float32 or float16, got {video.dtype}")
    queries = _queries(_tensor(tensors, "QUERY_FEATURES", 3), _tensor(tensors, "QUERY_LENGTHS", 1),
                       plan.text_in_dim)
    results = pipeline.ground(video, queries, **_timing(tensors))
    return pack_segments(results, plan.max_num_segs)


class VideoStore:
    """Video features by id, server-side: ``<folder>/<video_id>.npy`` (``(num_clips, Dv)``),
    memory-mapped (pages are read as the scheduler's windows touch them), at most ``capacity``
    kept open (least recently used dropped). No pickles: ``allow_pickle=False``."""

    ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")

    def __init__(self, folder, capacity: int = 64):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"features folder {self.folder} does not exist")
        self.capacity = int(capacity)
        self._open: OrderedDict = OrderedDict()

    def any_id(self) -> str:
        """One video id of the folder (the canary's), or ``InputError`` when there is none."""
        for p in sorted(self.folder.glob("*.npy")):
            if self.ID.fullmatch(p.stem):
                return p.stem
        raise InputError(f"features folder {self.folder} holds no <video_id>.npy file")

    def get(self, video_id: str) -> np.ndarray:
        if not self.ID.fullmatch(video_id or ""):
            raise InputError(f"VIDEO_ID {video_id!r} is not a valid id (letters, digits, '_', '.', '-')")
        if video_id in self._open:
            self._open.move_to_end(video_id)
            return self._open[video_id]
        path = self.folder / f"{video_id}.npy"
        if not path.is_file():
            raise InputError(f"unknown VIDEO_ID {video_id!r}: no {path.name} in the features folder")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"VIDEO_ID {video_id!r}: {path.name} is not a plain .npy array ({exc})") from None
        self._open[video_id] = array
        while len(self._open) > self.capacity:
            self._open.popitem(last=False)
        return array


def _video_id(tensors: Mapping[str, np.ndarray]) -> str:
    raw = _tensor(tensors, "VIDEO_ID", 1)
    if raw.shape != (1,):
        raise InputError(f"VIDEO_ID must hold one id, got shape {tuple(raw.shape)}")
    value = raw[0]
    if isinstance(value, (bytes, np.bytes_)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("VIDEO_ID is not UTF-8") from None
    return str(value)


def ground_query_requests(pipeline, requests: list, videos: VideoStore) -> list:
    """``hieramamba_ground_query``: a dynamic batch of single-query requests (each a mapping of
    tensors without the batch dimension) → per request its outputs, or the ``InputError`` that
    request earned. Requests for the same video (and timing) are grounded in one pipeline call;
    if that call fails on an input, each of its requests is retried alone so that only the bad
    ones fail (the bundle's ``per_sample`` semantics make the answers independent of grouping)."""
    out: list = [None] * len(requests)
    groups: dict = {}
    for i, tensors in enumerate(requests):
        try:
            vid = _video_id(tensors)
            query = _tensor(tensors, "QUERY_FEATURES", 2)
            timing = _timing(tensors)
            video = videos.get(vid)
        except InputError as exc:
            out[i] = exc
            continue
        key = (vid,) + tuple(sorted(timing.items()))
        groups.setdefault(key, (video, timing, []))[2].append((i, query))
    k = pipeline.plan.max_num_segs
    for video, timing, members in groups.values():
        try:
            packed = pack_segments(pipeline.ground(video, [q for _, q in members], **timing), k)
        except InputError as exc:
            if len(members) == 1:
                out[members[0][0]] = exc
                continue
            packed = None
        if packed is not None:
            for row, (i, _) in enumerate(members):
                out[i] = _row(packed, row)
            continue
        for i, q in members:  # one bad request in the group: find it, answer the others
            try:
                out[i] = _row(pack_segments(pipeline.ground(video, [q], **timing), k), 0)
            except InputError as exc:
                out[i] = exc
    return out


def _row(packed: dict, row: int) -> dict:
    """One query's outputs as ``QUERY_OUTPUTS`` shapes them: ``(K, 2)``, ``(K,)``, ``(1,)``."""
    return {"SEGMENTS": packed["SEGMENTS"][row], "SCORES": packed["SCORES"][row],
            "NUM_SEGMENTS": packed["NUM_SEGMENTS"][row:row + 1]}


def check_query_model_bundle(plan, where: str) -> None:
    """``hieramamba_ground_query`` merges requests of different clients: only a bundle whose answers
    do not depend on the batch may be served by it (DESIGN §7)."""
    if plan.mask_semantics != "per_sample":
        raise InputError(
            f"{where}: {QUERY_MODEL} needs a bundle exported with --mask-semantics per_sample; this one uses "
            f"{plan.mask_semantics!r}, under which a query's answer depends on the queries batched with it "
            "(REFERENCE §13.1). Re-export with `hieramamba export-bundle --mask-semantics per_sample`, or serve "
            f"it with {GROUND_MODEL} only (no --features)")
