"""Decoding, Soft-NMS + voting and seconds conversion: official fixtures, hand-worked examples,
a literal port of the official C++ loop, bad inputs, and the no-torch import guarantee."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hieramamba.config import load_config
from hieramamba.errors import InputError
from hieramamba.postprocess import (
    collect_candidates,
    ground_query,
    level_points,
    regression_ranges,
    soft_nms_voting,
    to_seconds,
)

REPO = Path(__file__).resolve().parents[1]
CASES = ["ego4d", "tacos"]
F32 = np.float32


# --------------------------------------------------------------------------------------------
# Official fixtures
# --------------------------------------------------------------------------------------------

def eval_queries(root, case):
    """Yield (scenario, outputs, q, per-level logits/offsets/masks) for every eval query."""
    manifest = json.loads((root / case / "manifest.json").read_text())
    for sc in manifest["scenarios"]:
        if sc["kind"] != "eval":
            continue
        out = np.load(root / case / sc["outputs_file"])
        n_levels = sum(1 for k in out.files if k.startswith("logits."))
        for q in range(out["logits.0"].shape[0]):
            levels = [[out[f"{name}.{l}"][q] for l in range(n_levels)]
                      for name in ("logits", "offsets", "masks")]
            yield sc, out, q, levels


def canonical(segs, scores):
    """Order by score desc, then start, end: equal-score candidates compare as a set."""
    order = np.lexsort((segs[:, 1], segs[:, 0], -scores))
    return segs[order], scores[order]


@pytest.mark.parametrize("case", CASES)
def test_points_match_official(golden, case):
    opt = load_config(golden / case / "experiment")
    pt = opt["pt_gen"]
    ours = level_points(pt["num_fpn_levels"], pt["max_seq_len"], pt["regression_range"], pt["sigma"])
    seen = 0
    for sc in json.loads((golden / case / "manifest.json").read_text())["scenarios"]:
        if sc["kind"] != "eval":
            continue
        out = np.load(golden / case / sc["outputs_file"])
        for l in range(pt["num_fpn_levels"]):
            ref = out[f"points.{l}"]
            assert ours[l].dtype == ref.dtype
            np.testing.assert_array_equal(ours[l][:len(ref)], ref)
            seen += 1
    assert seen > 0


@pytest.mark.parametrize("case", CASES)
def test_candidates_match_official(golden, case):
    ev = load_config(golden / case / "experiment")["eval"]
    n = 0
    for sc, out, q, (logits, offsets, masks) in eval_queries(golden, case):
        segs, scores = collect_candidates(logits, offsets, masks, ev["pre_nms_thresh"],
                                          ev["pre_nms_topk"], ev["seg_len_thresh"])
        ref_segs, ref_scores = out[f"cand.{q}.segs"], out[f"cand.{q}.scores"]
        assert segs.dtype == np.float64 and segs.shape == ref_segs.shape, (sc["name"], q)
        assert np.all(np.diff(scores) <= 0)
        a, b = canonical(segs, scores), canonical(ref_segs, ref_scores)
        np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(a[1], b[1], rtol=0, atol=1e-9)
        n += 1
    assert n > 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES)
def test_final_seconds_match_official(golden, case, dtype):
    """Full path head outputs → seconds. In float32 (deployment precision) the same tolerances
    hold: the official final outputs are float32 anyway."""
    opt = load_config(golden / case / "experiment")
    n = 0
    for sc, out, q, (logits, offsets, masks) in eval_queries(golden, case):
        logits = [x.astype(dtype) for x in logits]
        offsets = [x.astype(dtype) for x in offsets]
        segs, scores = ground_query(logits, offsets, masks, opt["eval"], sc["meta"],
                                    opt["model"]["vid_stride"])
        ref_segs, ref_scores = out[f"final.{q}.segments"], out[f"final.{q}.scores"]
        assert segs.dtype == np.float32 and scores.dtype == np.float32
        assert segs.shape == ref_segs.shape, (sc["name"], q)
        np.testing.assert_allclose(segs, ref_segs, rtol=0, atol=1e-4)
        np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
        n += 1
    assert n > 0


# --------------------------------------------------------------------------------------------
# Point grid
# --------------------------------------------------------------------------------------------

def test_regression_ranges_ego4d_training():
    assert regression_ranges(8, 2304) == [
        (0, 4), (2, 8), (4, 16), (8, 32), (16, 64), (32, 128), (64, 256), (128, 2305)]


def test_regression_ranges_single_level_not_extended():
    # The official generator only widens the last range when there are at least two levels.
    assert regression_ranges(1, 64) == [(0, 4)]


def test_level_points_layout():
    pts = level_points(3, 8)
    assert [p.shape for p in pts] == [(8, 4), (4, 4), (2, 4)]
    np.testing.assert_array_equal(pts[1][:, 0], [0, 2, 4, 6])
    np.testing.assert_array_equal(pts[2][:, 3], [4, 4])
    np.testing.assert_array_equal(pts[2][0, 1:3], [4, 16])
    np.testing.assert_array_equal(level_points(2, 4, use_offset=True)[1][:, 0], [1, 3])


# --------------------------------------------------------------------------------------------
# Candidates
# --------------------------------------------------------------------------------------------

def logit(p):
    return math.log(p / (1 - p))


def test_collect_candidates_hand_example():
    # level 0 (stride 1, points 0..3), level 1 (stride 2, points 0, 2)
    logits = [np.array([logit(0.5), logit(0.0005), logit(0.9), logit(0.7)]),
              np.array([logit(0.8), logit(0.95)])]
    offsets = [np.array([[1.0, 1.0], [1.0, 1.0], [0.5, 0.25], [0.02, 0.03]]),
               np.array([[1.0, 2.0], [0.5, 0.5]])]
    masks = [np.array([True, True, True, True]), np.array([True, False])]
    segs, scores = collect_candidates(logits, offsets, masks)
    # point 1 below pre_nms_thresh, level-1 point 2 masked out, level-0 point 3 too short
    # (length 0.05 ≤ 0.1); offsets scale with the stride 2 on level 1.
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.5], rtol=1e-12)
    np.testing.assert_allclose(segs, [[1.5, 2.25], [-2.0, 4.0], [-1.0, 1.0]], rtol=1e-12)
    assert segs.dtype == np.float64


def test_collect_candidates_topk_and_float32():
    logits = [np.array([1.0, 3.0, 2.0, 0.5], dtype=np.float32)]
    offsets = [np.ones((4, 2), dtype=np.float32)]
    masks = [np.ones(4, dtype=bool)]
    segs, scores = collect_candidates(logits, offsets, masks, pre_nms_topk=2)
    assert segs.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_array_equal(segs, [[0, 2], [1, 3]])


def test_collect_candidates_equal_scores_keep_level_then_time_order():
    logits = [np.zeros(4), np.zeros(2)]
    offsets = [np.full((4, 2), 1.0), np.full((2, 2), 1.0)]
    masks = [np.ones(4, bool), np.ones(2, bool)]
    segs, _ = collect_candidates(logits, offsets, masks)
    np.testing.assert_array_equal(segs[:, 0] + segs[:, 1], 2 * np.array([0, 1, 2, 3, 0, 2]))


def test_collect_candidates_nothing_above_threshold():
    segs, scores = collect_candidates([np.full(4, -50.0)], [np.ones((4, 2))], [np.ones(4, bool)])
    assert segs.shape == (0, 2) and scores.shape == (0,)


# --------------------------------------------------------------------------------------------
# Soft-NMS + voting, by hand
# --------------------------------------------------------------------------------------------

def decay(iou, sigma=0.9):
    return math.exp(-iou * iou / sigma)


def test_identical_segments_decay_by_exp_minus_one_over_sigma():
    segs, scores = soft_nms_voting([[0, 10], [0, 10]], [0.9, 0.8])
    np.testing.assert_allclose(segs, [[0, 10], [0, 10]], atol=1e-6)
    # IoU uses lengths + 1e-6: 10 / (10 + 2e-6) ≈ 1
    np.testing.assert_allclose(scores, [0.9, 0.8 * decay(1.0)], rtol=1e-6)


def test_disjoint_segments_do_not_decay():
    segs, scores = soft_nms_voting([[0, 1], [5, 6]], [0.5, 0.7])
    np.testing.assert_array_equal(segs, [[5, 6], [0, 1]])
    np.testing.assert_allclose(scores, [0.7, 0.5], rtol=1e-7)


def test_partial_overlap_gaussian_decay_without_voting():
    segs, scores = soft_nms_voting([[0, 10], [5, 15]], [0.9, 0.6])
    # IoU 5/15 = 1/3 → weight exp(-(1/9)/0.9); IoU < 0.95 so voting leaves both unchanged
    np.testing.assert_allclose(scores, [0.9, 0.6 * decay(1 / 3)], rtol=1e-6)
    np.testing.assert_array_equal(segs, [[0, 10], [5, 15]])


def test_candidate_decayed_below_min_score_is_dropped():
    segs, scores = soft_nms_voting([[0, 10], [0, 10], [20, 30]], [0.9, 0.002, 0.5])
    # 0.002 · exp(-1/0.9) ≈ 0.00066 < 0.001
    np.testing.assert_array_equal(segs, [[0, 10], [20, 30]])
    np.testing.assert_allclose(scores, [0.9, 0.5], rtol=1e-7)


def test_top_candidate_below_min_score_is_still_emitted():
    # Official quirk: only candidates after the current pick are checked against min_score.
    segs, scores = soft_nms_voting([[0, 1], [5, 6]], [0.0005, 0.0004])
    np.testing.assert_array_equal(segs, [[0, 1]])
    np.testing.assert_allclose(scores, [0.0005])


def test_voting_averages_near_identical_segments_by_original_scores():
    segs, scores = soft_nms_voting([[0, 10], [0, 10.2]], [0.9, 0.3])
    # voting IoU (no eps) 10/10.2 ≈ 0.98 ≥ 0.95: both kept segments become
    # (0.9·[0, 10] + 0.3·[0, 10.2]) / 1.2 = [0, 10.05]
    np.testing.assert_allclose(segs, [[0, 10.05], [0, 10.05]], atol=1e-5)
    nms_iou = 10 / (10 + 1e-6 + 10.2 + 1e-6 - 10)
    np.testing.assert_allclose(scores, [0.9, 0.3 * decay(nms_iou)], rtol=1e-6)


def test_voting_off_keeps_segments():
    segs, _ = soft_nms_voting([[0, 10], [0, 10.2]], [0.9, 0.3], voting_thresh=0)
    np.testing.assert_array_equal(segs, np.array([[0, 10], [0, 10.2]], dtype=F32))


def test_max_num_segs_caps_output():
    segs, scores = soft_nms_voting([[0, 1], [2, 3], [4, 5], [6, 7]], [0.6, 0.9, 0.7, 0.8],
                                   max_num_segs=2)
    np.testing.assert_array_equal(segs, [[2, 3], [6, 7]])
    np.testing.assert_allclose(scores, [0.9, 0.8], rtol=1e-7)


def test_swap_with_last_removal_decides_ties():
    # B is dropped after A's pick, so the last entry D moves into B's slot and comes before C:
    # with equal scores the next pick is D (a plain "delete and shift" would pick C).
    segs, scores = soft_nms_voting([[0, 10], [0, 10], [20, 21], [30, 31]], [0.9, 0.0015, 0.5, 0.5])
    # (voting rounds [0, 10] in float32, as the official does)
    np.testing.assert_allclose(segs, [[0, 10], [30, 31], [20, 21]], atol=1e-5)
    np.testing.assert_allclose(scores, [0.9, 0.5, 0.5], rtol=1e-7)


def test_hard_nms_mode():
    segs, scores = soft_nms_voting([[0, 10], [1, 11], [20, 30]], [0.9, 0.8, 0.7], mode="nms")
    # IoU([0,10],[1,11]) = 9/11 ≥ 0.1 → suppressed; < 0.95 → no voting either
    np.testing.assert_array_equal(segs, [[0, 10], [20, 30]])
    np.testing.assert_allclose(scores, [0.9, 0.7], rtol=1e-7)


def test_no_nms_mode_sorts_and_caps():
    segs, scores = soft_nms_voting([[0, 10], [1, 11], [2, 12]], [0.1, 0.3, 0.2], mode=None,
                                   max_num_segs=2)
    np.testing.assert_array_equal(segs, [[1, 11], [2, 12]])


def test_empty_input():
    segs, scores = soft_nms_voting(np.zeros((0, 2)), np.zeros(0))
    assert segs.shape == (0, 2) and scores.shape == (0,) and segs.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Soft-NMS against a literal port of the official C++ loop (softnms_1d_cpu, method 2)
# --------------------------------------------------------------------------------------------

def literal_softnms(segs, scores, sigma, min_score):
    """Line-by-line port of nms_cpu.cpp (float32 scalars), run to completion."""
    x1 = [F32(s[0]) for s in segs]
    x2 = [F32(s[1]) for s in segs]
    sc = [F32(s) for s in scores]
    areas = [x2[k] - x1[k] + F32(1e-6) for k in range(len(sc))]
    sigma, min_score = F32(sigma), F32(min_score)
    dets = []
    n = len(sc)
    i = 0
    while i < n:
        max_score, max_pos = sc[i], i
        for pos in range(i + 1, n):
            if max_score < sc[pos]:
                max_score, max_pos = sc[pos], pos
        ix1, ix2, iscore, iarea = x1[max_pos], x2[max_pos], sc[max_pos], areas[max_pos]
        dets.append((ix1, ix2, iscore))
        x1[max_pos], x2[max_pos], sc[max_pos], areas[max_pos] = x1[i], x2[i], sc[i], areas[i]
        x1[i], x2[i], sc[i], areas[i] = ix1, ix2, iscore, iarea
        pos = i + 1
        while pos < n:
            inter = max(F32(0), min(ix2, x2[pos]) - max(ix1, x1[pos]))
            ovr = inter / (iarea + areas[pos] - inter)
            weight = F32(math.exp(float(-(ovr * ovr) / sigma)))
            sc[pos] = sc[pos] * weight
            if sc[pos] < min_score:
                x1[pos], x2[pos], sc[pos], areas[pos] = x1[n - 1], x2[n - 1], sc[n - 1], areas[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return dets


@st.composite
def candidate_sets(draw):
    n = draw(st.integers(1, 25))
    grid = draw(st.booleans())  # integer segments and quantised scores make ties likely
    starts = draw(st.lists(st.integers(0, 30) if grid else st.floats(0, 30), min_size=n, max_size=n))
    lens = draw(st.lists(st.integers(1, 10) if grid else st.floats(0.2, 10), min_size=n, max_size=n))
    if grid:
        scores = draw(st.lists(st.sampled_from([0.0015, 0.01, 0.25, 0.5, 0.75]), min_size=n, max_size=n))
    else:
        scores = draw(st.lists(st.floats(0.0011, 1.0), min_size=n, max_size=n))
    segs = np.array([[s, s + l] for s, l in zip(starts, lens)], dtype=np.float32)
    return segs, np.array(scores, dtype=np.float32)


@settings(max_examples=150, deadline=None)
@given(candidate_sets(), st.sampled_from([0.9, 0.3]), st.sampled_from([0.001, 0.02, 0.3]),
       st.integers(1, 30))
def test_soft_nms_equals_literal_official_loop(cands, sigma, min_score, max_num_segs):
    segs, scores = cands
    ref = literal_softnms(segs, scores, sigma, min_score)[:max_num_segs]
    ours_segs, ours_scores = soft_nms_voting(segs, scores, sigma=sigma, min_score=min_score,
                                             max_num_segs=max_num_segs, voting_thresh=0)
    # emitted scores never increase, so the final (stable) sort keeps the emission order
    np.testing.assert_array_equal(ours_segs, np.array([d[:2] for d in ref], dtype=F32).reshape(-1, 2))
    np.testing.assert_array_equal(ours_scores, np.array([d[2] for d in ref], dtype=F32))


# --------------------------------------------------------------------------------------------
# Seconds and the full path
# --------------------------------------------------------------------------------------------

def test_to_seconds_ego4d_convention():
    # Ego4D: clip_size 32, effective stride 8 × 2 = 16 frames, 30 fps
    out = to_seconds(np.array([[0, 10], [-5, 1000]], dtype=F32), fps=30.0, clip_size=32,
                     clip_stride=16, duration=100.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[16 / 30, 176 / 30], [0, 100]], rtol=1e-6)


def test_to_seconds_vid_stride():
    out = to_seconds(np.array([[1.0, 2.0]]), fps=5.0, clip_size=1, clip_stride=1, duration=60,
                     vid_stride=2)
    np.testing.assert_allclose(out, [[(2 + 0.5) / 5, (4 + 0.5) / 5]], rtol=1e-12)


EVAL_CFG = {"pre_nms_thresh": 0.001, "pre_nms_topk": 2000, "seg_len_thresh": 0.1,
            "nms": {"mode": "soft_nms", "iou_thresh": 0.1, "min_score": 0.001, "max_num_segs": 5,
                    "sigma": 0.9, "voting_thresh": 0.95}}
META = {"fps": 30.0, "clip_size": 32, "clip_stride": 16, "duration": 20.0}


def test_ground_query_hand_example():
    logits = [np.array([logit(0.9), -50.0, -50.0, -50.0]), np.array([-50.0, -50.0])]
    offsets = [np.array([[0.0, 3.0], [1, 1], [1, 1], [1, 1]]), np.ones((2, 2))]
    masks = [np.ones(4, bool), np.ones(2, bool)]
    segs, scores = ground_query(logits, offsets, masks, EVAL_CFG, META, vid_stride=1)
    np.testing.assert_allclose(segs, [[16 / 30, (48 + 16) / 30]], rtol=1e-6)
    np.testing.assert_allclose(scores, [0.9], rtol=1e-6)


def test_ground_query_without_candidates_is_empty():
    segs, scores = ground_query([np.full(4, -50.0)], [np.ones((4, 2))], [np.ones(4, bool)],
                                EVAL_CFG, META)
    assert segs.shape == (0, 2) and scores.shape == (0,)
    assert segs.dtype == np.float32 and scores.dtype == np.float32


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

def two_levels():
    return ([np.zeros(4), np.zeros(2)], [np.ones((4, 2)), np.ones((2, 2))],
            [np.ones(4, bool), np.ones(2, bool)])


def test_nan_logits_name_the_level():
    logits, offsets, masks = two_levels()
    logits[1][1] = np.nan
    with pytest.raises(InputError, match="level 1"):
        collect_candidates(logits, offsets, masks)


@pytest.mark.parametrize("mutate, match", [
    (lambda lg, of, m: lg.pop(), "one entry per level"),
    (lambda lg, of, m: of.__setitem__(0, np.ones((4, 3))), r"offsets at level 0"),
    (lambda lg, of, m: m.__setitem__(1, np.ones(3, bool)), r"masks at level 1"),
    (lambda lg, of, m: lg.__setitem__(0, np.zeros((1, 4))), r"logits at level 0"),
    (lambda lg, of, m: of[1].__setitem__((0, 0), np.inf), r"offsets at level 1"),
])
def test_bad_level_inputs(mutate, match):
    logits, offsets, masks = two_levels()
    mutate(logits, offsets, masks)
    with pytest.raises(InputError, match=match):
        collect_candidates(logits, offsets, masks)


def test_bad_candidate_options():
    with pytest.raises(InputError):
        collect_candidates(*two_levels(), pre_nms_topk=0)
    with pytest.raises(InputError):
        collect_candidates([], [], [])


@pytest.mark.parametrize("segs, scores, kwargs", [
    (np.zeros((2, 3)), np.ones(2), {}),
    (np.zeros((2, 2)), np.ones(3), {}),
    ([[0, 1], [2, 3]], [0.5, np.nan], {}),
    ([[0, 1], [3, 2]], [0.5, 0.4], {}),
    ([[0, 1]], [0.5], {"max_num_segs": 0}),
    ([[0, 1]], [0.5], {"mode": "linear"}),
])
def test_bad_nms_inputs(segs, scores, kwargs):
    with pytest.raises(InputError):
        soft_nms_voting(segs, scores, **kwargs)


def test_bad_seconds_and_grid_inputs():
    with pytest.raises(InputError):
        to_seconds(np.zeros((1, 2)), fps=0, clip_size=32, clip_stride=16, duration=10)
    with pytest.raises(InputError):
        to_seconds(np.zeros((1, 3)), fps=30, clip_size=32, clip_stride=16, duration=10)
    with pytest.raises(InputError):
        level_points(8, 100)  # not a multiple of 2**7
    with pytest.raises(InputError):
        regression_ranges(3, 64, sigma=1.5)
    with pytest.raises(InputError, match="fps"):
        ground_query(*two_levels(), EVAL_CFG, {"clip_size": 32, "clip_stride": 16, "duration": 1})
    bad_cfg = dict(EVAL_CFG, nms=dict(EVAL_CFG["nms"], method=2))
    with pytest.raises(InputError, match="method"):
        ground_query(*two_levels(), bad_cfg, META)


# --------------------------------------------------------------------------------------------
# The torch-free runtime imports these modules
# --------------------------------------------------------------------------------------------

def test_postprocess_and_metrics_do_not_import_torch():
    code = (
        "import sys\n"
        "class BlockTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "        return None\n"
        "sys.meta_path.insert(0, BlockTorch())\n"
        "import hieramamba.postprocess, hieramamba.metrics\n"
        "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
