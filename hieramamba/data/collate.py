"""Batching of dataset samples (official ``TrainerOriginal._batchify`` layout).

* videos zero-padded to a fixed input length (training: ``max_seq_len · vid_net.stride``, i.e.
  2304 / 8192) with bool masks ``(bs, L)``;
* queries zero-padded to ``max_text_len`` tokens with bool masks; a batch of multi-query samples
  becomes ``text (bs, n_max, Dt, max_text_len)``, ``text_masks (bs, n_max, max_text_len)`` and
  ``text_size (bs,)`` = number of real queries per sample (padding queries are all-zero with
  all-False masks); single-query samples give ``(bs, Dt, max_text_len)`` and ``text_size`` all ones.
* training targets of all queries concatenated and divided by ``vid_net.stride`` (level-0 grid).

Over-long inputs raise :class:`~hieramamba.errors.InputError` (the official code would fail on a
shape mismatch); pass ``truncate_text=True`` to cut queries instead (REFERENCE §13.11).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..errors import InputError

__all__ = ["Batch", "trivial_collate", "pad_videos", "pad_texts", "batchify", "collate_train"]


class Batch(NamedTuple):
    vid: Tensor                    # (bs, Dv, L) float32
    vid_masks: Tensor              # (bs, L) bool
    text: Tensor                   # (bs, n_max, Dt, Lt)  or (bs, Dt, Lt) for single queries
    text_masks: Tensor             # (bs, n_max, Lt)      or (bs, Lt)
    text_size: Tensor              # (bs,) long, real queries per sample
    targets: Optional[Tensor] = None   # (sum n, 2) level-0 grid units (training only)


def trivial_collate(batch: list) -> list:
    """DataLoader ``collate_fn`` that keeps the list of sample dicts (the official collator)."""
    return batch


def pad_videos(vid_list: Sequence[Tensor], length: int) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(Dv, T_i)`` videos to ``(bs, Dv, length)``; mask ``(bs, length)``."""
    if not vid_list:
        raise InputError("pad_videos: empty batch")
    dim = vid_list[0].size(0)
    lens = []
    for i, v in enumerate(vid_list):
        if v.dim() != 2 or v.size(0) != dim:
            raise InputError(f"video {i}: expected ({dim}, T), got {tuple(v.shape)}")
        if v.size(1) > length:
            raise InputError(f"video {i}: {v.size(1)} features exceed the padded length {length}")
        lens.append(v.size(1))
    out = vid_list[0].new_zeros((len(vid_list), dim, length))
    for i, v in enumerate(vid_list):
        out[i, :, :lens[i]] = v
    masks = torch.arange(length)[None] < torch.as_tensor(lens)[:, None]
    return out, masks


def pad_texts(text_list: Sequence[Tensor], max_len: int, truncate: bool = False) -> tuple[Tensor, Tensor]:
    """Zero-pad ``(Dt, T_i)`` queries to ``(n, Dt, max_len)``; mask ``(n, max_len)``."""
    if not text_list:
        raise InputError("pad_texts: no queries")
    dim = text_list[0].size(0)
    out = text_list[0].new_zeros((len(text_list), dim, max_len))
    lens = []
    for i, t in enumerate(text_list):
        if t.dim() != 2 or t.size(0) != dim:
            raise InputError(f"query {i}: expected ({dim}, T), got {tuple(t.shape)}")
        if t.size(1) > max_len:
            if not truncate:
                raise InputError(f"query {i}: {t.size(1)} tokens exceed max_text_len {max_len}")
            t = t[:, :max_len]
        out[i, :, :t.size(1)] = t
        lens.append(t.size(1))
    masks = torch.arange(max_len)[None] < torch.as_tensor(lens)[:, None]
    return out, masks


def batchify(vid_list: Sequence[Tensor], text_list: Sequence, vid_len: int, max_text_len: int,
             truncate_text: bool = False) -> Batch:
    """Official ``_batchify``: ``text_list[i]`` is a tuple/list of queries (multi-query samples) or
    a single ``(Dt, T)`` tensor."""
    if len(vid_list) != len(text_list):
        raise InputError(f"{len(vid_list)} videos but {len(text_list)} query lists")
    vid, vid_masks = pad_videos(vid_list, vid_len)
    bs = len(vid_list)
    if isinstance(text_list[0], (tuple, list)):
        padded = [pad_texts(t, max_text_len, truncate_text) for t in text_list]
        sizes = [len(t) for t in text_list]
        n_max = max(sizes)
        dim = padded[0][0].size(1)
        text = padded[0][0].new_zeros((bs, n_max, dim, max_text_len))
        text_masks = torch.zeros((bs, n_max, max_text_len), dtype=torch.bool)
        for i, (t, m) in enumerate(padded):
            if t.size(1) != dim:
                raise InputError(f"sample {i}: text dim {t.size(1)} differs from {dim}")
            text[i, :sizes[i]] = t
            text_masks[i, :sizes[i]] = m
    else:
        sizes = [1] * bs
        text, text_masks = pad_texts(text_list, max_text_len, truncate_text)
    return Batch(vid, vid_masks, text, text_masks, torch.as_tensor(sizes, dtype=torch.long))


def collate_train(samples: Sequence[dict], vid_len: int, max_text_len: int, vid_stride: int = 1) -> Batch:
    """Batch training samples and attach ``targets = cat(target) / vid_stride`` ``(sum n, 2)``."""
    batch = batchify([s["vid"] for s in samples], [s["text"] for s in samples], vid_len, max_text_len)
    targets = torch.cat([s["target"].reshape(-1, 2) for s in samples]) / vid_stride
    return batch._replace(targets=targets)
