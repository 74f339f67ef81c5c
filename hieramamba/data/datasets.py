"""The official ``video_centric`` dataset (REFERENCE §10.1, §12), reading the official file layout.

Layout: one annotation JSON ``{split: {video_id: {fps, duration, [num_clips], annotations: [{segment:
[s, e] (seconds), sentence, [sentence_id]}]}}}``; video features ``<vid_feat_dir>/<video_id>.npy`` (or
``.pt``), time-major ``(T, Dv)``; text features ``<text_feat_dir>/<text_id>.npy`` ``(T_tok, Dt)`` with
``text_id = sentence_id`` or ``"<video_id>_<index:04d>"``, or GloVe word vectors for TACoS.

Samples (dicts):

====================  =========================================================================
``vid``               float32 ``(Dv, T)`` (every ``downsample_rate``-th row; cropped in training)
``text``              tuple of float32 ``(Dt, T_tok)``, one per query (≤ ``max_text_len`` tokens
                      in training; not truncated at evaluation, as the official)
``target``            float32 ``(n, 2)`` moments on the input-feature grid
                      ``g = clip(t·fps, 0, floor(duration·fps)) / st − cs / (2·st)``, shifted and
                      clamped by the training crop; the trainer divides by ``vid_net.stride``
``segment``           float32 ``(n, 2)`` the same moments in seconds (clipped to ``[0, duration]``)
``fps``, ``duration``, ``num_frames``, ``clip_size``, ``clip_stride`` (= clip_stride × downsample_rate,
as the official loader returns), ``vid_id``, ``text_ids`` (tuple), ``sentences`` (tuple)
====================  =========================================================================

Training builds one sample per group of a video's queries (official greedy grouping, built once
from ``seed`` and reused every epoch); evaluation one sample per video with all its queries.

Decisions (differences from the official loader, all on error paths or bookkeeping):

* Every bad input raises :class:`~hieramamba.errors.DataError` naming the file, the video id and,
  where relevant, the text id: missing/malformed JSON or split, bad ``fps``/``duration``/segment
  values, missing, unreadable or truncated feature files, wrong rank or feature dimension (checked
  against ``vid_dim``/``text_dim`` = the config's ``vid_net.in_dim``/``text_net.in_dim``), NaN/Inf
  features, sentences without a single word (GloVe mode), a split without any usable moment.
  The official code asserts, raises bare ``ValueError`` or crashes later.
* Moments: as the official, segments are clipped to ``[0, duration]`` and zero-length ones are
  dropped silently (they exist in Ego4D-NLQ). A moment with ``end < start``, or one of positive
  length lying entirely outside the video (``start >= duration`` or ``end <= 0``; the official
  drops these silently too) is an error by default — it almost always means the annotation and the
  features disagree — or dropped with ``outside_moments='drop'``. Partial overlaps are clipped;
  the counts are kept in :attr:`VideoCentricDataset.stats`.
* Randomness: grouping uses ``np.random.default_rng(seed)``; the training crop of item ``i`` in
  epoch ``e`` uses ``np.random.default_rng([seed, e, i])``, so a sample does not depend on which
  DataLoader worker produced it (the official uses the process-global RNGs). Call
  :meth:`set_epoch` before each epoch (with persistent workers the workers keep their own copy).
* A crop that cannot keep every grouped moment ``> trunc_thresh`` covered in ``num_trials`` (5000)
  draws raises DataError naming the video (official: ``ValueError('no valid truncation found')``).
  The draws are made at once and the first accepted one is used — the same distribution as the
  official sequential loop.
* ``segment`` holds the sample's own queries (the official returns all segments of the video in
  training; it is unused there).
* Not supported (ConfigError): ``to_fixed_len``, external scores, ``group_method`` other than
  ``greedy`` (none is used by a released config).
"""

from __future__ import annotations

import json
import math
import os
from copy import deepcopy
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .tokenizer import GloveTokenizer, tokenize

__all__ = ["VideoCentricDataset", "make_dataset", "load_annotations", "read_feature_array"]

TextSource = Union[None, str, Callable[[str], torch.Tensor]]


