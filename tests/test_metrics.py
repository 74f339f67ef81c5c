"""R@k, IoU≥θ and the predictions JSON on hand-worked cases, plus bad inputs."""

import json

import numpy as np
import pytest

from hieramamba.errors import InputError
from hieramamba.metrics import metric_key, predictions_json, rank_hits, recall_at_iou, segment_iou

KEYS = ["Rank@1_IoU@0.3", "Rank@1_IoU@0.5", "Rank@5_IoU@0.3", "Rank@5_IoU@0.5"]


def pred(*rows):
    """Predictions (segments, scores) from rows (start, end, score)."""
    a = np.array(rows, dtype=np.float64).reshape(-1, 3)
    return a[:, :2], a[:, 2]


# --------------------------------------------------------------------------------------------
# IoU
# --------------------------------------------------------------------------------------------

def test_segment_iou_basic_cases():
    iou = segment_iou(np.array([[5, 15], [20, 30], [2, 4], [0, 10]]), np.array([0, 10]))
    np.testing.assert_allclose(iou, [5 / 15, 0, 0.2, 1], rtol=1e-6)


def test_segment_iou_zero_length_prediction_is_zero():
    assert segment_iou(np.array([[5, 5]]), np.array([0, 10]))[0] == 0


def test_segment_iou_zero_union_is_nan_like_official():
    assert np.isnan(segment_iou(np.array([[5, 5]]), np.array([5, 5]))[0])


def test_segment_iou_single_segment():
    assert segment_iou(np.array([0, 5]), np.array([0, 10])) == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# Recall
# --------------------------------------------------------------------------------------------

def test_metric_key_matches_official_format():
    assert metric_key(1, 0.3) == "Rank@1_IoU@0.3"
    assert metric_key(50, 0.1) == "Rank@50_IoU@0.1"


def test_perfect_and_missing_query():
    r = recall_at_iou([pred((0, 10, 0.9)), pred((50, 60, 0.9))], [np.array([0, 10]), np.array([0, 10])])
    assert list(r) == KEYS
    assert r == {k: 0.5 for k in KEYS}


def test_ranking_uses_scores_not_input_order():
    # best segment last in the list but highest score → rank 1
    r = recall_at_iou([pred((50, 60, 0.1), (40, 45, 0.2), (0, 10, 0.9))], [np.array([0, 10])])
    assert r["Rank@1_IoU@0.5"] == 1.0


def test_equal_scores_keep_input_order():
    # Documented choice: a stable sort, so the first of two equal-score predictions is rank 1.
    r = recall_at_iou([pred((50, 60, 0.5), (0, 10, 0.5))], [np.array([0, 10])])
    assert r["Rank@1_IoU@0.3"] == 0.0 and r["Rank@5_IoU@0.3"] == 1.0


def test_iou_exactly_at_threshold_is_a_hit():
    # IoU 3/10 = 0.3 and 5/10 = 0.5 exactly: hits (≥)
    r03 = recall_at_iou([pred((0, 3, 0.9))], [np.array([0, 10])])
    r05 = recall_at_iou([pred((0, 5, 0.9))], [np.array([0, 10])])
    assert r03["Rank@1_IoU@0.3"] == 1.0 and r03["Rank@1_IoU@0.5"] == 0.0
    assert r05["Rank@1_IoU@0.5"] == 1.0


def test_zero_length_prediction_is_a_miss():
    r = recall_at_iou([pred((5, 5, 0.9))], [np.array([0, 10])])
    assert r == {k: 0.0 for k in KEYS}


def test_fewer_predictions_than_k_use_what_exists():
    r = recall_at_iou([pred((50, 60, 0.9), (0, 6, 0.8))], [np.array([0, 10])])
    assert r == {"Rank@1_IoU@0.3": 0.0, "Rank@1_IoU@0.5": 0.0,
                 "Rank@5_IoU@0.3": 1.0, "Rank@5_IoU@0.5": 1.0}


def test_only_first_k_predictions_count():
    # the hit is ranked 6th: outside R@5
    rows = [(100 + 10 * i, 105 + 10 * i, 0.9 - 0.1 * i) for i in range(5)] + [(0, 10, 0.1)]
    r = recall_at_iou([pred(*rows)], [np.array([0, 10])])
    assert r == {k: 0.0 for k in KEYS}


def test_zero_predictions_is_a_miss():
    # Documented choice: the official evaluator crashes here (max of an empty tensor).
    empty = (np.zeros((0, 2)), np.zeros(0))
    r = recall_at_iou([empty, pred((0, 10, 0.9))], [np.array([0, 10]), np.array([0, 10])])
    assert r == {k: 0.5 for k in KEYS}


def test_several_queries_are_averaged():
    gt = np.array([0, 10])
    preds = [
        pred((0, 10, 0.9)),                     # R@1 hit at 0.3 and 0.5
        pred((0, 4, 0.9)),                      # IoU 0.4: R@1 hit at 0.3 only
        pred((50, 60, 0.9), (0, 10, 0.5)),      # R@5 hit only
        pred((50, 60, 0.9)),                    # miss
    ]
    r = recall_at_iou(preds, [gt] * 4)
    assert r == {"Rank@1_IoU@0.3": 0.5, "Rank@1_IoU@0.5": 0.25,
                 "Rank@5_IoU@0.3": 0.75, "Rank@5_IoU@0.5": 0.5}


