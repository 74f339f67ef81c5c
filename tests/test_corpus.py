"""``hieramamba ground-corpus`` on the local engine (worker processes): the predictions against
``hieramamba eval --bundle`` on the same split (fp32 bundle: equal entries), hand-made
manifests, resume from per-video result files (after a driver killed mid-job too), a worker
killed mid-job (test hook), per-video errors and the partial exit code, user errors."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from hieramamba.cli import main

REPO = Path(__file__).resolve().parents[1]
PARTIAL = 3


@pytest.fixture(scope="module")
def corpus(bundle, tmp_path_factory):
    """A synthetic test split (6 videos, 2–4 queries each), an experiment folder holding the
    bundle's config, and the reference: ``hieramamba eval --bundle`` on that split."""
    import torch

    from hieramamba.data import make_synthetic

    path, _, opt = bundle
    root = tmp_path_factory.mktemp("corpus")
    make_synthetic(root / "syn", "tiny", n_videos=6, min_len=40, max_len=400, seed=3, queries_per_video=(2, 4),
                   split_fractions=(0, 0, 1))
    exp = root / "exp"
    exp.mkdir()
    (exp / "opt.yaml").write_text(yaml.safe_dump(opt))
    threads = torch.get_num_threads()
    try:
        assert main(["eval", "--experiment", str(exp), "--bundle", str(path), "--data", str(root / "syn"),
                     "--split", "test", "--threads", "1", "--no-progress", "--out-dir", str(root / "ref")]) == 0
    finally:
        torch.set_num_threads(threads)  # eval's --threads sets torch's for the whole process
    reference = json.loads((root / "ref" / "predictions_bundle.json").read_text())
    assert reference["summary"]["total_videos"] == 6
    return {"bundle": path, "data": root / "syn", "exp": exp, "reference": reference,
            "eval_txt": (root / "ref" / "eval_bundle.txt").read_text()}