def _finite_number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def load_annotations(anno_file: str | os.PathLike, splits: Sequence[str],
                     outside_moments: str = "error") -> tuple[dict, dict]:
    """Parse the official annotation JSON for ``splits`` (concatenated in order).

    Returns ``(videos, stats)``: ``videos[vid_id] = {fps, duration, num_frames, num_clips_raw,
    segments (n, 2) float64 seconds, text_ids, sentences}`` (videos without usable moments are
    left out), and counters ``{'clipped', 'dropped_zero_length', 'dropped_outside'}``.
    """
    anno_file = os.fspath(anno_file)
    if outside_moments not in ("error", "drop"):
        raise ConfigError(f"outside_moments must be 'error' or 'drop', got {outside_moments!r}")
    try:
        with open(anno_file, "r", encoding="utf-8") as f:
            anno = json.load(f)
    except FileNotFoundError as exc:
        raise DataError(f"annotation file not found: {anno_file}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{anno_file}: malformed annotation JSON ({exc})") from exc
    except OSError as exc:
        raise DataError(f"cannot read annotation file {anno_file}: {exc}") from exc
    if not isinstance(anno, dict):
        raise DataError(f"{anno_file}: expected a JSON object of splits, got {type(anno).__name__}")

    stats = {"clipped": 0, "dropped_zero_length": 0, "dropped_outside": 0}
    videos: dict[str, dict] = {}
    for split in splits:
        if split not in anno:
            raise DataError(f"{anno_file}: split {split!r} not found (available: {sorted(anno)})")
        entries = anno[split]
        if not isinstance(entries, dict):
            raise DataError(f"{anno_file}: split {split!r} must map video ids to entries")
        for vid_id, entry in entries.items():
            where = f"{anno_file}: video {vid_id!r}"
            if not isinstance(entry, dict):
                raise DataError(f"{where}: entry must be an object, got {type(entry).__name__}")
            if "annotations" not in entry:
                continue                                    # official: such entries are skipped
            fps = _finite_number(entry.get("fps"))
            duration = _finite_number(entry.get("duration"))
            if fps is None or fps <= 0:
                raise DataError(f"{where}: 'fps' must be a positive number, got {entry.get('fps')!r}")
            if duration is None or duration <= 0:
                raise DataError(
                    f"{where}: 'duration' must be a positive number, got {entry.get('duration')!r}")
            num_clips = entry.get("num_clips")
            if num_clips is not None:
                n = _finite_number(num_clips)
                if n is None or n < 1 or not float(n).is_integer():
                    raise DataError(f"{where}: 'num_clips' must be a positive integer, got {num_clips!r}")
                num_clips = int(n)
            items = entry["annotations"]
            if not isinstance(items, list):
                raise DataError(f"{where}: 'annotations' must be a list")

            segments, text_ids, sentences = [], [], []
            for i, item in enumerate(items):
                here = f"{where}, annotation {i}"
                if not isinstance(item, dict):
                    raise DataError(f"{here}: must be an object")
                seg = item.get("segment")
                if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                    raise DataError(f"{here}: 'segment' must be [start, end] seconds, got {seg!r}")
                start, end = _finite_number(seg[0]), _finite_number(seg[1])
                if start is None or end is None:
                    raise DataError(f"{here}: 'segment' values must be finite numbers, got {seg!r}")
                if end < start:
                    raise DataError(f"{here}: segment {seg!r} ends before it starts")
                if end == start:
                    stats["dropped_zero_length"] += 1
                    continue
                if start >= duration or end <= 0:
                    if outside_moments == "drop":
                        stats["dropped_outside"] += 1
                        continue
                    raise DataError(
                        f"{here}: moment [{start}, {end}] s lies outside the video "
                        f"[0, {duration}] s (pass outside_moments='drop' — CLI: --outside-moments drop — to skip such moments)")
                c_start, c_end = max(start, 0.0), min(end, duration)
                if (c_start, c_end) != (start, end):
                    stats["clipped"] += 1
                sentence = item.get("sentence", "")
                if not isinstance(sentence, str):
                    raise DataError(f"{here}: 'sentence' must be a string")
                text_id = item.get("sentence_id", f"{vid_id}_{i:04d}")
                segments.append((c_start, c_end))
                text_ids.append(str(text_id))
                sentences.append(sentence.strip())
            if not segments:
                continue                                    # official: skipped
            videos[vid_id] = {
                "fps": fps,
                "duration": duration,
                "num_frames": int(duration * fps),
                "num_clips_raw": num_clips,
                "segments": np.asarray(segments, dtype=np.float64).reshape(-1, 2),
                "text_ids": tuple(text_ids),
                "sentences": tuple(sentences),
            }
    if not videos:
        raise DataError(f"{anno_file}: split(s) {list(splits)} contain no annotated moments")
    return videos, stats


