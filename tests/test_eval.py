"""Evaluator (REFERENCE §8.4), the train/eval/make-synthetic commands, the embedded default."""

import json

import numpy as np
import pytest
import torch
import yaml

from hieramamba.cli import main
from hieramamba.data import VideoCentricDataset
from hieramamba.errors import DataError
from hieramamba.evaluate import evaluate_dataset, evaluate_experiment, r_at
from hieramamba.pipeline import Segment
from hieramamba.metrics import recall_at_iou


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class FakeGrounder:
    """Returns hand-made predictions per (video length, query index) and records its inputs."""

    def __init__(self, table):
        self.table = table
        self.opt = {"eval": {"ranks": [1, 5], "iou_threshs": [0.3, 0.5]}}
        self.calls = []

    def ground(self, video, queries, fps, duration, clip_size, clip_stride):
        self.calls.append((tuple(video.shape), [tuple(q.shape) for q in queries], fps, duration,
                           clip_size, clip_stride))
        return [[Segment(s, e, c) for s, e, c in self.table[(video.shape[0], i)]] for i in range(len(queries))]


def _hand_dataset(tmp_path):
    vdir, tdir = tmp_path / "video", tmp_path / "text"
    vdir.mkdir()
    tdir.mkdir()
    rng = np.random.default_rng(0)
    anno = {"test": {}}
    for vid, T, segs in (("v1", 30, [[2, 6], [10, 20]]), ("v2", 12, [[0, 4]])):
        np.save(vdir / f"{vid}.npy", rng.standard_normal((T, 4)).astype(np.float32))
        anns = []
        for i, seg in enumerate(segs):
            np.save(tdir / f"{vid}_{i:04d}.npy", rng.standard_normal((3, 5)).astype(np.float32))
            anns.append({"segment": seg, "sentence": "x"})
        anno["test"][vid] = {"fps": 1.0, "duration": float(T), "annotations": anns}
    (tmp_path / "anno.json").write_text(json.dumps(anno))
    return VideoCentricDataset(tmp_path / "anno.json", vdir, tdir, split="test", is_training=False,
                               max_vid_len=64, max_text_len=8, clip_size=1, clip_stride=1,
                               vid_dim=4, text_dim=5)


def test_evaluator_on_hand_made_predictions(tmp_path):
    ds = _hand_dataset(tmp_path)
    g = FakeGrounder({
        (30, 0): [(2, 6, 0.9)],                       # exact: hit everywhere
        (30, 1): [(0, 5, 0.9), (10, 19, 0.5)],        # rank 1 misses, rank 2 has IoU 0.9
        (12, 0): [(1, 4, 0.3), (0, 2, 0.8)],          # best-scored (0, 2): IoU exactly 0.5
    })
    res = evaluate_dataset(g, ds, g.opt["eval"])
    rec = res["summary"]["overall_recall_at_iou"]
    assert rec == {"Rank@1_IoU@0.3": pytest.approx(2 / 3), "Rank@1_IoU@0.5": pytest.approx(2 / 3),
                   "Rank@5_IoU@0.3": 1.0, "Rank@5_IoU@0.5": 1.0}
    assert res["summary"]["total_queries"] == 3 and res["summary"]["total_videos"] == 2
    v2 = res["videos"]["v2"]["queries"][0]
    assert v2["ground_truth"] == [0.0, 4.0]
    assert [p["segment"] for p in v2["predictions"]] == [[0.0, 2.0], [1.0, 4.0]]   # sorted by score
    assert res["videos"]["v1"]["recall_at_iou"]["Rank@1_IoU@0.5"] == 0.5
    # time-major video and (tokens, dim) queries, the dataset's geometry
    assert g.calls[0] == ((30, 4), [(3, 5), (3, 5)], 1.0, 30.0, 1, 1)
    assert r_at(res, 5, 0.5) == 1.0


def test_evaluating_the_golden_experiment_folder_names_the_missing_data(golden, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)       # its opt.yaml points at ./data/ego4d/... (absent here)
    with pytest.raises(DataError, match=r"not found: .*data/ego4d/"):
        evaluate_experiment(golden / "ego4d" / "experiment", out_dir=tmp_path)


def test_golden_experiment_on_synthetic_data_in_its_geometry(golden, tmp_path):
    from hieramamba.config import load_config
    from hieramamba.data import make_synthetic

    opt = load_config(golden / "ego4d" / "experiment")
    syn = make_synthetic(tmp_path / "syn", opt, n_videos=3, min_len=40, max_len=80, seed=1,
                         split_fractions=(0, 1, 0))
    res = evaluate_experiment(golden / "ego4d" / "experiment", out_dir=tmp_path / "out",
                              data_paths=syn.paths(), max_videos=1)
    assert res["summary"]["total_videos"] == 1
    txt = (tmp_path / "out" / "eval_last.txt").read_text()
    assert "Rank@1_IoU@0.5:" in txt and "Rank@5_IoU@0.3:" in txt