def test_custom_ranks_and_thresholds():
    r = recall_at_iou([pred((0, 10, 0.9))], [np.array([0, 20])], ranks=(1, 10, 50),
                      iou_threshs=(0.1, 0.3, 0.5))
    assert len(r) == 9 and r["Rank@50_IoU@0.5"] == 1.0 and r["Rank@10_IoU@0.1"] == 1.0


def test_rank_hits_shape():
    hits = rank_hits(*pred((0, 4, 0.9)), np.array([0, 10]))
    np.testing.assert_array_equal(hits, [[True, False], [True, False]])


# --------------------------------------------------------------------------------------------
# Predictions JSON
# --------------------------------------------------------------------------------------------

def test_predictions_json_layout():
    many = pred(*[(i, i + 10, 0.1 * i) for i in range(7)])  # 7 predictions, best = last
    videos = [
        ("vid_a", [many, pred((0, 10, 0.9))], [np.array([6, 16]), np.array([0, 10.1])]),
        ("vid_b", [pred((50, 60, 0.9))], [np.array([0, 10])]),
    ]
    out = predictions_json(videos)
    json.dumps(out)  # serialisable as is
    assert out["summary"]["total_queries"] == 3 and out["summary"]["total_videos"] == 2
    assert out["summary"]["overall_recall_at_iou"] == recall_at_iou(
        [many, pred((0, 10, 0.9)), pred((50, 60, 0.9))],
        [np.array([6, 16]), np.array([0, 10.1]), np.array([0, 10])])
    a = out["videos"]["vid_a"]
    assert [q["query_id"] for q in a["queries"]] == [0, 1]
    q0 = a["queries"][0]
    assert len(q0["predictions"]) == 5
    assert q0["predictions"][0] == {"segment": [6.0, 16.0], "score": float(np.float32(0.6))}
    assert [p["score"] for p in q0["predictions"]] == sorted((p["score"] for p in q0["predictions"]), reverse=True)
    # float32 values, as the official stores them
    assert a["queries"][1]["ground_truth"] == [0.0, float(np.float32(10.1))]
    assert a["recall_at_iou"] == {k: 1.0 for k in KEYS}
    assert out["videos"]["vid_b"]["recall_at_iou"] == {k: 0.0 for k in KEYS}
    assert set(a) == {"queries", "recall_at_iou"}
    assert set(out) == {"summary", "videos"}


def test_predictions_json_stores_at_most_max_rank_predictions():
    out = predictions_json([("v", [pred((0, 1, 0.5), (2, 3, 0.6))], [np.array([0, 1])])], ranks=(1,))
    assert out["videos"]["v"]["queries"][0]["predictions"] == [{"segment": [2.0, 3.0], "score": float(np.float32(0.6))}]


def test_predictions_json_repeated_video_appends_queries():
    out = predictions_json([("v", [pred((0, 10, 0.9))], [np.array([0, 10])]),
                            ("v", [pred((50, 60, 0.9))], [np.array([0, 10])])])
    v = out["videos"]["v"]
    assert [q["query_id"] for q in v["queries"]] == [0, 0]
    assert v["recall_at_iou"] == {k: 0.0 for k in KEYS}  # the later occurrence, as upstream
    assert out["summary"]["total_queries"] == 2 and out["summary"]["total_videos"] == 1


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preds, targets, kwargs", [
    ([pred((0, 1, 0.5))], [], {}),                                      # count mismatch
    ([], [], {}),                                                       # no queries
    ([pred((0, 1, 0.5))], [np.array([0, 1, 2])], {}),                   # bad target
    ([(np.zeros((1, 3)), np.ones(1))], [np.array([0, 1])], {}),          # bad segments
    ([(np.zeros((2, 2)), np.ones(1))], [np.array([0, 1])], {}),          # scores length
    ([(np.zeros((1, 2)), np.array([np.nan]))], [np.array([0, 1])], {}),  # NaN score
    ([pred((0, 1, 0.5))], [np.array([0, 1])], {"ranks": ()}),
    ([pred((0, 1, 0.5))], [np.array([0, 1])], {"ranks": (0,)}),
    ([pred((0, 1, 0.5))], [np.array([0, 1])], {"iou_threshs": (0.31, 0.33)}),  # same key
])
def test_recall_bad_inputs(preds, targets, kwargs):
    with pytest.raises(InputError):
        recall_at_iou(preds, targets, **kwargs)


def test_iou_bad_shapes():
    with pytest.raises(InputError):
        segment_iou(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(InputError):
        segment_iou(np.zeros((2, 2)), np.array([0, 1, 2]))


def test_predictions_json_bad_inputs():
    with pytest.raises(InputError):
        predictions_json([("v", [], [])])
    with pytest.raises(InputError):
        predictions_json([])
    with pytest.raises(InputError):
        predictions_json([("v", [pred((0, 1, 0.5))], [np.array([0, 1]), np.array([0, 1])])])