def read_feature_array(path: str, what: str, dim: Optional[int] = None,
                       header_only: bool = False) -> np.ndarray | tuple:
    """Read a ``(T, D)`` ``.npy`` / ``.pt`` feature file as float32, or only its shape
    (``header_only``; ``.npy`` is memory-mapped, which also detects truncated files).
    ``what`` names the owner (video / text id) in error messages."""
    try:
        if path.endswith(".npy"):
            arr = np.load(path, mmap_mode="r" if header_only else None, allow_pickle=False)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise ValueError(f"expected a tensor, found {type(obj).__name__}")
            arr = obj.detach().float().numpy()
    except FileNotFoundError as exc:
        raise DataError(f"{what}: feature file not found: {path}") from exc
    except Exception as exc:  # numpy/torch raise many types for truncated or corrupt files
        raise DataError(f"{what}: cannot read feature file {path} ({type(exc).__name__}: {exc})") from exc
    if arr.ndim != 2 or arr.shape[0] < 1:
        raise DataError(f"{what}: {path} must hold a (T, D) array with T >= 1, got shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise DataError(
            f"{what}: {path} has feature dim {arr.shape[1]}, expected {dim} "
            f"(shape {arr.shape}; time-major (T, D) expected)")
    if header_only:
        return tuple(arr.shape)
    arr = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{what}: {path} contains NaN or Inf values")
    return arr


