"""The torch-free ONNX Runtime path: exported stage bundle → chunked runtime, against the
whole-sequence eager model; bundle checks; the ``ground --bundle`` CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hieramamba.errors import CheckpointError, ExportError
from hieramamba.inference import Grounder
from hieramamba.runtime import GroundingRuntime

from conftest import small_model

REPO = Path(__file__).resolve().parents[1]


def test_bundle_reuses_graphs_of_equal_levels_and_keeps_the_model(bundle, export_log):
    path, model, _ = bundle
    assert next(model.parameters()).dtype == torch.float32
    lines = {line.split(":")[0]: line for line in export_log}
    for kind in ("pre", "scan", "post", "local"):
        assert "traced" in lines[f"{kind}0"], lines[f"{kind}0"]
        for level in range(1, 5):
            assert f"graph of {kind}0" in lines[f"{kind}{level}"], lines[f"{kind}{level}"]
    # Level 5 (global attention) has other modules: its own graphs.
    for stage in ("pre5", "gattn_in5", "gattn_rows5", "gattn_out5"):
        assert "traced" in lines[stage], lines[stage]
    man = json.loads((path / "manifest.json").read_text())
    assert man["dtype"] == "float32" and set(man["stages"]) >= {"text", "front", "scan1", "heads", "gattn_rows5"}
    # One heads graph for all levels, the level's scale an input taken from the plan.
    assert not any(s.startswith("heads") and s != "heads" for s in man["stages"])
    assert man["plan"]["head_scales"] == [float(s.scale.detach()) for s in model.reg_head.scales]


def test_reused_graph_with_wrong_weights_is_caught():
    """The per-stage check is what makes graph reuse safe: level 1's pre stage run with level
    0's graph *and weights* must be rejected."""
    from hieramamba.export.stages import _stage_specs, _trace_stage, _verify_stage
    from hieramamba.stage_modules import PreStage, plan_from_model

    model, opt = small_model()
    spec = {s[0]: s for s in _stage_specs(model, plan_from_model(model, opt), torch.float32)}
    name, module, args, dyn, ins, outs = spec["pre0"]
    proto = _trace_stage(module, args, dyn, ins, outs, 18, name)
    assert _verify_stage(proto, module, args, ins, "float32", "pre0") < 1e-4
    with pytest.raises(ExportError, match="pre1: ONNX Runtime differs"):
        _verify_stage(proto, PreStage(model.vid_net.branch[1]), args, ins, "float32", "pre1")


