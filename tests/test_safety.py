"""Nothing unsafe, nothing silently wrong, nothing lost (issue 16): pickles never run, tampered
artifacts are refused, the default's cache is safe for concurrent processes and repairs itself,
outputs are checked before work, and user mistakes end in one line and a non-zero exit."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hieramamba.cli import main
from hieramamba.errors import CheckpointError, DataError, InputError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "hieramamba" / "assets" / "tiny"


class Planted:
    """Unpickling this runs a command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Planted(marker), "model_ema": Planted(marker)}, path)


def one_line_error(capsys, rc, *needles):
    """The CLI ended with exit code ``rc`` ≠ 0 and one ``error:`` line naming the problem."""
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("error:") for line in lines), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# -- 1. code execution -------------------------------------------------------------------------

def test_no_loader_runs_a_pickle(tmp_path, capsys):
    marker = tmp_path / "pwned"
    # An experiment folder whose weights are a planted pickle.
    exp = tmp_path / "exp"
    shutil.copytree(TINY, exp)
    plant(exp / "models" / "last.pth", marker)
    from hieramamba.checkpoint import load_experiment

    with pytest.raises(CheckpointError, match="never run"):
        load_experiment(exp)
    rc = main(["ground", "--experiment", str(exp), "--video", str(tmp_path / "v.npy"), "--query", "q", "--fps", "30"])
    one_line_error(capsys, rc)
    # A training folder whose saved state is a planted pickle: resuming refuses it.
    syn = tmp_path / "syn"
    assert main(["make-synthetic", "--out", str(syn), "--videos", "3", "--min-len", "64", "--max-len", "80"]) == 0
    capsys.readouterr()
    out = tmp_path / "train"
    assert main(["train", "--config", "tiny", "--data", str(syn), "--output", str(out), "--max-iters", "1",
                 "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    plant(out / "states" / "last.pth", marker)
    rc = main(["train", "--config", "tiny", "--data", str(syn), "--output", str(out), "--max-iters", "2",
               "--no-progress", "--threads", "1"])
    one_line_error(capsys, rc, "states/last.pth", "not a readable training state")
    # .pt features given to ground, and .pt features of a dataset.
    evil_pt = tmp_path / "v.pt"
    torch.save(Planted(marker), evil_pt)
    rc = main(["ground", "--experiment", str(TINY), "--video", str(evil_pt), "--query", str(evil_pt), "--fps", "30"])
    one_line_error(capsys, rc, "v.pt")
    from hieramamba.data.datasets import read_feature_array

    with pytest.raises(DataError, match="cannot read feature file"):
        read_feature_array(str(evil_pt), "video v")
    assert not marker.exists()


# -- 2. artifact integrity -----------------------------------------------------------------------

def _ground_bundle(bundle_dir, tmp_path, capsys):
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((80, 32)).astype(np.float32))
    np.save(tmp_path / "q.npy", np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32))
    rc = main(["ground", "--bundle", str(bundle_dir), "--video", str(tmp_path / "v.npy"),
               "--query", str(tmp_path / "q.npy"), "--fps", "30", "--chunk", "16"])
    return rc, capsys.readouterr()


