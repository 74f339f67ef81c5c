"""A synthetic long-video grounding dataset in the official file layout (no downloads needed).

World model: ``K`` recurring *scenes*, each a random unit prototype vector in ``R^Dv``. A video is a
sequence of scene occurrences (consecutive ones differ) whose lengths are log-uniform between one
clip and ``max_scene_len`` clips (default: ten minutes of clips). Feature row ``t`` of a video is

    sqrt(Dv) · (prototype[scene(t)] + occurrence offset + slow drift(t) + noise(t))

with a small random offset per occurrence (two occurrences of a scene are similar, not equal), a
drift made of a few slow sinusoids along random directions, and white noise.

A query describes ONE occurrence of scene ``X`` together with its neighbour ``Y``: "X after Y"
(``Y`` = previous occurrence) or "X before Y" (``Y`` = next occurrence). Only occurrences whose
(scene, relation, neighbour) triple is unique in the video are queried, so the answer is well
defined but needs both content and context: a scene usually occurs several times per video. Token
features (``Dt``-dim) are the noisy prototypes of ``X`` (1–3 tokens) and ``Y`` (1–2 tokens) mapped
through a fixed random text map ``R^Dv → R^Dt``, with a fixed relation token in between. The
moment is the occurrence's span in seconds (clip-centre convention of REFERENCE §1, ± a quarter
clip of jitter), from a fraction of a second (1 clip) to ``max_moment_len`` clips.

Written files (``out_dir``)::

    annotations.json             {"train"|"val"|"test": {video_id: {fps, duration, num_clips,
                                  annotations: [{segment, sentence, sentence_id}]}}}
    video/<video_id>.npy         (T, Dv) float32, T = raw feature rows (before down-sampling)
    text/<text_id>.npy           (T_tok, Dt) float32
    meta.json                    generator settings + per video the scene occurrences and per query
                                 the queried occurrence (ground truth for debugging)
    glove.txt                    only with write_glove=True: a GloVe-format file for the words of
                                 the sentences ("sc007 after sc002"), for the TACoS tokenizer path

Every file is written to a temporary name in its directory and renamed into place, and the
annotation JSON is written last, so an interrupted run never leaves a truncated file nor a JSON
that points at missing features. The same arguments give byte-identical files; each video draws
from its own ``(seed, index)`` stream, so adding videos does not change the earlier ones.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import DataError, InputError

__all__ = ["TINY_DIMS", "SyntheticDataset", "make_synthetic", "WORLD_KEYS", "world_of", "read_world",
           "world_differences"]

#: Default geometry ("tiny"): 16/30 s between features, 32-frame clips.
TINY_DIMS: dict[str, Any] = {
    "vid_dim": 32, "text_dim": 32, "fps": 30.0, "clip_size": 32, "clip_stride": 16,
    "downsample_rate": 1,
}
_FORMAT_VERSION = 1

# What makes a synthetic "world": the scene prototypes and text map (drawn from the seed), how
# scenes occur, the noise, the queried moments and the clip geometry. Two sets of one world differ
# only in their videos; a model trained on one world means little on another.
WORLD_KEYS = ("seed", "n_scenes", "min_scene_len", "max_scene_len", "max_moment_len", "noise", "drift",
              "occurrence_jitter", "text_noise", "geometry")


def world_of(settings: dict) -> dict:
    """The world of generator settings (a set's ``meta.json``, or the ``make_synthetic`` section
    plus ``geometry`` of an experiment's ``synthetic.json``)."""
    flat = dict(settings.get("make_synthetic", {}), **{k: v for k, v in settings.items() if k != "make_synthetic"})
    return {k: flat.get(k) for k in WORLD_KEYS}


def read_world(folder) -> Optional[dict]:
    """The world a synthetic dataset folder was generated with (its ``meta.json``), or None when
    the folder does not hold a synthetic set."""
    path = os.path.join(os.fspath(folder), "meta.json")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("generator") != "hieramamba.data.synthetic":
        return None
    return world_of(meta)


def world_differences(a: dict, b: dict) -> list:
    """``["key: a vs b", ...]`` for the world keys on which two worlds differ."""
    out = []
    for k in WORLD_KEYS:
        if json.dumps(a.get(k), sort_keys=True) != json.dumps(b.get(k), sort_keys=True):
            out.append(f"{k} {a.get(k)!r} vs {b.get(k)!r}")
    return out


@dataclass(frozen=True)
class SyntheticDataset:
    """Where :func:`make_synthetic` wrote the data, and with which geometry."""
    root: str
    anno_file: str
    vid_feat_dir: str
    text_feat_dir: str
    meta_file: str
    glove_path: Optional[str]
    vid_dim: int
    text_dim: int
    fps: float
    clip_size: float
    clip_stride: float
    downsample_rate: int
    splits: dict = field(default_factory=dict)

    def paths(self) -> dict:
        """Keyword overrides for :func:`hieramamba.data.make_dataset`."""
        out = {"anno_file": self.anno_file, "vid_feat_dir": self.vid_feat_dir,
               "text_feat_dir": self.text_feat_dir}
        if self.glove_path is not None:
            out["glove_path"] = self.glove_path
        return out

    def dataset(self, is_training: bool, split: Optional[str] = None, **kwargs):
        """A :class:`~hieramamba.data.VideoCentricDataset` over this data with its own geometry
        (``kwargs`` forwarded, e.g. ``max_vid_len``, ``max_num_text``, ``crop_ratio``)."""
        from .datasets import VideoCentricDataset
        kw = dict(split=split or ("train" if is_training else "test"), is_training=is_training,
                  clip_size=self.clip_size, clip_stride=self.clip_stride,
                  downsample_rate=self.downsample_rate, vid_dim=self.vid_dim, text_dim=self.text_dim)
        kw.update(kwargs)
        text_feat_dir = kw.pop("text_feat_dir", self.text_feat_dir)
        return VideoCentricDataset(self.anno_file, self.vid_feat_dir, text_feat_dir, **kw)


def _resolve_geometry(spec, fps: Optional[float]) -> tuple[dict, Optional[int], Optional[int]]:
    """-> (dims, training window in raw rows or None, max_text_len or None)."""
    window = max_text = None
    if spec is None or (isinstance(spec, str) and spec == "tiny"):
        dims = dict(TINY_DIMS)
    elif isinstance(spec, dict) and "model" not in spec:
        unknown = set(spec) - set(TINY_DIMS)
        if unknown:
            raise InputError(f"unknown geometry keys {sorted(unknown)}; allowed: {sorted(TINY_DIMS)}")
        dims = {**TINY_DIMS, **spec}
    else:
        if isinstance(spec, dict):
            opt = spec
        else:
            from ..config import load_config
            opt = load_config(spec, is_training=True)
        data, model = opt["train"]["data"], opt["model"]
        ds = int(data.get("downsample_rate", 1))
        dims = {
            "vid_dim": int(model["vid_net"]["in_dim"]), "text_dim": int(model["text_net"]["in_dim"]),
            "clip_size": data["clip_size"], "clip_stride": data["clip_stride"], "downsample_rate": ds,
            # MAD features are 5 fps frame features (clip 1, stride 1); clip datasets are ~30 fps
            "fps": 5.0 if data["clip_size"] == 1 else 30.0,
        }
        vid_len = data.get("max_vid_len", model["vid_net"].get("stride", 1) * model["vid_net"]["max_seq_len"])
        window = int(vid_len) * ds
        max_text = int(data.get("max_text_len", model["text_net"]["max_seq_len"]))
    if fps is not None:
        dims["fps"] = float(fps)
    for key in ("vid_dim", "text_dim", "downsample_rate"):
        if not isinstance(dims[key], int) or dims[key] < 1:
            raise InputError(f"{key} must be a positive int, got {dims[key]!r}")
    for key in ("fps", "clip_size", "clip_stride"):
        if not float(dims[key]) > 0:
            raise InputError(f"{key} must be > 0, got {dims[key]!r}")
    return dims, window, max_text


def _atomic_write(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _log_uniform_int(rng: np.random.Generator, lo: int, hi: int) -> int:
    if hi <= lo:
        return int(lo)
    return int(min(hi, max(lo, math.floor(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))))


def _split_ids(ids: list[str], fractions: Sequence[float]) -> dict[str, list[str]]:
    n = len(ids)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise InputError(f"split_fractions must be three non-negative numbers, got {fractions!r}")
    total = float(sum(fractions))
    n_val = max(1, round(fractions[1] / total * n)) if fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] / total * n)) if fractions[2] > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:          # too few videos to split: every split sees all of them
        return {"train": list(ids), "val": list(ids), "test": list(ids)}
    return {"train": ids[:n_train], "val": ids[n_train:n_train + n_val],
            "test": ids[n_train + n_val:]}