@pytest.mark.slow
@pytest.mark.parametrize("scan_kernel", ["native", "graph"])
def test_ort_bundle_equals_eager_grounder(bundle, scan_kernel):
    """Both ways ONNX Runtime runs the HydraScan nodes (C++ kernel, ONNX function body)."""
    from hieramamba.native_library import load_native_library

    if scan_kernel == "native" and load_native_library(required=False) is None:
        pytest.skip("libhieramamba_plugins is not built (tests/test_native_scan.py builds it)")
    path, model, opt = bundle
    rng = np.random.default_rng(0)
    video = rng.standard_normal((150, model.vid_in_dim)).astype(np.float32)  # > max_seq_len: resampled PE
    queries = [rng.standard_normal((n, model.text_in_dim)).astype(np.float32) for n in (3, 16, 6)]
    want = Grounder(model, opt).level_outputs(video, queries)
    # attn_rows=4: level 5's global attention (3 pairs = 9 slots here) in uneven row blocks.
    rt = GroundingRuntime.load(path, chunk=24, max_batch=2, attn_rows=4, scan_kernel=scan_kernel)
    assert rt.backend.scan_kernel == scan_kernel
    got = rt.level_outputs(video, queries)
    for (gl, go, gm), (wl, wo, wm) in zip(got, want):
        for level in range(len(wl)):
            for a, b in ((gl[level], wl[level]), (go[level], wo[level])):
                assert np.abs(a - b).max() / np.abs(b).max() <= 1e-4
            np.testing.assert_array_equal(gm[level], wm[level])
    segs = rt.ground(video, queries, fps=30.0)
    ref = Grounder(model, opt).ground(video, queries, fps=30.0)
    for s, r in zip(segs, ref):
        np.testing.assert_allclose([[x.start_sec, x.end_sec, x.score] for x in s],
                                   [[x.start_sec, x.end_sec, x.score] for x in r], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fp16_bundle_matches_fp32_eager(bundle16):
    """DESIGN §4 fp16: head outputs within 1e-2 (relative to each output's largest value) of the
    fp32 eager model, and the same top-1 segment."""
    from hieramamba.metrics import segment_iou

    path, model, opt = bundle16
    assert json.loads((path / "manifest.json").read_text())["dtype"] == "float16"
    rng = np.random.default_rng(3)
    video = rng.standard_normal((170, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((n, model.text_in_dim)).astype(np.float32) for n in (4, 11)]
    rt = GroundingRuntime.load(path, chunk=24, attn_rows=5)
    eager = Grounder(model, opt)
    for (gl, go, gm), (wl, wo, wm) in zip(rt.level_outputs(video, queries), eager.level_outputs(video, queries)):
        for level in range(len(wl)):
            for a, b in ((gl[level], wl[level]), (go[level], wo[level])):
                assert np.abs(a - b).max() / np.abs(b).max() <= 1e-2
            np.testing.assert_array_equal(gm[level], wm[level])
    for got, want in zip(rt.ground(video, queries, fps=30.0), eager.ground(video, queries, fps=30.0)):
        top_got, top_want = [got[0].start_sec, got[0].end_sec], [want[0].start_sec, want[0].end_sec]
        assert segment_iou(np.array(top_got), np.array(top_want)) >= 0.99, (top_got, top_want)


@pytest.mark.slow
def test_fp16_scan_nodes_take_dt_inputs_in_one_dtype(bundle16):
    """The kernels' type table (plugins/hydra_scan/README.md): dt_f, dt_b, A and dt_bias share one
    dtype, fp32 or x's. The half model's A is fp32 and its dt half; before bundle format 4 the fp16
    scan stages mixed them, which the TensorRT plugin's format table refuses."""
    import onnx

    path, _, _ = bundle16
    stages = json.loads((path / "manifest.json").read_text())["stages"]
    seen = 0
    for st in stages.values():
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path / st["file"])))
        g = model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
        types.update({i.name: i.data_type for i in g.initializer})
        for node in g.node:
            if node.op_type != "HydraScan":
                continue
            seen += 1
            x_type, dt_types = types[node.input[0]], {types[n] for n in node.input[1:5]}
            assert x_type == onnx.TensorProto.FLOAT16, st["file"]
            assert len(dt_types) == 1 and dt_types <= {onnx.TensorProto.FLOAT, x_type}, (st["file"], dt_types)
    assert seen > 0