def test_tampered_bundles_are_refused(bundle, tmp_path, capsys):
    src = bundle[0]
    rc, out = _ground_bundle(src, tmp_path, capsys)
    assert rc == 0, out.err
    man = json.loads((src / "manifest.json").read_text())

    def case(name, edit):
        b = tmp_path / name
        shutil.copytree(src, b)
        edit(b)
        rc, out = _ground_bundle(b, tmp_path, capsys)
        assert rc == 2 and "Traceback" not in out.err, out.err
        assert len([x for x in out.err.splitlines() if x.startswith("error:")]) == 1, out.err
        assert str(b) in out.err and "hieramamba export-bundle" in out.err, out.err
        return out.err

    assert "local1" in case("swapped", lambda b: shutil.copy(b / "local2.onnx", b / "local1.onnx"))
    assert "text" in case("truncated", lambda b: (b / "text.onnx").write_bytes((b / "text.onnx").read_bytes()[:500]))
    assert "pre0" in case("flipped", lambda b: (b / "pre0.onnx").write_bytes(
        (lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:])((b / "pre0.onnx").read_bytes())))
    assert "heads" in case("empty", lambda b: (b / "heads.onnx").write_bytes(b""))
    assert "front" in case("wrong_kind", lambda b: shutil.copy(b / "text.onnx", b / "front.onnx"))
    for name, change in (("levels", lambda m: m["plan"].update(num_levels=3)),
                         ("scales", lambda m: m["plan"].update(head_scales=[2.0] * len(m["plan"]["head_scales"]))),
                         ("types", lambda m: m["plan"].update(vid_stride="1")),
                         ("stage_io", lambda m: m["stages"]["scan0"].update(inputs=["x"]))):
        def edit(b, change=change):
            m = json.loads((b / "manifest.json").read_text())
            change(m)
            (b / "manifest.json").write_text(json.dumps(m))
        case(f"plan_{name}", edit)
    assert "not a readable JSON" in case("not_json", lambda b: (b / "manifest.json").write_text("{oops"))
    assert "holds a list" in case("a_list", lambda b: (b / "manifest.json").write_text(json.dumps([man])))
    # The content hash is what catches an edit that keeps every type right (head scales).
    assert "edited after export" in case("scales2", lambda b: (b / "manifest.json").write_text(
        json.dumps(dict(man, plan=dict(man["plan"], head_scales=[3.0] * len(man["plan"]["head_scales"]))))))