class VideoCentricDataset(Dataset):
    """Official ``video_centric`` dataset; see the module docstring for the sample format.

    Args:
        anno_file: annotation JSON.
        vid_feat_dir: directory (or list of directories, concatenated on channels) of video features.
        text_feat_dir: directory of per-query token features; ``None`` with ``tokenizer='glove'``.
        split: split name or list of names.
        is_training: grouped + cropped training samples, else one sample per video.
        max_vid_len: training window in input features (config ``train.data.max_vid_len`` =
            ``vid_net.stride · vid_net.max_seq_len``).
        max_text_len: training token limit (``text_net.max_seq_len``).
        clip_size, clip_stride, downsample_rate: feature geometry in frames (``train.data``).
        crop_ratio: ``(lo, hi)`` random crop of short videos in training, or ``None``.
        trunc_thresh: every grouped moment must keep more than this fraction inside the crop.
        max_num_text: max queries per training sample (``None`` = no limit).
        tokenizer: ``None`` (read ``text_feat_dir``), ``'glove'`` (needs ``glove_path``) or a callable
            ``sentence -> (Dt, T)`` tensor.
        glove_path: GloVe text file for ``tokenizer='glove'``.
        vid_dim, text_dim: expected feature dims (config ``vid_net.in_dim`` / ``text_net.in_dim``).
        seed: RNG seed (grouping and crops).
        validate: check at construction that every feature file exists and has a readable header
            of the right shape (cheap: ``.npy`` headers are memory-mapped), so errors surface before
            training starts rather than at a random step.
        outside_moments: ``'error'`` or ``'drop'`` (see module docstring).
    """

    def __init__(self, anno_file: str | os.PathLike, vid_feat_dir, text_feat_dir=None, *,
                 split: str | Sequence[str] = "train", is_training: bool = True,
                 max_vid_len: int = 2304, max_text_len: int = 24, clip_size: float = 32,
                 clip_stride: float = 8, downsample_rate: int = 1,
                 crop_ratio: Optional[Sequence[float]] = None, trunc_thresh: float = 0.5,
                 max_num_text: Optional[int] = None, tokenizer: TextSource = None,
                 glove_path: Optional[str | os.PathLike] = None, vid_dim: Optional[int] = None,
                 text_dim: Optional[int] = None, normalize_vid: bool = False,
                 normalize_text: bool = False, seed: int = 1234567891, num_trials: int = 5000,
                 validate: bool = True, outside_moments: str = "error"):
        super().__init__()
        self.anno_file = os.fspath(anno_file)
        self.splits = (split,) if isinstance(split, str) else tuple(split)
        dirs = vid_feat_dir if isinstance(vid_feat_dir, (list, tuple)) else (vid_feat_dir,)
        self.vid_feat_dirs = tuple(os.fspath(d) for d in dirs)
        for d in self.vid_feat_dirs:
            if not os.path.isdir(d):
                raise DataError(f"video feature directory not found: {d}")
        self.text_feat_dir = None if text_feat_dir is None else os.fspath(text_feat_dir)
        if tokenizer is None:
            if self.text_feat_dir is None:
                raise ConfigError("text_feat_dir is required when no tokenizer is given")
            if not os.path.isdir(self.text_feat_dir):
                raise DataError(f"text feature directory not found: {self.text_feat_dir}")
        if not isinstance(downsample_rate, int) or downsample_rate < 1:
            raise ConfigError(f"downsample_rate must be a positive int, got {downsample_rate!r}")
        if crop_ratio is not None and (len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1]):
            raise ConfigError(f"crop_ratio must be (lo, hi) with 0 < lo <= hi, got {crop_ratio!r}")
        if max_num_text is not None and max_num_text < 1:
            raise ConfigError(f"max_num_text must be >= 1 or None, got {max_num_text}")

        self.is_training = is_training
        self.max_vid_len = int(max_vid_len)
        self.max_text_len = int(max_text_len)
        self.clip_size = clip_size
        self.downsample_rate = downsample_rate
        self.clip_stride = clip_stride * downsample_rate          # effective, as the official
        self.crop_ratio = None if crop_ratio is None else tuple(crop_ratio)
        self.trunc_thresh = trunc_thresh
        self.max_num_text = max_num_text
        self.vid_dim, self.text_dim = vid_dim, text_dim
        self.normalize_vid, self.normalize_text = normalize_vid, normalize_text
        self.seed = int(seed)
        self.num_trials = int(num_trials)
        self.epoch = 0

        self.videos, self.stats = load_annotations(self.anno_file, self.splits, outside_moments)
        for v in self.videos.values():
            n = v["num_clips_raw"]
            if n is None:   # official estimate from duration when the JSON has no num_clips
                n = max(1, int(v["duration"] * v["fps"] / clip_stride))
            v["num_clips"] = (n + downsample_rate - 1) // downsample_rate

        self.tokenizer = self._make_tokenizer(tokenizer, glove_path)
        if validate:
            self._validate_files()

        if is_training:
            rng = np.random.default_rng(self.seed)
            self.samples = tuple(s for vid in self.videos for s in self._group(vid, rng))
        else:
            self.samples = tuple((vid, tuple(range(len(v["segments"])))) for vid, v in self.videos.items())

    # -- construction helpers -----------------------------------------------------------------
    def _make_tokenizer(self, tokenizer: TextSource, glove_path) -> Optional[Callable]:
        if tokenizer is None or callable(tokenizer):
            return tokenizer
        if tokenizer != "glove":
            raise ConfigError(f"tokenizer must be None, 'glove' or a callable, got {tokenizer!r}")
        if glove_path is None:
            raise DataError("tokenizer 'glove' needs glove_path (the glove.6B.300d.txt file)")
        vocab = set()
        for vid_id, v in self.videos.items():
            for tid, sentence in zip(v["text_ids"], v["sentences"]):
                words = tokenize(sentence)
                if not words:
                    raise DataError(
                        f"{self.anno_file}: video {vid_id!r}, text {tid!r}: sentence {sentence!r} "
                        "has no word to embed")
                vocab.update(words)
        return GloveTokenizer(glove_path, self.text_dim or 300, vocab)

    def _vid_feature_path(self, d: str, vid_id: str) -> str:
        for ext in (".npy", ".pt"):
            path = os.path.join(d, vid_id + ext)
            if os.path.isfile(path):
                return path
        raise DataError(f"video {vid_id!r}: feature file not found: {os.path.join(d, vid_id)}.npy (or .pt)")

    def _text_feature_path(self, vid_id: str, text_id: str) -> str:
        path = os.path.join(self.text_feat_dir, text_id + ".npy")
        if not os.path.isfile(path):
            raise DataError(f"video {vid_id!r}, text {text_id!r}: feature file not found: {path}")
        return path

    def _validate_files(self) -> None:
        for vid_id, v in self.videos.items():
            dims = []
            for d in self.vid_feat_dirs:
                path = self._vid_feature_path(d, vid_id)
                if path.endswith(".npy"):
                    shape = read_feature_array(path, f"video {vid_id!r}", header_only=True)
                    dims.append(shape[1])
            all_known = len(dims) == len(self.vid_feat_dirs)
            if self.vid_dim is not None and all_known and sum(dims) != self.vid_dim:
                raise DataError(
                    f"video {vid_id!r}: features in {self.vid_feat_dirs} have dim {sum(dims)}, "
                    f"expected {self.vid_dim} (vid_net.in_dim)")
            if self.tokenizer is None:
                for tid in v["text_ids"]:
                    read_feature_array(self._text_feature_path(vid_id, tid),
                                       f"video {vid_id!r}, text {tid!r}", self.text_dim, header_only=True)

    def _group(self, vid_id: str, rng: np.random.Generator) -> list[tuple[str, tuple[int, ...]]]:
        """Official greedy grouping (``_group_with_max_len``)."""
        v = self.videos[vid_id]
        if v["num_clips"] <= self.max_vid_len:
            win = v["num_clips"]
            if self.crop_ratio is not None:
                win = max(math.ceil(self.crop_ratio[0] * win), 1)
        else:
            win = self.max_vid_len
        win_sec = (self.clip_stride * (win - 1) + self.clip_size) / v["fps"]

        order = np.argsort(v["segments"][:, 0], kind="stable")
        segs = v["segments"][order]
        free = np.ones(len(segs), dtype=bool)
        groups = []
        while free.any():
            ptr = int(np.flatnonzero(free)[0])              # earliest unused moment
            ws, we = segs[ptr, 0], segs[ptr, 0] + win_sec
            if segs[ptr, 1] - segs[ptr, 0] > win_sec:
                idx = np.array([ptr])                       # longer than the window: alone
            else:
                idx = np.flatnonzero((segs[:, 0] >= ws) & (segs[:, 1] <= we) & free)
                if self.max_num_text is not None and len(idx) > self.max_num_text:
                    idx = rng.choice(idx, self.max_num_text, replace=False)
            groups.append((vid_id, tuple(int(i) for i in order[idx])))
            free[idx] = False
        return groups

    # -- loading ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def load_video(self, vid_id: str) -> torch.Tensor:
        """Video features ``(Dv, T)`` float32 after down-sampling (and optional normalisation)."""
        feats = [read_feature_array(self._vid_feature_path(d, vid_id), f"video {vid_id!r}")
                 for d in self.vid_feat_dirs]
        if len(feats) > 1:                                   # official: align, pad by repetition
            lens = [len(x) for x in feats]
            if max(lens) - min(lens) > 1:
                raise DataError(
                    f"video {vid_id!r}: feature lengths {lens} in {self.vid_feat_dirs} differ by > 1")
            feats = [np.concatenate([x, np.repeat(x[-1:], max(lens) - len(x), 0)]) for x in feats]
        arr = np.concatenate(feats, axis=1) if len(feats) > 1 else feats[0]
        if self.vid_dim is not None and arr.shape[1] != self.vid_dim:
            raise DataError(
                f"video {vid_id!r}: features have dim {arr.shape[1]}, expected {self.vid_dim} "
                f"(vid_net.in_dim); files in {self.vid_feat_dirs}")
        if self.downsample_rate > 1:
            arr = arr[::self.downsample_rate]
        out = torch.from_numpy(np.ascontiguousarray(arr.T))
        return F.normalize(out, dim=0) if self.normalize_vid else out

    def load_text(self, vid_id: str, idx: int) -> torch.Tensor:
        """Token features ``(Dt, T_tok)`` of query ``idx`` of ``vid_id`` (truncated in training)."""
        v = self.videos[vid_id]
        tid = v["text_ids"][idx]
        what = f"video {vid_id!r}, text {tid!r}"
        if self.tokenizer is not None:
            feats = self.tokenizer(v["sentences"][idx])
            if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or feats.size(1) < 1:
                raise DataError(
                    f"{what}: tokenizer returned no (Dt, T >= 1) features for {v['sentences'][idx]!r}")
            feats = feats.float()
            if self.text_dim is not None and feats.size(0) != self.text_dim:
                raise DataError(f"{what}: tokenizer gives dim {feats.size(0)}, expected {self.text_dim}")
        else:
            arr = read_feature_array(self._text_feature_path(vid_id, tid), what, self.text_dim)
            feats = torch.from_numpy(np.ascontiguousarray(arr.T))
        if self.is_training:
            feats = feats[:, :self.max_text_len]
        return F.normalize(feats, dim=0) if self.normalize_text else feats

    def _crop(self, feats: torch.Tensor, segs: np.ndarray, offset: float, rng: np.random.Generator,
              vid_id: str) -> tuple[torch.Tensor, np.ndarray]:
        """Official ``_truncate_vid_feats`` (segments float32 on the feature grid)."""
        vid_len = feats.size(1)
        win = self.max_vid_len
        if vid_len <= win:
            if self.crop_ratio is None:
                return feats, segs
            lo = max(math.ceil(self.crop_ratio[0] * vid_len), 1)
            hi = min(math.ceil(self.crop_ratio[1] * vid_len), vid_len)
            win = int(rng.integers(lo, hi + 1))
            if win == vid_len:
                return feats, segs
        s0 = max(0, math.floor(float(segs[:, 0].max()) - win))
        s1 = min(vid_len - win, math.ceil(float(segs[:, 1].min())))
        seg_lens = np.maximum(segs[:, 1] - segs[:, 0], np.float32(1e-5))
        if s0 <= s1:
            ws = rng.integers(s0, s1 + 1, size=self.num_trials)                  # (K,)
            we = ws + win
            start = np.maximum(segs[None, :, 0], (ws - offset)[:, None].astype(np.float32))
            end = np.minimum(segs[None, :, 1], (we + offset)[:, None].astype(np.float32))
            overlap = np.maximum(end - start, np.float32(0))
            ok = np.flatnonzero((overlap / seg_lens > self.trunc_thresh).all(axis=1))
            if ok.size:
                a = int(ws[ok[0]])
                b = a + win
                new = np.clip(segs - np.float32(a), np.float32(-offset), np.float32(b - a + offset))
                return feats[:, a:b], new.astype(np.float32)
        raise DataError(
            f"video {vid_id!r}: no crop of {win} features keeps more than {self.trunc_thresh} of "
            f"every moment {segs.tolist()} (feature grid) in {self.num_trials} tries")

    def __getitem__(self, index: int) -> dict:
        vid_id, seg_idx = self.samples[index]
        v = self.videos[vid_id]
        feats = self.load_video(vid_id)
        offset = 0.5 * self.clip_size / self.clip_stride
        seconds = v["segments"][np.asarray(seg_idx)]
        grid = np.clip(seconds * v["fps"], 0, v["num_frames"]) / self.clip_stride - offset
        grid = grid.astype(np.float32)
        if self.is_training:
            rng = np.random.default_rng([self.seed, self.epoch, int(index)])
            feats, grid = self._crop(feats, grid, offset, rng, vid_id)
        texts = tuple(self.load_text(vid_id, i) for i in seg_idx)
        return {
            "vid": feats,
            "text": texts,
            "target": torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32)),
            "segment": torch.from_numpy(seconds.astype(np.float32)),
            "fps": v["fps"],
            "duration": v["duration"],
            "num_frames": v["num_frames"],
            "clip_size": self.clip_size,
            "clip_stride": self.clip_stride,
            "vid_id": vid_id,
            "text_ids": tuple(v["text_ids"][i] for i in seg_idx),
            "sentences": tuple(v["sentences"][i] for i in seg_idx),
        }