def make_synthetic(out_dir: str | os.PathLike, config_name_or_dims: Any = "tiny", n_videos: int = 8,
                   min_len: int = 256, max_len: int = 1024, seed: int = 0, *,
                   n_scenes: int = 12, queries_per_video: tuple[int, int] = (2, 8),
                   max_scene_len: Optional[int] = None, max_moment_len: Optional[int] = None,
                   min_scene_len: int = 1,
                   noise: float = 0.5, drift: float = 0.3, occurrence_jitter: float = 0.2,
                   text_noise: float = 0.3, split_fractions: Sequence[float] = (0.6, 0.2, 0.2),
                   fps: Optional[float] = None, write_glove: bool = False,
                   overwrite: bool = False) -> SyntheticDataset:
    """Write a synthetic grounding dataset (see module docstring) and return its description.

    Args:
        out_dir: output directory (created).
        config_name_or_dims: ``'tiny'`` (default geometry :data:`TINY_DIMS`), a dict overriding some
            of its keys (``vid_dim, text_dim, fps, clip_size, clip_stride, downsample_rate``), or an
            official config name / ``opt.yaml`` path / merged config dict — then dims and geometry
            come from ``vid_net.in_dim``, ``text_net.in_dim`` and ``train.data`` (fps 5 for MAD-style
            ``clip_size == 1`` features, else 30), and ``max_moment_len`` defaults to half the
            training window so every moment survives the training crop.
        n_videos: number of videos, split train/val/test by ``split_fractions``.
        min_len, max_len: video length range in feature rows as stored (before down-sampling),
            drawn log-uniformly. Seconds ≈ rows · clip_stride / fps (0.53 s per row in the tiny
            geometry: 1024 rows ≈ 9 min, 6750 rows ≈ 1 h).
        seed: all randomness derives from it.
        n_scenes: number of recurring scenes ``K`` (≥ 3).
        queries_per_video: inclusive range of queries per video (fewer when too few occurrences
            are unambiguous; at least one per video).
        min_scene_len: shortest scene occurrence in rows (default 1; a difficulty knob: very short
            moments need sub-clip precision for IoU ≥ 0.5). The last occurrence of a video may be
            shorter (it ends with the video).
        max_scene_len: longest scene occurrence in rows (default ten minutes of features); each
            occurrence is also at most a third of its video.
        max_moment_len: longest queried occurrence in rows (default: half the config's training
            window, or 512 rows for a plain geometry).
        noise, drift, occurrence_jitter, text_noise: magnitudes (norms relative to a unit prototype).
        split_fractions: train/val/test fractions (each non-empty split gets ≥ 1 video; with fewer
            than three videos every split lists all videos).
        fps: override the frame rate written to the annotation.
        write_glove: also write ``glove.txt`` (dim = text_dim) covering every sentence word.
        overwrite: allow writing into a directory that already holds ``annotations.json``.
    """
    if n_videos < 1:
        raise InputError(f"n_videos (--videos) must be >= 1, got {n_videos}")
    if not 1 <= min_len <= max_len:
        raise InputError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    if n_scenes < 3:
        raise InputError(f"n_scenes must be >= 3, got {n_scenes}")
    q_lo, q_hi = queries_per_video
    if not 1 <= q_lo <= q_hi:
        raise InputError(f"queries_per_video must be (lo, hi) with 1 <= lo <= hi, got {queries_per_video}")

    dims, window, _ = _resolve_geometry(config_name_or_dims, fps)
    dv, dt = dims["vid_dim"], dims["text_dim"]
    vfps, cs, st = float(dims["fps"]), float(dims["clip_size"]), float(dims["clip_stride"])
    if max_scene_len is None:
        max_scene_len = max(1, round(600 * vfps / st))
    if max_moment_len is None:
        max_moment_len = window // 2 if window else 512
    if max_moment_len < 1 or max_scene_len < 1:
        raise InputError("max_scene_len and max_moment_len must be >= 1")
    if not 1 <= min_scene_len <= max_scene_len:
        raise InputError(f"need 1 <= min_scene_len <= max_scene_len, got {min_scene_len}, {max_scene_len}")

    out_dir = os.fspath(out_dir)
    vid_dir, text_dir = os.path.join(out_dir, "video"), os.path.join(out_dir, "text")
    anno_file = os.path.join(out_dir, "annotations.json")
    meta_file = os.path.join(out_dir, "meta.json")
    glove_path = os.path.join(out_dir, "glove.txt") if write_glove else None
    if os.path.exists(anno_file) and not overwrite:
        raise DataError(f"{anno_file} already exists; pass overwrite=True (--overwrite) to replace the dataset")
    try:
        os.makedirs(vid_dir, exist_ok=True)
        os.makedirs(text_dir, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create output directories under {out_dir}: {exc}") from exc

    # the world: scene prototypes, text map, relation tokens (one stream shared by all videos)
    world = np.random.default_rng([seed, 0])
    protos = _unit(world, n_scenes, dv)                                  # (K, Dv)
    text_map = world.standard_normal((dt, dv)) / math.sqrt(dv)           # R^Dv -> R^Dt
    rel_tok = {"after": _unit(world, 1, dt)[0], "before": _unit(world, 1, dt)[0]}
    v_scale, t_scale = math.sqrt(dv), math.sqrt(dt)

    def row_to_sec(r: float) -> float:   # centre of feature row r, REFERENCE §1
        return (r * st + cs / 2) / vfps

    vid_ids = [f"syn_{i:05d}" for i in range(n_videos)]
    entries: dict[str, dict] = {}
    meta_videos: dict[str, dict] = {}
    for index, vid_id in enumerate(vid_ids):
        rng = np.random.default_rng([seed, 1, index])
        n_rows = _log_uniform_int(rng, min_len, max_len)

        # scene occurrences
        occ_cap = max(1, min(max_scene_len, n_rows // 3))
        occ_min = min(min_scene_len, occ_cap)
        occs, pos, prev = [], 0, -1
        while pos < n_rows:
            length = min(_log_uniform_int(rng, occ_min, occ_cap), n_rows - pos)
            scene = int(rng.integers(n_scenes - 1)) if prev >= 0 else int(rng.integers(n_scenes))
            if prev >= 0 and scene >= prev:
                scene += 1                                                # never repeat the previous scene
            occs.append((scene, pos, pos + length))
            pos, prev = pos + length, scene

        # features
        feats = np.empty((n_rows, dv), dtype=np.float64)
        offsets = _unit(rng, len(occs), dv) * occurrence_jitter
        for j, (scene, a, b) in enumerate(occs):
            feats[a:b] = protos[scene] + offsets[j]
        t = np.arange(n_rows, dtype=np.float64)[:, None]
        dirs = _unit(rng, 3, dv)
        periods = rng.uniform(max(n_rows, 8) / 4, 2 * max(n_rows, 8), size=3)
        phases = rng.uniform(0, 2 * math.pi, size=3)
        feats += (drift / math.sqrt(3)) * (np.sin(2 * math.pi * t / periods + phases) @ dirs)
        feats += rng.standard_normal((n_rows, dv)) * (noise / math.sqrt(dv))
        feats *= v_scale

        # queries: unambiguous (scene, relation, neighbour) triples
        triples = {}
        for j, (scene, _, _) in enumerate(occs):
            if j > 0:
                triples.setdefault((scene, "after", occs[j - 1][0]), []).append(j)
            if j + 1 < len(occs):
                triples.setdefault((scene, "before", occs[j + 1][0]), []).append(j)
        cands = [(js[0], key) for key, js in triples.items()
                 if len(js) == 1 and occs[js[0]][2] - occs[js[0]][1] <= max_moment_len]
        cands.sort()
        ambiguous = False
        if not cands:     # e.g. a single occurrence: still give the video one query
            j = int(np.argmin([b - a for _, a, b in occs]))
            rel = "after" if j > 0 else ("before" if len(occs) > 1 else None)
            ctx = occs[j - 1][0] if rel == "after" else (occs[j + 1][0] if rel else None)
            cands, ambiguous = [(j, (occs[j][0], rel, ctx))], True
        n_q = min(int(rng.integers(q_lo, q_hi + 1)), len(cands))
        chosen = sorted(rng.choice(len(cands), size=n_q, replace=False).tolist())

        duration = round(((n_rows - 1) * st + cs) / vfps, 4)
        annotations, meta_queries = [], []
        for k, c in enumerate(chosen):
            j, (scene, rel, ctx) = cands[c]
            _, a, b = occs[j]
            jit = rng.uniform(-0.25, 0.25, size=2) * st / vfps
            start = min(max(row_to_sec(a - 0.5) + jit[0], 0.0), duration)
            end = min(max(row_to_sec(b - 0.5) + jit[1], 0.0), duration)
            # length >= a quarter clip: jitter is at most a quarter clip per side, clipping
            # to [0, duration] removes less than the half clip outside the features
            start, end = round(start, 4), round(end, 4)

            n_what = int(rng.integers(1, 4))
            n_ctx = int(rng.integers(1, 3)) if rel else 0
            rows = [text_map @ (protos[scene] + rng.standard_normal(dv) * (text_noise / math.sqrt(dv)))
                    for _ in range(n_what)]
            words = [f"sc{scene:03d}"] * n_what
            if rel:
                rows.append(rel_tok[rel] + rng.standard_normal(dt) * (text_noise / math.sqrt(dt)))
                words.append(rel)
                rows += [text_map @ (protos[ctx] + rng.standard_normal(dv) * (text_noise / math.sqrt(dv)))
                         for _ in range(n_ctx)]
                words += [f"sc{ctx:03d}"] * n_ctx
            tokens = np.stack(rows) * t_scale                                  # (T_tok, Dt)
            text_id = f"{vid_id}_{k:04d}"
            _atomic_write(os.path.join(text_dir, text_id + ".npy"), _npy_bytes(tokens))
            annotations.append({"segment": [start, end], "sentence": " ".join(words),
                                "sentence_id": text_id})
            meta_queries.append({"text_id": text_id, "occurrence": j, "scene": scene,
                                 "relation": rel, "context": ctx, "ambiguous": ambiguous})

        _atomic_write(os.path.join(vid_dir, vid_id + ".npy"), _npy_bytes(feats))
        entries[vid_id] = {"fps": vfps, "duration": duration, "num_clips": n_rows,
                           "annotations": annotations}
        meta_videos[vid_id] = {"num_rows": n_rows, "occurrences": [list(o) for o in occs],
                               "queries": meta_queries}

    splits = _split_ids(vid_ids, split_fractions)
    if glove_path is not None:
        lines = [f"sc{s:03d} " + " ".join(f"{x:.6f}" for x in text_map @ protos[s] * t_scale)
                 for s in range(n_scenes)]
        lines += [f"{w} " + " ".join(f"{x:.6f}" for x in rel_tok[w] * t_scale) for w in ("after", "before")]
        _atomic_write(glove_path, ("\n".join(lines) + "\n").encode("utf-8"))
    meta = {
        "generator": "hieramamba.data.synthetic", "format_version": _FORMAT_VERSION, "seed": seed,
        "geometry": dims, "n_scenes": n_scenes, "min_scene_len": min_scene_len, "max_scene_len": max_scene_len,
        "max_moment_len": max_moment_len, "noise": noise, "drift": drift,
        "occurrence_jitter": occurrence_jitter, "text_noise": text_noise, "splits": splits,
        "videos": meta_videos,
    }
    _atomic_write(meta_file, json.dumps(meta, indent=1).encode("utf-8"))
    anno = {name: {v: entries[v] for v in ids} for name, ids in splits.items()}
    _atomic_write(anno_file, json.dumps(anno, indent=1).encode("utf-8"))   # last: marks completion

    return SyntheticDataset(
        root=out_dir, anno_file=anno_file, vid_feat_dir=vid_dir, text_feat_dir=text_dir,
        meta_file=meta_file, glove_path=glove_path, vid_dim=dv, text_dim=dt, fps=vfps,
        clip_size=dims["clip_size"], clip_stride=dims["clip_stride"],
        downsample_rate=dims["downsample_rate"], splits=splits)
