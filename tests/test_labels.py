"""Point labels (REFERENCE §10.2), worked by hand on a 16-step, 3-level pyramid.

Points: level 0 p = 0..15, stride 1, range [0, 4); level 1 p = 0, 2, .., 14, stride 2, range [2, 8);
level 2 p = 0, 4, 8, 12, stride 4, range [4, 17) (last level: max(2·8, 16 + 1)).
"""

import pytest
import torch

from hieramamba.errors import InputError
from hieramamba.labels import annotate_points, gt_span_masks, make_points, regression_ranges, split_levels

LENGTHS = [16, 8, 4]


def _points():
    return make_points(16, 3, regression_range=4, sigma=0.5)


def _positives(target):
    labels, offsets = annotate_points(_points(), torch.tensor(target, dtype=torch.float32))
    per_level = split_levels(labels[None], LENGTHS)
    pts = _points()
    out = [pts[lv][per_level[lv][0], 0].tolist() for lv in range(3)]
    return out, labels, offsets


def test_points_and_ranges_match_ptgenerator():
    assert regression_ranges(3, 16) == [(0.0, 4.0), (2.0, 8.0), (4.0, 17.0)]
    # released Ego4D/TACoS ranges (REFERENCE §8.1)
    assert regression_ranges(8, 2304) == [(0, 4), (2, 8), (4, 16), (8, 32), (16, 64), (32, 128),
                                          (64, 256), (128, 2305)]
    pts = _points()
    assert [p.shape[0] for p in pts] == LENGTHS
    assert pts[1][3].tolist() == [6.0, 2.0, 8.0, 2.0]
    assert pts[2][:, 0].tolist() == [0.0, 4.0, 8.0, 12.0]
    with pytest.raises(InputError):
        make_points(18, 3)


def test_short_segment_only_on_level0():
    # [4, 6]: centre 5; level 0 window [3.5, 6.5] ∩ [4, 6] -> p = 5 with d = (1, 1) < 4.
    # level 1 window [2, 8] ∩ [4, 6]: 4 and 6 lie on the (open) boundary -> none.
    pos, labels, offsets = _positives([4.0, 6.0])
    assert pos == [[5.0], [], []]
    assert offsets[5].tolist() == [1.0, 1.0]


def test_long_segment_on_higher_levels():
    # [2, 14]: centre 8. level 0: p=7,8,9 inside the window but max d >= 4.
    # level 1 (window [5, 11]): p=6 -> max d 8 (not < 8), p=8 -> 6 ok, p=10 -> 8 no.
    # level 2 (window [2, 14]): p=4 (2, 10), 8 (6, 6), 12 (10, 2) all in [4, 17).
    pos, labels, offsets = _positives([2.0, 14.0])
    assert pos == [[], [8.0], [4.0, 8.0, 12.0]]
    # offsets are in units of the level stride: p=4 on level 2 -> (2, 10) / 4
    idx = 16 + 8 + 1
    assert offsets[idx].tolist() == [0.5, 2.5]
    assert offsets[16 + 4].tolist() == [3.0, 3.0]


def test_regression_range_boundaries():
    # [0, 8]: level 0 p=4 has max d = 4 = r_max -> excluded (upper bound exclusive);
    # level 1 (window [1, 7]) p=2,4,6 with max d 6, 4, 6 in [2, 8).
    pos, _, _ = _positives([0.0, 8.0])
    assert pos[0] == []
    assert pos[1] == [2.0, 4.0, 6.0]
    # [2, 6]: level 1 p=4 has max d = 2 = r_min -> included (lower bound inclusive);
    # the same segment is also positive on level 0 at p=3,4,5.
    pos, _, _ = _positives([2.0, 6.0])
    assert pos[0] == [3.0, 4.0, 5.0]
    assert pos[1] == [4.0]


def test_center_sampling_window_is_open():
    # custom points with an unlimited range, stride 2 -> radius 3 around the centre 10
    p = torch.arange(6.0, 14.01, 0.5)
    pts = torch.stack([p, torch.zeros_like(p), torch.full_like(p, 100.0), torch.full_like(p, 2.0)], 1)
    labels, _ = annotate_points(pts, torch.tensor([0.0, 20.0]))
    assert p[labels].tolist() == [7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5]
    # window clipped by the segment itself: [9, 10] -> only points strictly inside (9, 10)
    labels, _ = annotate_points(pts, torch.tensor([9.0, 10.0]))
    assert p[labels].tolist() == [9.5]
    # no center sampling: every point strictly inside the segment
    labels, _ = annotate_points(pts, torch.tensor([0.0, 20.0]), center_sampling="none")
    assert labels.all()
    # radius 1.5 of stride 1 -> window [8.5, 11.5]
    pts1 = pts.clone()
    pts1[:, 3] = 1.0
    labels, _ = annotate_points(pts1, torch.tensor([0.0, 20.0]), radius=1.5)
    assert p[labels].tolist() == [9.0, 9.5, 10.0, 10.5, 11.0]


def test_batched_equals_per_target():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(7, generator=g) * 12
    targets = torch.stack([s, s + 0.2 + torch.rand(7, generator=g) * 10], 1)
    pts = torch.cat(_points())
    labels, offsets = annotate_points(pts, targets)
    assert labels.shape == (7, 28) and offsets.shape == (7, 28, 2)
    for i in range(7):
        l1, o1 = annotate_points(pts, targets[i])
        assert torch.equal(labels[i], l1) and torch.equal(offsets[i], o1)


def test_gt_span_masks():
    m = gt_span_masks(torch.tensor([[2.3, 9.7], [14.5, 40.0]]), LENGTHS)
    lv = split_levels(m, LENGTHS)
    assert lv[0][0].nonzero().flatten().tolist() == list(range(3, 10))
    assert lv[1][0].nonzero().flatten().tolist() == [2, 3, 4]      # ceil(1.15) .. floor(4.85)
    assert lv[2][0].nonzero().flatten().tolist() == [1, 2]         # ceil(0.575) .. floor(2.425)
    # a span running past the end is clamped to the last index
    assert lv[0][1].nonzero().flatten().tolist() == [15]
    assert lv[2][1].nonzero().flatten().tolist() == [3]


def test_bad_shapes():
    with pytest.raises(InputError):
        annotate_points(torch.zeros(5, 3), torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError):
        annotate_points(torch.cat(_points()), torch.zeros(3, 3))