def test_stage_files_are_hashed_once_per_process(bundle, monkeypatch):
    from hieramamba import artifacts
    from hieramamba.runtime import GroundingRuntime

    calls = []
    real = artifacts.file_sha256
    monkeypatch.setattr(artifacts, "file_sha256", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(artifacts, "_verified", {})
    video = np.zeros((40, 32), np.float32)
    q = [np.zeros((3, 32), np.float32)]
    GroundingRuntime.load(bundle[0], chunk=16).ground(video, q, fps=30)
    first = len(calls)
    assert first == len(json.loads((bundle[0] / "manifest.json").read_text())["stages"])
    GroundingRuntime.load(bundle[0], chunk=16).ground(video, q, fps=30)
    assert len(calls) == first  # a second runtime on the same files: no second hash


# -- 3. the default's cache ------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_fill_the_cache_and_a_corrupt_one_is_redone(tmp_path):
    env = dict(os.environ, HIERAMAMBA_CACHE=str(tmp_path / "cache"))
    code = ("from hieramamba.export.stages import default_bundle\n"
            "print('BUNDLE', default_bundle('float32', log=lambda line: print('LOG', line, flush=True)))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=REPO) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        outs.append(out)
    paths = {line.split(" ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("BUNDLE")}
    assert len(paths) == 1
    exported = sum("exporting the default" in out for out in outs)
    assert exported == 1, outs  # one exported, the other used its bundle
    bundle_dir = Path(paths.pop())
    (bundle_dir / "heads.onnx").write_bytes(b"corrupt")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "unusable" in res.stdout and "exporting it again" in res.stdout, res.stdout
    from hieramamba.artifacts import BundleManifest

    BundleManifest.read(bundle_dir).verify_stage_files(bundle_dir)
    assert not list((tmp_path / "cache" / "bundles").glob(f".{bundle_dir.name}.*[0-9]*"))  # no temp left


def test_an_unwritable_cache_is_named_before_any_export(tmp_path, monkeypatch):
    from hieramamba.export.stages import default_bundle

    (tmp_path / "cache_file").write_text("")
    monkeypatch.setenv("HIERAMAMBA_CACHE", str(tmp_path / "cache_file"))
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="is a file, not a folder"):
        default_bundle("float32")
    assert time.perf_counter() - t0 < 30


# -- 4. silently wrong answers -----------------------------------------------------------------

def test_a_duration_the_features_contradict_is_refused(tmp_path, capsys):
    from hieramamba.inference import Grounder
    from hieramamba.checkpoint import load_default

    model, opt = load_default()
    g = Grounder(model, opt)
    video = np.random.default_rng(0).standard_normal((120, 32)).astype(np.float32)  # 120 clips: ~64 s
    q = [np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)]
    for bad in (10.0, 0.0, -3.0, float("nan")):
        with pytest.raises(InputError, match="duration"):
            g.ground(video, q, fps=30.0, duration=bad)
    segs = g.ground(video, q, fps=30.0, duration=64.5)[0]
    assert segs and all(0 <= s.start_sec <= s.end_sec <= 64.5 for s in segs)
    assert len({(round(s.start_sec, 2), round(s.end_sec, 2)) for s in segs}) > 1
    np.save(tmp_path / "v.npy", video)
    np.save(tmp_path / "q.npy", q[0])
    rc = main(["ground", "--experiment", str(TINY), "--video", str(tmp_path / "v.npy"),
               "--query", str(tmp_path / "q.npy"), "--fps", "30", "--duration", "10"])
    one_line_error(capsys, rc, "duration 10 s is shorter than the video")


# -- 5. failing after the work is done ------------------------------------------------------------

def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    np.save(tmp_path / "v.npy", np.zeros((50, 32), np.float32))
    np.save(tmp_path / "q.npy", np.zeros((3, 32), np.float32))
    ground = ["ground", "--experiment", str(TINY), "--video", str(tmp_path / "v.npy"), "--query",
              str(tmp_path / "q.npy"), "--fps", "30"]
    cases = [
        (["export-bundle", "--config", "tiny", "--out", str(blocker / "sub" / "b")], "is a file, not a folder"),
        (["export", "--config", "tiny", "--out", str(blocker / "m.onnx")], "is a file, not a folder"),
        (["export", "--config", "tiny", "--out", str(tmp_path)], "must end in .onnx"),
        (ground + ["--out", str(blocker / "r.json")], "is a file, not a folder"),
        (["eval", "--experiment", str(TINY), "--data", str(tmp_path), "--out-dir", str(blocker)], "is a file"),
        (["make-synthetic", "--out", str(blocker)], "is a file"),
        (["bench", "--out", str(blocker), "--paths", "eager_fp32"], "is a file"),
    ]
    for argv, needle in cases:
        t0 = time.perf_counter()
        rc = main(argv)
        one_line_error(capsys, rc, needle)
        assert time.perf_counter() - t0 < 20, argv  # refused up front, not after an export
    # ground --out into a folder that does not exist yet: made, and no temporary file left.
    assert main(ground + ["--out", str(tmp_path / "new" / "r.json")]) == 0
    assert json.loads((tmp_path / "new" / "r.json").read_text())["queries"]
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["r.json"]
    if os.geteuid() != 0:  # root writes anywhere: a read-only folder only stops other users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        one_line_error(capsys, main(ground + ["--out", str(ro / "r.json")]), "permission denied")


# -- 6, 7. user mistakes: one line, a non-zero exit, never a traceback -----------------------------

def test_twenty_bad_inputs_end_in_one_line(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good_v, good_q = tmp_path / "v.npy", tmp_path / "q.npy"
    np.save(good_v, rng.standard_normal((60, 32)).astype(np.float32))
    np.save(good_q, rng.standard_normal((4, 32)).astype(np.float32))
    files = {
        "nan.npy": np.full((60, 32), np.nan, np.float32), "wide.npy": np.zeros((60, 31), np.float32),
        "int.npy": np.zeros((60, 32), np.int64), "empty.npy": np.zeros((0, 32), np.float32),
        "long_q.npy": np.zeros((99, 32), np.float32), "3d.npy": np.zeros((2, 60, 32), np.float32),
    }
    for name, arr in files.items():
        np.save(tmp_path / name, arr)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    torch.save({"a": 1}, tmp_path / "dict.pt")
    big_endian = tmp_path / "be.npy"
    np.save(big_endian, rng.standard_normal((60, 32)).astype(">f4"))
    import yaml

    bad_exps = {}
    for name, edit in (("str_int", lambda raw: raw["model"]["vid_net"].update(arch=[2, 0, "6"])),
                       ("float_int", lambda raw: raw["model"]["vid_net"].update(mamba_headdim=16.5)),
                       ("binary", None)):
        exp = tmp_path / f"exp_{name}"
        shutil.copytree(TINY, exp)
        if edit is None:
            (exp / "opt.yaml").write_bytes(b"\x80\x81\xfe\xff" * 50)
        else:
            raw = yaml.safe_load((exp / "opt.yaml").read_text())
            edit(raw)
            (exp / "opt.yaml").write_text(yaml.safe_dump(raw))
        bad_exps[name] = exp
    not_tensor = tmp_path / "exp_not_tensor"
    shutil.copytree(TINY, not_tensor)
    blob = torch.load(not_tensor / "models" / "last.pth", weights_only=True)
    key = next(iter(blob["model_ema"]))
    blob["model_ema"][key] = "not a tensor"
    torch.save(blob, not_tensor / "models" / "last.pth")

    def ground(video=good_v, query=good_q, *extra, exp=TINY):
        return ["ground", "--experiment", str(exp), "--video", str(video), "--query", str(query), "--fps", "30", *extra]

    cases = [
        (ground(tmp_path / "nan.npy"), "NaN/Inf"),
        (ground(tmp_path / "wide.npy"), "feature dim is 31"),
        (ground(tmp_path / "int.npy"), "floating-point"),
        (ground(tmp_path / "empty.npy"), "zero clips"),
        (ground(good_v, tmp_path / "long_q.npy"), "--text-overflow truncate"),
        (ground(tmp_path / "3d.npy"), "2-D"),
        (ground(tmp_path / "junk.npy"), "not a readable .npy"),
        (ground(tmp_path / "dict.pt"), "holds a dict"),
        (ground(tmp_path / "missing.npy"), "not found"),
        (ground(good_v, good_q, "--fps", "0"), "fps must be a positive number"),
        (ground(good_v, good_q, "--duration", "1"), "duration"),
        (ground(exp=bad_exps["str_int"]), "model.vid_net.arch must be a list of ints"),
        (ground(exp=bad_exps["float_int"]), "model.vid_net.mamba_headdim must be an int"),
        (ground(exp=bad_exps["binary"]), "not a text file"),
        (ground(exp=not_tensor), "not tensors"),
        (ground(exp=tmp_path / "nowhere"), "experiment folder not found"),
        (["ground", "--bundle", str(tmp_path), "--video", str(good_v), "--query", str(good_q), "--fps", "30"],
         "not a runtime bundle"),
        (["ground", "--bundle", str(tmp_path), "--experiment", str(TINY), "--video", str(good_v),
          "--query", str(good_q), "--fps", "30"], "exactly one of"),
        (["export-bundle", "--config", "tiny", "--opset", "3", "--out", str(tmp_path / "b3")], "opset 3 is too old"),
        (["export-bundle", "--config", "nosuch", "--out", str(tmp_path / "b4")], "unknown packaged config"),
        (["build-engines", str(tmp_path)], None),
        (["eval", "--experiment", str(TINY), "--data", str(tmp_path / "nodata")], "not found"),
    ]
    for argv, needle in cases:
        t0 = time.perf_counter()
        rc = main(argv)
        err = one_line_error(capsys, rc, *([needle] if needle else []))
        assert time.perf_counter() - t0 < 60, (argv, err)
    # argparse refuses bad values of typed options by naming the flag (exit 2, usage + one line).
    for argv, flag in ((["ground", "--threads", "-1"], "--threads"), (["demo", "--minutes", "nan"], "--minutes"),
                       (["demo", "--queries", "0"], "--queries"), (["bench", "--repeats", "x"], "--repeats")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"argument {flag}" in err and "Traceback" not in err, err
    # A big-endian .npy grounds like its little-endian twin.
    np.save(tmp_path / "le.npy", np.load(big_endian).astype("<f4"))
    assert main(ground(big_endian, good_q, "--out", str(tmp_path / "be.json"))) == 0
    assert main(ground(tmp_path / "le.npy", good_q, "--out", str(tmp_path / "le.json"))) == 0
    capsys.readouterr()
    assert (json.loads((tmp_path / "be.json").read_text())["queries"]
            == json.loads((tmp_path / "le.json").read_text())["queries"])


def test_features_beyond_float16_are_named_as_such(bundle16):
    from hieramamba.runtime import GroundingRuntime

    rt = GroundingRuntime.load(bundle16[0], chunk=16)
    video = np.zeros((40, 32), np.float32)
    video[7, 3] = 7e4
    with pytest.raises(InputError, match=r"70000.*row 7.*float16"):
        rt.ground(video, [np.zeros((3, 32), np.float32)], fps=30)


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_temp_folder(tmp_path):
    out = tmp_path / "b"
    proc = subprocess.Popen([sys.executable, "-m", "hieramamba.cli", "export-bundle", "--config", "tiny",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob(".b.*")):  # the export has begun writing
        time.sleep(0.2)
    assert list(tmp_path.glob(".b.*")), "the export never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


# -- 8. leftovers of killed writers ----------------------------------------------------------

def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from hieramamba.artifacts import write_atomic

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_dir = tmp_path / f".r.json.{dead}.abcd"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("")
    stale_file = tmp_path / f".r.json.{dead}.efgh.tmp"
    stale_file.write_text("")
    live = tmp_path / f".r.json.{os.getppid()}.ijkl.tmp"  # a live writer's: kept
    live.write_text("")
    other = tmp_path / f".other.json.{dead}.mnop.tmp"   # another file's: not ours to judge now
    other.write_text("")
    write_atomic(tmp_path / "r.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "r.json"])


# -- 9. noise ------------------------------------------------------------------------------------

def test_the_exporters_torchvision_notices_are_dropped():
    import logging

    import hieramamba.export.onnx_export  # noqa: F401  (installs the filter)

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    keep = Keep()
    log.addHandler(keep)
    try:
        log.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        log.warning("something else")
    finally:
        log.removeHandler(keep)
    assert keep.messages == ["something else"]


def test_npy_rows_reads_windows_like_np_load_and_refuses_bad_files(tmp_path):
    """``NpyRows`` (the CLI's on-demand video rows): slices equal ``np.load``'s (big-endian
    converted, format 1.0 and 2.0 headers); kinds it does not read in place come back None (the
    caller loads them whole); pickles, integers and truncated files are refused in one line."""
    from hieramamba.features import NpyRows, open_npy_rows
    from numpy.lib import format as npy

    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 5)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "be.npy", a.astype(">f4"))
    with open(tmp_path / "v2.npy", "wb") as f:
        npy.write_array(f, a.astype(np.float16), version=(2, 0))
    for name, want in (("a.npy", a), ("be.npy", a), ("v2.npy", a.astype(np.float16))):
        rows = open_npy_rows(tmp_path / name)
        assert isinstance(rows, NpyRows) and rows.shape == (37, 5) and len(rows) == 37
        for sl in (slice(0, 37), slice(3, 11), slice(30, 99), slice(36, 37), slice(10, 10)):
            got = rows[sl]
            assert got.dtype.isnative
            np.testing.assert_array_equal(got, want[sl])
        np.testing.assert_array_equal(np.asarray(rows), want)
        with pytest.raises(TypeError):
            rows[::2]
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.save(tmp_path / "3d.npy", a.reshape(37, 5, 1))
    assert open_npy_rows(tmp_path / "f.npy") is None and open_npy_rows(tmp_path / "3d.npy") is None
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "int.npy", np.arange(10).reshape(5, 2))
    full = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(full[:-7])
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    for name, needle in (("obj.npy", "Python objects"), ("int.npy", "floating-point"), ("cut.npy", "truncated"),
                         ("junk.npy", "not a readable .npy")):
        with pytest.raises(InputError, match=needle):
            open_npy_rows(tmp_path / name)
    # What `ground --bundle` loads: rows on demand for a 2-D .npy, the whole array otherwise.
    from hieramamba.cli.common import load_features

    assert isinstance(load_features(str(tmp_path / "a.npy"), rows_on_demand=True), NpyRows)
    assert isinstance(load_features(str(tmp_path / "f.npy"), rows_on_demand=True), np.ndarray)
    assert isinstance(load_features(str(tmp_path / "a.npy")), np.ndarray)