def test_make_synthetic_train_eval_commands(tmp_path, capsys):
    from test_train import small_raw

    data = tmp_path / "data"
    assert main(["make-synthetic", "--out", str(data), "--videos", "5", "--min-len", "40", "--max-len", "64",
                 "--scenes", "5", "--max-scene-len", "12", "--max-moment-len", "16", "--seed", "3"]) == 0
    cfg = tmp_path / "small.yaml"
    cfg.write_text(yaml.safe_dump(small_raw()))
    exp = tmp_path / "exp"
    assert main(["train", "--config", str(cfg), "--data", str(data), "--output", str(exp), "--max-iters", "2",
                 "--no-progress", "--device", "cpu"]) == 0
    assert (exp / "models" / "last.pth").is_file() and (exp / "states" / "last.pth").is_file()
    assert (exp / "opt.yaml").is_file() and "finished after 2 iterations" in (exp / "log.txt").read_text()
    capsys.readouterr()
    assert main(["eval", "--experiment", str(exp), "--data", str(data), "--no-progress", "--split", "test"]) == 0
    printed = capsys.readouterr().out
    pred = json.loads((exp / "predictions_last.json").read_text())
    anno = json.loads((data / "annotations.json").read_text())
    n_test = sum(len(v["annotations"]) for v in anno["test"].values())
    assert pred["summary"]["total_queries"] == n_test
    assert set(pred["videos"]) == set(anno["test"])
    # the summary is the recall of the stored predictions (at most 5 per query, k ≤ 5 here)
    preds, targets = [], []
    for v in pred["videos"].values():
        for q in v["queries"]:
            segs = np.array([p["segment"] for p in q["predictions"]], dtype=np.float32).reshape(-1, 2)
            preds.append((segs, np.array([p["score"] for p in q["predictions"]], dtype=np.float32)))
            targets.append(np.array(q["ground_truth"]))
    assert recall_at_iou(preds, targets) == pred["summary"]["overall_recall_at_iou"]
    lines = (exp / "eval_last.txt").read_text()
    for key, value in pred["summary"]["overall_recall_at_iou"].items():
        assert f"{key}: {100 * value:.2f}" in lines and f"{key}: {100 * value:.2f}" in printed
    # The same split through an exported fp32 bundle and the chunked runtime: same predictions.
    bundle = tmp_path / "bundle"
    assert main(["export-bundle", "--experiment", str(exp), "--out", str(bundle), "--dtype", "float32"]) == 0
    assert main(["eval", "--experiment", str(exp), "--bundle", str(bundle), "--data", str(data),
                 "--no-progress", "--split", "test", "--threads", "1"]) == 0
    via_bundle = json.loads((exp / "predictions_bundle.json").read_text())
    assert (exp / "eval_bundle.txt").is_file()
    assert via_bundle["summary"]["overall_recall_at_iou"] == pred["summary"]["overall_recall_at_iou"]
    for vid, v in pred["videos"].items():
        for q, qb in zip(v["queries"], via_bundle["videos"][vid]["queries"]):
            got = np.array([p["segment"] + [p["score"]] for p in qb["predictions"]])
            want = np.array([p["segment"] + [p["score"]] for p in q["predictions"]])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # a bundle evaluated with other mask semantics than it was exported with is refused
    assert main(["eval", "--experiment", str(exp), "--bundle", str(bundle), "--data", str(data),
                 "--no-progress", "--mask-semantics", "per_sample"]) == 2
    assert "mask semantics 'official'" in capsys.readouterr().err
    # a missing feature file surfaces as a clear error naming the video, exit code 2
    vid = sorted(anno["test"])[0]
    (data / "video" / f"{vid}.npy").unlink()
    assert main(["eval", "--experiment", str(exp), "--data", str(data), "--no-progress"]) == 2
    assert vid in capsys.readouterr().err


def test_embedded_default_is_trained_and_demo_prints_true_moments(tmp_path, capsys, monkeypatch):
    """The packaged default loads strictly and grounds held-out synthetic videos of its own world
    well above chance (random weights score ~0 here); the demo prints queries and true moments."""
    import hieramamba
    from hieramamba.checkpoint import default_experiment_dir, default_synthetic_settings
    from hieramamba.data import make_synthetic
    from hieramamba.evaluate import evaluate_model

    folder = default_experiment_dir()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 5e6
    model, opt = hieramamba.load_default()
    assert not model.training
    settings = default_synthetic_settings()["make_synthetic"]
    kw = dict(settings, n_videos=settings["n_videos"], seed=settings["seed"])
    syn = make_synthetic(tmp_path / "syn", "tiny", **kw)
    res = evaluate_model(model, opt, data_paths=syn.paths(), split="test", max_videos=12)
    assert r_at(res, 5, 0.5) >= 0.7 and r_at(res, 1, 0.3) >= 0.5, res["summary"]

    # The README's main command: export to an fp16 bundle (a fresh cache), chunked ORT run.
    monkeypatch.setenv("HIERAMAMBA_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--minutes", "1", "--queries", "2"]) == 0
    assert len([p for p in (tmp_path / "cache" / "bundles").iterdir() if not p.name.startswith(".")]) == 1
    out = capsys.readouterr().out
    assert out.count("true moment") == 2 and "#1" in out and "embedded default" in out
    assert "chunked float16 runtime on ONNX Runtime (exported bundle" in out
    assert "top-1 segment same as eager for 2/2 queries" in out  # fp16 chunked runtime agrees with eager