@pytest.mark.slow
def test_cli_ground_with_bundle_writes_json(bundle, tmp_path):
    path, model, _ = bundle
    rng = np.random.default_rng(1)
    np.save(tmp_path / "v.npy", rng.standard_normal((90, model.vid_in_dim)).astype(np.float32))
    np.save(tmp_path / "q.npy", rng.standard_normal((5, model.text_in_dim)).astype(np.float32))
    out = tmp_path / "r.json"
    res = subprocess.run([sys.executable, "-m", "hieramamba.cli", "ground", "--bundle", str(path),
                          "--video", str(tmp_path / "v.npy"), "--query", str(tmp_path / "q.npy"),
                          "--fps", "30", "--chunk", "16", "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    payload = json.loads(out.read_text())
    assert len(payload["queries"]) == 1 and len(payload["queries"][0]["segments"]) > 0
    assert not list(tmp_path.glob(".*tmp"))
    # The CLI reads the video's rows window by window (NpyRows), here with every level spilled:
    # the same segments as the runtime called on the whole array.
    spill = tmp_path / "spill"
    spill.mkdir()
    res = subprocess.run([sys.executable, "-m", "hieramamba.cli", "ground", "--bundle", str(path),
                          "--video", str(tmp_path / "v.npy"), "--query", str(tmp_path / "q.npy"), "--fps", "30",
                          "--chunk", "16", "--spill-mb", "0", "--spill-dir", str(spill), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    direct = GroundingRuntime.load(path, chunk=16).ground(np.load(tmp_path / "v.npy"), [np.load(tmp_path / "q.npy")],
                                                         fps=30.0)
    np.testing.assert_array_equal(json.loads(out.read_text())["queries"][0]["segments"],
                                  [[s.start_sec, s.end_sec, s.score] for s in direct[0]])
    nan_video = np.zeros((20, model.vid_in_dim), np.float32)
    nan_video[7, 3] = np.inf
    np.save(tmp_path / "nan.npy", nan_video)
    bad = subprocess.run([sys.executable, "-m", "hieramamba.cli", "ground", "--bundle", str(path),
                          "--video", str(tmp_path / "nan.npy"), "--query", str(tmp_path / "q.npy"),
                          "--fps", "30", "--out", str(tmp_path / "bad.json")],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "NaN/Inf (first at row 7)" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_bundle_version_mismatch_and_missing_files(tmp_path, bundle):
    from hieramamba.artifacts import BUNDLE_SCHEMA, BUNDLE_VERSION, BundleManifest

    with pytest.raises(CheckpointError, match="no manifest.json"):
        GroundingRuntime.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "hieramamba-runtime-bundle/4"}))
    with pytest.raises(CheckpointError, match="older hieramamba.*re-export the bundle with `hieramamba export-bundle`"):
        BundleManifest.read(tmp_path)
    from hieramamba.artifacts import content_hash

    good = json.loads((bundle[0] / "manifest.json").read_text())

    def written_as(doc):  # what another hieramamba would have written (its own content hash)
        body = {k: v for k, v in doc.items() if k not in ("schema", "version", "content_sha256")}
        return {**doc, "content_sha256": content_hash(body)}

    for edit, needle in ((dict(version=BUNDLE_VERSION + 1), "version"), (dict(scan_op_version="2"), "scan_op_version"),
                         (dict(stages={}), "stages do not match"), (dict(opset=17), "edited after export")):
        doc = {**good, **edit}
        (tmp_path / "manifest.json").write_text(json.dumps(doc if "opset" in edit else written_as(doc)))
        with pytest.raises(CheckpointError, match=needle):
            BundleManifest.read(tmp_path)
    assert good["schema"] == BUNDLE_SCHEMA
    # A stage file that is not there is named when the stage is opened.
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    with pytest.raises(CheckpointError, match="stage file of 'text' is missing"):
        GroundingRuntime.load(tmp_path).ground(np.zeros((5, good["plan"]["vid_in_dim"]), np.float32),
                                               [np.zeros((2, good["plan"]["text_in_dim"]), np.float32)], fps=30)


def test_failed_export_leaves_nothing_on_disk(tmp_path):
    from hieramamba.export.stages import export_bundle

    model, opt = small_model()
    with pytest.raises(ExportError, match="dtype"):
        export_bundle(model, opt, tmp_path / "b", dtype="int8")
    (tmp_path / "exists").mkdir()
    with pytest.raises(ExportError, match="already exists"):
        export_bundle(model, opt, tmp_path / "exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


@pytest.mark.slow
def test_bundle_runs_with_torch_blocked(bundle, tmp_path):
    from test_runtime_import import run_blocked

    path, model, opt = bundle
    rng = np.random.default_rng(2)
    video = rng.standard_normal((70, model.vid_in_dim)).astype(np.float32)
    query = rng.standard_normal((4, model.text_in_dim)).astype(np.float32)
    np.save(tmp_path / "v.npy", video)
    np.save(tmp_path / "q.npy", query)
    res = run_blocked(f"""
        import numpy as np
        from hieramamba.runtime import GroundingRuntime
        rt = GroundingRuntime.load({str(path)!r}, chunk=8)
        segs = rt.ground(np.load({str(tmp_path / 'v.npy')!r}), [np.load({str(tmp_path / 'q.npy')!r})], fps=30.0)
        assert "torch" not in sys.modules
        print("top1", segs[0][0].start_sec, segs[0][0].end_sec, segs[0][0].score)
    """)
    assert res.returncode == 0, res.stderr
    top = [float(v) for v in res.stdout.split("top1")[1].split()]
    ref = Grounder(model, opt).ground(video, [query], fps=30.0)[0][0]
    np.testing.assert_allclose(top, [ref.start_sec, ref.end_sec, ref.score], rtol=1e-4, atol=1e-4)


def test_scan_kernel_auto_keeps_the_function_body_on_gpu_providers(bundle):
    """The C++ kernel is an ONNX Runtime CPU-provider kernel: with a GPU provider first, "auto"
    must not pull every scan back to the host (sessions are created lazily, so no GPU needed)."""
    from hieramamba.runtime.backends.onnxruntime import OrtBackend

    path, _, _ = bundle
    gpu = OrtBackend(path, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert gpu.scan_kernel == "graph"
    assert OrtBackend(path, scan_kernel="graph").scan_kernel == "graph"


def test_cpu_arena_choices_give_the_same_numbers(bundle):
    from hieramamba.runtime.backends.onnxruntime import OrtBackend

    path, model, _ = bundle
    rng = np.random.default_rng(5)
    video = rng.standard_normal((90, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((5, model.text_in_dim)).astype(np.float32)]
    outs = []
    for arena in ("shared", "off", "session"):
        rt = GroundingRuntime.load(path, cpu_arena=arena, chunk=24)
        assert rt.backend.cpu_arena == arena
        outs.append(rt.level_outputs(video, queries))
    for other in outs[1:]:
        for got, want in zip(other, outs[0]):
            for part_g, part_w in zip(got, want):
                for a, b in zip(part_g, part_w):
                    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="cpu_arena"):
        OrtBackend(path, cpu_arena="big")


@pytest.mark.slow
def test_spilled_levels_give_the_same_numbers_and_leave_no_file(bundle, tmp_path, monkeypatch):
    """spill_mb=0: every windowed level's anchors go through a temporary file (position-major,
    written per chunk, read per window, uneven chunks at the ends) and the outputs are bitwise
    those of the in-memory levels; every spill file is closed afterwards; bad settings and a
    failing spill file end in one InputError naming the problem."""
    from hieramamba.errors import InputError
    from hieramamba.runtime import scheduler

    path, model, _ = bundle
    rng = np.random.default_rng(6)
    video = rng.standard_normal((131, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((n, model.text_in_dim)).astype(np.float32) for n in (4, 9)]
    spilled = []
    real = scheduler._SpilledLevel

    def counting(*args):
        spilled.append(real(*args))
        return spilled[-1]

    monkeypatch.setattr(scheduler, "_SpilledLevel", counting)
    want = GroundingRuntime.load(path, chunk=10, spill_mb=None).level_outputs(video, queries)
    assert not spilled
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    rt = GroundingRuntime.load(path, chunk=10, spill_mb=0, spill_dir=spill_dir)
    got = rt.level_outputs(video, queries)
    groups = 1 if rt.plan.batchify else len(queries)
    assert len(spilled) == groups * sum(rt.plan.windowed) > 0 and all(s.file.closed for s in spilled)
    for g, w in zip(got, want):
        for part_g, part_w in zip(g, w):
            for a, b in zip(part_g, part_w):
                np.testing.assert_array_equal(a, b)
    for bad, needle in ((dict(spill_mb=-1), "spill_mb"), (dict(spill_mb="big"), "spill_mb"),
                        (dict(spill_dir=tmp_path / "absent"), "spill_dir")):
        with pytest.raises(InputError, match=needle):
            GroundingRuntime.load(path, **bad)

    def full_disk(fd, view, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(scheduler.os, "pwrite", full_disk)
    rt = GroundingRuntime.load(path, chunk=10, spill_mb=0, spill_dir=spill_dir)
    with pytest.raises(InputError, match=r"spill file write .*\(No space left on device\)"):
        rt.level_outputs(video, queries)
    assert all(s.file.closed for s in spilled)
