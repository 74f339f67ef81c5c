"""Training labels for the candidate points (REFERENCE §8.1, §10.2).

Points are rows ``[p, r_min, r_max, stride]`` in level-0 grid units (the grid of the backbone's
level 0, i.e. input features divided by ``vid_net.stride``), all levels concatenated, exactly as the
official ``PtGenerator`` buffers them. Targets are ``(start, end)`` on the same grid.

Which official variant this reproduces: ``libs/worker.py`` holds several label functions
(``_annotate_points_per_video``, ``..._fine_scale_fix``, ``..._short_segments``,
``_annotate_points_ultra_short``, ``..._multi_strategy``). ``TrainerAuxiliary`` (the trainer of
every released config) calls ``TrainerOriginal._annotate_points``, which loops over the targets
with ``_annotate_points_per_video``: plain center sampling (radius 1.5 strides) plus the
regression-range test. The other variants are dead code and are not reproduced. Likewise the
"span-aware" contrastive labels (``generate_multiscale_gt_masks_contrastive``) are only used when
``gt_contrast.span_contr_gt`` is true, which no released config sets.

The official code loops over targets; here all targets are labelled at once by broadcasting.
The arithmetic is the same element-wise float32 sequence, so the labels are bit-identical.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .errors import InputError
from .postprocess import level_points, regression_ranges

__all__ = [
    "regression_ranges",
    "make_points",
    "annotate_points",
    "gt_span_masks",
    "split_levels",
]


def make_points(max_seq_len: int, num_levels: int, regression_range: float = 4,
                sigma: float = 0.5, device=None) -> list[Tensor]:
    """Candidate points per level, each ``(max_seq_len / 2^l, 4)`` float32 rows
    ``[p, r_min, r_max, stride]`` with ``p = i·2^l`` (``use_offset=False``, as released): the
    point grid of :func:`hieramamba.postprocess.level_points` as tensors.

    Slice ``points[l][:T_l]`` for a level of length ``T_l`` (the official ``PtGenerator.forward``).
    """
    return [torch.from_numpy(p).to(device)
            for p in level_points(num_levels, max_seq_len, regression_range, sigma)]


def annotate_points(points: Tensor | Sequence[Tensor], targets: Tensor,
                    center_sampling: str = "radius", radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """Point labels and regression targets (official ``_annotate_points_per_video``).

    Args:
        points: ``(P, 4)`` rows ``[p, r_min, r_max, stride]`` (all levels concatenated), or a list of
            per-level ``(T_l, 4)`` tensors which are concatenated.
        targets: ``(2,)`` one segment or ``(n, 2)`` segments ``[g_s, g_e]``, level-0 grid units
            (the dataset's ``target`` divided by ``vid_net.stride``).
        center_sampling: ``'radius'`` (released) or ``'none'`` (positive anywhere inside the segment).
        radius: center-sampling radius in strides (``train.center_sampling_radius``, 1.5).

    Returns:
        labels: bool ``(P,)`` / ``(n, P)``; positive iff ``p`` lies strictly inside
            ``[max(c - radius·stride, g_s), min(c + radius·stride, g_e)]`` and
            ``r_min <= max(p - g_s, g_e - p) < r_max``.
        offsets: float ``(P, 2)`` / ``(n, P, 2)`` = ``(p - g_s, g_e - p) / stride`` for every point
            (negative values at points outside the segment; only positives are used).
    """
    if isinstance(points, (list, tuple)):
        points = torch.cat(list(points), dim=0)
    if points.dim() != 2 or points.size(1) != 4:
        raise InputError(f"points must be (P, 4), got {tuple(points.shape)}")
    single = targets.dim() == 1
    if single:
        targets = targets[None]
    if targets.dim() != 2 or targets.size(1) != 2:
        raise InputError(f"targets must be (2,) or (n, 2), got {tuple(targets.shape)}")
    if center_sampling not in ("radius", "none"):
        raise InputError(f"center_sampling must be 'radius' or 'none', got {center_sampling!r}")

    p, r_min, r_max, stride = (points[:, i][None] for i in range(4))   # (1, P)
    g_s, g_e = targets[:, 0:1], targets[:, 1:2]                         # (n, 1)

    pt2start = p - g_s
    pt2end = g_e - p
    offsets = torch.stack((pt2start, pt2end), dim=-1) / points[:, 3:][None]

    if center_sampling == "radius":
        ctr = 0.5 * (g_s + g_e)
        rad = stride * radius
        t_min = torch.maximum(ctr - rad, g_s)
        t_max = torch.minimum(ctr + rad, g_e)
        inside = (p - t_min > 0) & (t_max - p > 0)
    else:
        inside = (pt2start > 0) & (pt2end > 0)

    max_dist = torch.maximum(pt2start, pt2end)
    in_range = (max_dist >= r_min) & (max_dist < r_max)
    labels = inside & in_range
    if single:
        return labels[0], offsets[0]
    return labels, offsets


def gt_span_masks(targets: Tensor, level_lengths: Sequence[int]) -> Tensor:
    """Per-level ground-truth span masks used to exclude SPC negatives
    (official ``generate_multiscale_gt_masks``).

    Level ``l`` marks indices ``ceil(g_s·f) .. floor(g_e·f)`` with ``f = T_l / T_0``, both clamped
    to ``[0, T_l - 1]`` (so a span entirely past the end marks the last index, as the official).

    Args:
        targets: ``(n, 2)`` level-0 grid units.
        level_lengths: ``[T_0, T_1, ...]``.

    Returns:
        bool ``(n, sum(T_l))``, levels concatenated (split with :func:`split_levels`).
    """
    if targets.dim() != 2 or targets.size(1) != 2:
        raise InputError(f"targets must be (n, 2), got {tuple(targets.shape)}")
    ref = level_lengths[0]
    masks = []
    for length in level_lengths:
        f = length / ref
        # float32 multiply then ceil/floor, matching the official tensor.item() path
        start = torch.ceil(targets[:, 0] * f).clamp(0, length - 1).long()
        end = torch.floor(targets[:, 1] * f).clamp(0, length - 1).long()
        idx = torch.arange(length, device=targets.device)[None]
        masks.append((idx >= start[:, None]) & (idx <= end[:, None]))
    return torch.cat(masks, dim=1)


def split_levels(x: Tensor, level_lengths: Sequence[int], dim: int = 1) -> tuple[Tensor, ...]:
    """Split a tensor whose ``dim`` concatenates all levels back into per-level pieces."""
    if sum(level_lengths) != x.size(dim):
        raise InputError(
            f"level lengths sum to {sum(level_lengths)} but dim {dim} has {x.size(dim)} entries")
    return tuple(torch.split(x, list(level_lengths), dim=dim))