def make_dataset(opt: dict, is_training: bool, *, root: Optional[str | os.PathLike] = None,
                 anno_file=None, vid_feat_dir=None, text_feat_dir=None, glove_path=None,
                 split: Optional[str | Sequence[str]] = None, seed: Optional[int] = None,
                 validate: bool = True, outside_moments: str = "error") -> VideoCentricDataset:
    """Build the dataset a merged config (:func:`hieramamba.config.load_config`) describes.

    Uses ``train.data`` (training) or ``train.data`` with ``eval.data.split`` (evaluation), feature
    dims from ``model.vid_net.in_dim`` / ``model.text_net.in_dim`` and ``seed``. Keyword arguments
    override the config's paths (relative paths are resolved against ``root``, default: the current
    directory). TACoS (``tokenizer: glove``) reads ``glove_path`` (default ``<root>/glove.6B.300d.txt``).
    """
    try:
        data = deepcopy(opt["train"]["data"])
        model = opt["model"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"config lacks train.data / model sections ({exc})") from exc
    if not is_training:
        data["split"] = opt.get("eval", {}).get("data", {}).get("split", "test")
    if data.get("name", "video_centric") != "video_centric":
        raise ConfigError(f"data.name {data.get('name')!r} is not supported (only 'video_centric')")
    if data.get("to_fixed_len", False):
        raise ConfigError("data.to_fixed_len=True is not supported (no released config uses it)")
    if data.get("ext_score_dir") is not None:
        raise ConfigError("data.ext_score_dir (external scores) is not supported")
    if data.get("group_method", "greedy") != "greedy":
        raise ConfigError(f"data.group_method {data.get('group_method')!r} is not supported (only 'greedy')")

    base = os.fspath(root) if root is not None else os.getcwd()

    def resolve(p):
        if p is None:
            return None
        if isinstance(p, (list, tuple)):
            return [resolve(x) for x in p]
        p = os.fspath(p)
        return p if os.path.isabs(p) else os.path.join(base, p)

    anno_file = anno_file if anno_file is not None else data.get("anno_file")
    vid_feat_dir = vid_feat_dir if vid_feat_dir is not None else data.get("vid_feat_dir")
    text_feat_dir = text_feat_dir if text_feat_dir is not None else data.get("text_feat_dir")
    for key, value in (("anno_file", anno_file), ("vid_feat_dir", vid_feat_dir)):
        if value is None:
            raise ConfigError(f"train.data.{key} is not set and was not passed")
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and glove_path is None:
        glove_path = "glove.6B.300d.txt"
    max_vid_len = data.get("max_vid_len",
                           model.get("vid_net", {}).get("stride", 1) * model["vid_net"]["max_seq_len"])
    max_text_len = data.get("max_text_len", model["text_net"]["max_seq_len"])
    return VideoCentricDataset(
        resolve(anno_file),
        resolve(vid_feat_dir),
        resolve(text_feat_dir),
        split=split if split is not None else data.get("split", "train"),
        is_training=is_training,
        max_vid_len=max_vid_len,
        max_text_len=max_text_len,
        clip_size=data["clip_size"],
        clip_stride=data["clip_stride"],
        downsample_rate=data.get("downsample_rate", 1),
        crop_ratio=data.get("crop_ratio"),
        trunc_thresh=data.get("trunc_thresh", 0.5),
        max_num_text=data.get("max_num_text"),
        tokenizer=tokenizer,
        glove_path=resolve(glove_path),
        vid_dim=model["vid_net"].get("in_dim"),
        text_dim=model["text_net"].get("in_dim"),
        normalize_vid=data.get("normalize_vid", False),
        normalize_text=data.get("normalize_text", False),
        seed=opt.get("seed", 1234567891) if seed is None else seed,
        validate=validate,
        outside_moments=outside_moments,
    )
