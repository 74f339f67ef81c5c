"""``hieramamba demo`` (issue 21): the printed groundings and summary are what the runtime and
eager PyTorch compute on the same video (checked against them, not against fixed numbers), the
output has no exporter noise, and the synthetic world of ``make-synthetic``'s defaults is the
embedded default's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_summary_matches_the_runtime_and_eager(tmp_path):
    env = dict(os.environ, HIERAMAMBA_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "hieramamba.cli", "demo", "--minutes", "4", "--queries", "4",
                          "--chunk", "64"], capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "torchvision" not in res.stderr + out  # the exporter's notices are dropped (issue 16)
    assert "Traceback" not in res.stderr

    from hieramamba.cli.demo import demo_video, hits, top1_agreement
    from hieramamba.export.stages import default_bundle
    from hieramamba.inference import Grounder
    from hieramamba.checkpoint import load_default
    from hieramamba.metrics import segment_iou
    from hieramamba.runtime import GroundingRuntime

    os.environ["HIERAMAMBA_CACHE"] = env["HIERAMAMBA_CACHE"]
    try:
        bundle = default_bundle("float16")  # the demo's, from the cache it filled
    finally:
        del os.environ["HIERAMAMBA_CACHE"]
    demo = demo_video(4, 0, 4)
    args = (demo["video"], demo["queries"])
    kw = dict(fps=demo["fps"], duration=demo["duration"])
    runtime = GroundingRuntime.load(bundle, chunk=64).ground(*args, **kw)
    eager = Grounder(*load_default()).ground(*args, **kw)
    n = len(demo["queries"])
    assert f"{len(demo['video'])} clips" in out and f"{n} queries" in out and n >= 1

    # Per query: the true moment, the top segments the runtime returns, a hit mark where IoU ≥ 0.5.
    for i, (segs, truth) in enumerate(zip(runtime, demo["truths"])):
        assert f"true moment {truth[0]:.1f}–{truth[1]:.1f} s" in out
        for rank, s in enumerate(segs[:3]):
            iou = float(segment_iou(np.array([s.start_sec, s.end_sec]), np.array(truth)))
            line = next(x for x in out.splitlines() if f"#{rank + 1}  {s.start_sec:8.2f} s – {s.end_sec:8.2f} s" in x)
            assert ("✓" in line) == (iou >= 0.5), line
    top1 = sum(hits(runtime, demo["truths"], 0.5, 1))
    top5 = sum(hits(runtime, demo["truths"], 0.5, 5))
    assert f"hits at IoU 0.5: top-1 {top1}/{n}, top-5 {top5}/{n}" in out
    agree = sum(top1_agreement(runtime, eager))
    assert f"top-1 segment same as eager for {agree}/{n} queries" in out
    # Latency and peak memory of both paths are reported as numbers.
    assert re.search(r"chunked runtime: [0-9.]+ s, peak RSS [0-9]+ MB", out), out
    assert re.search(r"eager PyTorch fp32 \(whole video\): [0-9.]+ s, peak RSS [0-9]+ MB", out), out


def test_long_demo_videos_skip_eager_unless_asked(monkeypatch, capsys):
    """Past two hours the demo runs the runtime only (eager's memory grows with the video)."""
    from hieramamba.cli import demo

    assert demo.EAGER_UP_TO_MIN == 120
    calls = []
    monkeypatch.setattr(demo, "demo_video", lambda minutes, index, q: calls.append(minutes) or {
        "id": "x", "video": np.zeros((64, 32), np.float32), "queries": [np.zeros((3, 32), np.float32)],
        "sentences": ["s"], "truths": [(0.0, 1.0)], "fps": 30.0, "duration": 34.0})
    from hieramamba.cli import main

    assert main(["demo", "--minutes", "600", "--backend", "torch", "--dtype", "float32", "--queries", "1"]) == 0
    out = capsys.readouterr().out
    assert calls == [600.0] and "eager PyTorch: skipped" in out and "--eager" in out


def test_make_synthetic_defaults_are_the_default_world_and_other_worlds_warn(tmp_path, capsys):
    from hieramamba.checkpoint import default_experiment_dir, default_synthetic_settings
    from hieramamba.cli import main
    from hieramamba.data.synthetic import read_world, world_of

    assert main(["make-synthetic", "--out", str(tmp_path / "same")]) == 0
    assert read_world(tmp_path / "same") == world_of(default_synthetic_settings())
    capsys.readouterr()
    exp = str(default_experiment_dir())
    assert main(["eval", "--experiment", exp, "--data", str(tmp_path / "same"), "--split", "test",
                 "--out-dir", str(tmp_path / "e1"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "another synthetic world" not in captured.err
    r1 = float(re.search(r"Rank@1_IoU@0.5: ([0-9.]+)", captured.out).group(1))
    assert r1 >= 80.0, captured.out  # the default on a fresh set of its own world
    assert main(["make-synthetic", "--out", str(tmp_path / "other"), "--scenes", "5", "--videos", "6"]) == 0
    capsys.readouterr()
    assert main(["eval", "--experiment", exp, "--data", str(tmp_path / "other"), "--split", "test",
                 "--out-dir", str(tmp_path / "e2"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "another synthetic world" in line]
    assert len(warnings) == 1 and "n_scenes" in warnings[0], err
    # A model trained here records its world; resuming it on another world's data is said too.
    meta = json.loads((tmp_path / "other" / "meta.json").read_text())
    assert meta["n_scenes"] == 5