def ground_corpus(capsys, *args):
    capsys.readouterr()
    rc = main(["ground-corpus", "--no-progress", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def status_rows(out: Path) -> dict:
    return {r["video_id"]: r for r in map(json.loads, (out / "status.jsonl").read_text().splitlines())}


def predictions(out: Path) -> dict:
    return json.loads((out / "predictions.json").read_text())


def hand_made_manifest(data: Path, path: Path, ground_truth: bool = True) -> list:
    """A JSONL manifest of the split written from the annotation file directly (relative paths)."""
    anno = json.loads((data / "annotations.json").read_text())["test"]
    rows = []
    for vid, entry in anno.items():
        row = {"video_id": vid, "video_path": f"video/{vid}.npy", "fps": entry["fps"], "duration": entry["duration"],
               "query_ids": [a["sentence_id"] for a in entry["annotations"]],
               "query_paths": [f"text/{a['sentence_id']}.npy" for a in entry["annotations"]]}
        if ground_truth:
            row["segments"] = [a["segment"] for a in entry["annotations"]]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def without_ground_truth(reference: dict) -> dict:
    return {vid: [q["predictions"] for q in v["queries"]] for vid, v in reference["videos"].items()}


# -- equality with `hieramamba eval --bundle` ---------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_local_engine_gives_the_predictions_of_eval_bundle(corpus, tmp_path, capsys, workers):
    out = tmp_path / "out"
    rc, printed, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--data", corpus["data"], "--split", "test",
                                     "--out", out, "--workers", workers, "--experiment", corpus["exp"])
    assert rc == 0, err
    assert predictions(out) == corpus["reference"]  # every entry, float for float, and the summary
    assert (out / "eval.txt").read_text() == corpus["eval_txt"].split("seconds:")[0]
    assert printed == corpus["eval_txt"].split("seconds:")[0]
    rows = status_rows(out)
    assert set(rows) == set(corpus["reference"]["videos"]) and {r["status"] for r in rows.values()} == {"done"}
    assert len({r["worker"] for r in rows.values()}) == workers  # one process per worker, each used
    if workers == 1:  # one worker finishes videos in the order they are dispatched: longest first
        anno = json.loads((corpus["data"] / "annotations.json").read_text())["test"]
        assert list(rows) == sorted(anno, key=lambda v: -anno[v]["num_clips"])
    assert "6 grounded, 0 skipped" in err and f"local × {workers}" in err
    for vid in rows:
        doc = json.loads((out / "results" / f"{vid}.json").read_text())
        assert doc["schema"] == "hieramamba.corpus_result" and doc["video_id"] == vid
        assert doc["bundle"] == hashlib.sha256((corpus["bundle"] / "manifest.json").read_bytes()).hexdigest()


def test_a_hand_made_manifest_gives_the_same_predictions(corpus, tmp_path, capsys):
    import shutil

    import torch

    data = tmp_path / "data"  # the manifest's relative paths resolve against its folder
    shutil.copytree(corpus["data"], data)
    rows = hand_made_manifest(data, data / "corpus.jsonl")
    # One video as a .pt tensor file: read by the dataset's weights-only loader.
    torch.save(torch.from_numpy(np.load(data / rows[1]["video_path"])), data / "video" / "as_tensor.pt")
    rows[1]["video_path"] = "video/as_tensor.pt"
    (data / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    rc, _, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--manifest", data / "corpus.jsonl",
                               "--out", out, "--threads", 1)
    assert rc == 0, err
    assert predictions(out) == corpus["reference"]
    # Without ground truth: the same predictions, no scores.
    hand_made_manifest(data, data / "unannotated.jsonl", ground_truth=False)
    out2 = tmp_path / "out2"
    rc, printed, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--manifest", data / "unannotated.jsonl",
                                     "--out", out2)
    assert rc == 0, err
    got = predictions(out2)
    assert got["summary"] == {"total_queries": corpus["reference"]["summary"]["total_queries"], "total_videos": 6}
    assert without_ground_truth(got) == without_ground_truth(corpus["reference"])
    assert not (out2 / "eval.txt").exists() and "Rank@" not in printed


def test_downsampled_features_are_read_as_the_evaluation_dataset_reads_them(corpus, tmp_path):
    """Every 2nd row and a doubled effective clip stride (an Ego4D-like ``downsample_rate: 2``),
    against the dataset class reading the same files and ``evaluate_dataset``."""
    from hieramamba.corpus import DataSettings, RunOptions, WorkerConfig, manifest_from_dataset, run_corpus
    from hieramamba.data import VideoCentricDataset
    from hieramamba.evaluate import evaluate_dataset
    from hieramamba.runtime import GroundingRuntime

    data = corpus["data"]
    dataset = VideoCentricDataset(data / "annotations.json", data / "video", data / "text", split="test",
                                  is_training=False, clip_size=32, clip_stride=16, downsample_rate=2,
                                  vid_dim=32, text_dim=32)
    reference = evaluate_dataset(GroundingRuntime.load(corpus["bundle"], threads=1), dataset, {})
    tasks = manifest_from_dataset(data / "annotations.json", data / "video", data / "text", "test")
    settings = DataSettings(downsample_rate=2, clip_size=32, clip_stride=32)
    summary = run_corpus(tasks, tmp_path / "out", WorkerConfig(bundle=str(corpus["bundle"]), settings=settings),
                         RunOptions(workers=2))
    assert summary.grounded == 6 and not summary.partial
    assert predictions(tmp_path / "out") == json.loads(json.dumps(reference))
    assert reference["videos"] != corpus["reference"]["videos"]  # the setting matters


def test_parquet_manifest_reads_like_jsonl(corpus, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from hieramamba.corpus import read_manifest

    rows = hand_made_manifest(corpus["data"], tmp_path / "m.jsonl")
    for r in rows:
        r["video_path"] = str(corpus["data"] / r["video_path"])
        r["query_paths"] = [str(corpus["data"] / p) for p in r["query_paths"]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    from_parquet = read_manifest(tmp_path / "m.parquet")
    assert [t.video_id for t in from_parquet] == list(json.loads((corpus["data"] / "annotations.json").read_text())["test"])
    assert from_parquet[0].video_path == rows[0]["video_path"]
    assert from_parquet[0].segments == tuple(tuple(s) for s in rows[0]["segments"])
    assert from_parquet[0].query_ids == tuple(rows[0]["query_ids"])


@pytest.mark.parametrize("row, message", [
    ({"video_path": "v.npy", "fps": 1, "duration": 2, "query_ids": ["a"], "query_paths": ["a.npy"]}, "'video_id'"),
    ({"video_id": "v", "video_path": "v.npy", "fps": 0, "duration": 2, "query_ids": ["a"], "query_paths": ["a.npy"]},
     "'fps' must be a positive number"),
    ({"video_id": "v", "video_path": "v.npy", "fps": 1, "duration": 2, "query_ids": ["a", "b"],
      "query_paths": ["a.npy"]}, "2 query_ids but 1 query_paths"),
    ({"video_id": "v", "video_path": "v.npy", "fps": 1, "duration": 2, "query_ids": ["a"], "query_paths": ["a.npy"],
      "segments": [[3, 1]]}, "'segments' must be"),
    ({"video_id": "v", "video_path": "v.npy", "fps": 1, "query_ids": ["a"], "query_paths": ["a.npy"],
      "frames": 3}, "unknown field"),
])
def test_bad_manifest_rows_are_one_line_errors(bundle, tmp_path, capsys, row, message):
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    rc, _, err = ground_corpus(capsys, "--bundle", bundle[0], "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "o")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "line 1" in err


def test_any_video_id_becomes_one_safe_result_file_name(tmp_path):
    from hieramamba.corpus.results import result_path

    names = {v: result_path(tmp_path, v) for v in ("a/b", "../x", ".hidden", "50%", "plain_id-1.2")}
    assert all(p.parent == tmp_path / "results" for p in names.values())
    assert names["a/b"].name == "a%2Fb.json" and names["../x"].name == "%2E.%2Fx.json"
    assert names[".hidden"].name == "%2Ehidden.json" and names["plain_id-1.2"].name == "plain_id-1.2.json"
    assert len(set(names.values())) == len(names)


# -- resume ------------------------------------------------------------------------------------
def test_rerun_skips_trusted_results_and_recomputes_missing_corrupt_and_foreign_ones(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ("--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out, "--workers", 2)
    assert ground_corpus(capsys, *args)[0] == 0
    results = sorted((out / "results").iterdir())
    results[0].unlink()                                               # missing
    results[1].write_text(results[1].read_text()[:40])                # truncated
    doc = json.loads(results[2].read_text())
    results[2].write_text(json.dumps({**doc, "bundle": "0" * 64}))     # another bundle's
    untouched = {p.name: p.stat().st_mtime_ns for p in results[3:]}
    rc, _, err = ground_corpus(capsys, *args)
    assert rc == 0, err
    rows = status_rows(out)
    assert sorted(r["status"] for r in rows.values()) == ["done"] * 3 + ["skipped"] * 3
    assert {p.stem for p in results[:3]} == {v for v, r in rows.items() if r["status"] == "done"}
    assert {p.name: p.stat().st_mtime_ns for p in results[3:]} == untouched  # not rewritten
    assert "3 grounded, 3 skipped" in err
    assert json.loads((out / "summary.json").read_text())["recomputed"] == 2
    assert predictions(out) == corpus["reference"]
    # A third run has nothing left to do: no worker is started.
    rc, _, err = ground_corpus(capsys, *args)
    assert rc == 0 and "0 grounded, 6 skipped" in err
    assert predictions(out) == corpus["reference"]


def _children(pid: int) -> set:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_driver_killed_mid_job_then_the_rerun_recomputes_only_the_missing_videos(bundle, tmp_path):
    from hieramamba.data import make_synthetic

    path, _, opt = bundle
    data = tmp_path / "long"
    make_synthetic(data, "tiny", n_videos=10, min_len=1500, max_len=3000, seed=4, queries_per_video=(2, 3),
                   split_fractions=(0, 0, 1))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "hieramamba.cli", "ground-corpus", "--bundle", str(path), "--data", str(data),
           "--out", str(out), "--workers", "1", "--no-progress"]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers, deadline = set(), time.monotonic() + 120
    try:
        while len(list((out / "results").glob("*.json"))) < 2 and driver.poll() is None and time.monotonic() < deadline:
            workers |= _children(driver.pid)
            time.sleep(0.005)
        workers |= _children(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Its worker finds the driver gone and exits on its own.
        for pid in workers:
            for _ in range(200):
                if not _alive(pid):
                    break
                time.sleep(0.05)
        left = [pid for pid in workers if _alive(pid)]
    finally:
        for pid in [p for p in workers if _alive(p)]:
            os.kill(pid, signal.SIGKILL)
    assert driver.returncode == -signal.SIGKILL and workers and not left
    done_before = {p.stem for p in (out / "results").glob("*.json")}
    assert 2 <= len(done_before) < 10
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    check_resumed(res, out, done_before, path, opt, data)


def check_resumed(res, out: Path, done_before: set, bundle_path, opt, data: Path) -> None:
    """A rerun after a killed driver: it skipped exactly the videos done before, computed the
    others, and its predictions are ``eval --bundle``'s (10 videos)."""
    from hieramamba.evaluate import evaluate_pipeline
    from hieramamba.runtime import GroundingRuntime

    assert res.returncode == 0, res.stderr
    rows = status_rows(out)
    assert {v for v, r in rows.items() if r["status"] == "skipped"} == done_before
    assert {v for v, r in rows.items() if r["status"] == "done"} == set(rows) - done_before
    assert f"{10 - len(done_before)} grounded, {len(done_before)} skipped" in res.stderr
    reference = evaluate_pipeline(GroundingRuntime.load(bundle_path, threads=1), opt, split="test",
                                  data_paths={"anno_file": data / "annotations.json", "vid_feat_dir": data / "video",
                                              "text_feat_dir": data / "text"})
    assert predictions(out) == json.loads(json.dumps(reference))


# -- failures ----------------------------------------------------------------------------------
def test_a_worker_killed_mid_job_is_replaced_and_its_video_retried(corpus, tmp_path, capsys, monkeypatch):
    victim = sorted(corpus["reference"]["videos"])[2]
    monkeypatch.setenv("HIERAMAMBA_CORPUS_TEST_KILL", victim)
    out = tmp_path / "out"
    rc, _, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out,
                               "--workers", 2)
    assert rc == 0, err
    rows = status_rows(out)
    assert rows[victim]["attempts"] == 2 and rows[victim]["status"] == "done"
    assert all(r["attempts"] == 1 for v, r in rows.items() if v != victim)
    assert "1 worker deaths" in err
    assert predictions(out) == corpus["reference"]
    # With no retries allowed the video fails alone: a partial run.
    out2 = tmp_path / "out2"
    rc, _, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--data", corpus["data"], "--out", out2,
                               "--workers", 2, "--max-retries", 0)
    assert rc == PARTIAL, err
    rows = status_rows(out2)
    assert rows[victim]["status"] == "failed" and "worker died while grounding it, 1 time(s)" in rows[victim]["error"]
    assert sum(r["status"] == "done" for r in rows.values()) == 5
    assert set(predictions(out2)["videos"]) == set(corpus["reference"]["videos"]) - {victim}


def test_videos_with_bad_inputs_fail_alone_and_the_run_is_partial(corpus, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(corpus["data"], data)
    vids = sorted(corpus["reference"]["videos"])
    feats = np.load(data / "video" / f"{vids[0]}.npy")
    feats[3, 1] = np.nan
    np.save(data / "video" / f"{vids[0]}.npy", feats)                        # NaN
    np.save(data / "video" / f"{vids[1]}.npy", feats[:, :7])                 # wrong feature dim
    (data / "video" / f"{vids[2]}.npy").write_bytes(b"\x93NUMPY garbage")    # not an array
    out = tmp_path / "out"
    rc, printed, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--data", data, "--out", out, "--workers", 2)
    assert rc == PARTIAL
    assert err.strip().splitlines()[-1].startswith("ground-corpus: partial: 3 of 6 videos failed")
    rows = status_rows(out)
    assert "NaN" in rows[vids[0]]["error"] and "row 3" in rows[vids[0]]["error"]
    assert "dim" in rows[vids[1]]["error"] and "32" in rows[vids[1]]["error"]
    assert vids[2] in rows[vids[2]]["error"] and "cannot read" in rows[vids[2]]["error"]
    assert all(rows[v]["status"] == "failed" and rows[v]["attempts"] == 1 for v in vids[:3])
    assert all(rows[v]["status"] == "done" for v in vids[3:])
    got = predictions(out)
    assert set(got["videos"]) == set(vids[3:])
    assert all(got["videos"][v] == corpus["reference"]["videos"][v] for v in vids[3:])
    assert not any((out / "results" / f"{v}.json").exists() for v in vids[:3])
    # Fixing one and rerunning grounds just the failed videos again.
    shutil.copy(corpus["data"] / "video" / f"{vids[0]}.npy", data / "video" / f"{vids[0]}.npy")
    rc, _, err = ground_corpus(capsys, "--bundle", corpus["bundle"], "--data", data, "--out", out)
    assert rc == PARTIAL and "1 grounded, 3 skipped (done before), 2 failed" in err


def test_user_errors_end_in_one_line_and_exit_2(corpus, tmp_path, capsys):
    data, b = corpus["data"], corpus["bundle"]
    (tmp_path / "file").write_text("x")
    cases = [
        (("--bundle", b, "--data", data, "--out", tmp_path / "file"), "is a file"),
        (("--bundle", b, "--data", data, "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "o"), "exactly one"),
        (("--bundle", b, "--out", tmp_path / "o"), "exactly one"),
        (("--bundle", b, "--data", data, "--out", tmp_path / "o", "--address", "127.0.0.1:1"), "--engine ray"),
        (("--bundle", tmp_path, "--data", data, "--out", tmp_path / "o"), "not a runtime bundle"),
        (("--bundle", b, "--data", data, "--split", "nope", "--out", tmp_path / "o"), "split 'nope' not found"),
        (("--bundle", b, "--manifest", tmp_path / "m.txt", "--out", tmp_path / "o"), "manifest not found"),
    ]
    for args, message in cases:
        rc, _, err = ground_corpus(capsys, *args)
        assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, (args, err)
    # An experiment whose config the bundle was not exported from is refused before any work.
    exp = tmp_path / "exp"
    exp.mkdir()
    opt = yaml.safe_load((corpus["exp"] / "opt.yaml").read_text())
    opt["train"]["data"]["downsample_rate"] = 2
    (exp / "opt.yaml").write_text(yaml.safe_dump(opt))
    rc, _, err = ground_corpus(capsys, "--bundle", b, "--data", data, "--out", tmp_path / "o", "--experiment", exp)
    assert rc == 2 and "exported with clip_stride=16.0" in err and "32.0" in err
    assert not (tmp_path / "o").exists()


def test_importing_the_corpus_package_imports_neither_ray_nor_torch():
    code = "import sys, hieramamba.corpus; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stderr
