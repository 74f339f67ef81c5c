"""TensorRT per-stage engines: profiles, building, the backend's bindings and its checks.

TensorRT cannot be installed here, so these tests run our TensorRT code against a stand-in
``tensorrt`` module (tests/fake_tensorrt.py): the TensorRT 10 API calls we make, the checks
TensorRT makes (plugin registered, strongly typed network, a profile for every dynamic input,
shapes inside the profile, every address bound) and the stage graphs run in ONNX Runtime from
the raw buffer addresses we bind. The chunked runtime on it must give exactly the ONNX Runtime
backend's numbers for videos up to the engines' limits: a profile too small for a window the
scheduler makes, or a wrong shape, dtype or address, fails here.
"""

import contextlib
import importlib.util
import json
import shutil
import sys

import numpy as np
import pytest

from hieramamba.errors import BackendUnavailableError, CheckpointError, InputError
from hieramamba.runtime import GroundingRuntime
from hieramamba.artifacts import EngineLimits
from hieramamba.runtime.backends.tensorrt import TrtBackend
from hieramamba.stage_table import ATTN_SCORES_PER_BLOCK, largest_attn_block, stage_instances, symbol_ranges

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
LIMITS = EngineLimits(chunk=16, max_batch=3, max_text_len=16, max_clips=600)


@pytest.fixture
def fake_trt(monkeypatch):
    import fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    monkeypatch.delenv("HIERAMAMBA_PLUGIN_LIB", raising=False)
    fake_tensorrt._registry.creators.clear()
    return fake_tensorrt


@pytest.fixture
def plugin(tmp_path):
    lib = tmp_path / "libhieramamba_trt_plugin.so"
    lib.write_text("HydraScan 1 hieramamba\n")  # the stand-in's plugin library: creators it provides
    return lib


@pytest.fixture
def engines(bundle, fake_trt, plugin, tmp_path, monkeypatch):
    from hieramamba.export import trt_build

    monkeypatch.setattr(trt_build, "gpu_info", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    out = trt_build.build_bundle_engines(bundle[0], LIMITS, tmp_path / "engines", plugin_library=plugin,
                                         progress=False)
    return bundle[0], out, plugin


class HostTrtBackend(TrtBackend):
    """The backend on host memory: the stand-in runs on the CPU."""
    capability = "9.0"

    def __init__(self, bundle_dir, engines_dir=None, plugin_library=None):
        super().__init__(bundle_dir, engines_dir, plugin_library, device="cpu")

    def _check_device(self):
        pass

    def _device_capability(self):
        return self.capability

    def _device_scope(self):
        return contextlib.nullcontext()

    def _execute(self, ctx, inputs):
        return ctx.execute_async_v3(0)  # the stand-in runs synchronously on host memory


def test_attention_blocks():
    for slots_max in (1, 7, 1023, 1024, 1500, 5000):
        brute = max(min(s, max(1, ATTN_SCORES_PER_BLOCK // s)) for s in range(1, slots_max + 1))
        assert largest_attn_block(slots_max, None) == brute
    assert largest_attn_block(50, 8) == 8 and largest_attn_block(5, 8) == 5


def test_dim_ranges_follow_chunk_and_level_lengths():
    from conftest import small_model
    from hieramamba.stage_modules import plan_from_model

    plan = plan_from_model(*small_model())  # pad multiple 32, 6 levels, the last global attention
    assert plan.pad_multiple == 32 and plan.windowed == (True,) * 5 + (False,)
    instances = {inst.name: inst for inst in stage_instances(plan)}

    def dim_ranges(name, plan, lim):
        return symbol_ranges(plan, lim, instances[name])

    lim = EngineLimits(chunk=16, max_batch=4, max_text_len=16, max_clips=600)  # 608 padded
    r0 = dim_ranges("pre0", plan, lim)
    assert r0["batch"] == (1, 4, 4) and r0["tok"] == (1, 20, 20) and r0["slen"] == (3, 24, 24)
    assert dim_ranges("pre5", plan, lim)["tok"] == (1, 19, 19)      # level 5 has 19 tokens
    # The one heads graph: the largest window of any level (windowed: chunk + 22, capped by
    # the level's length: level 4 has 38 tokens; the global level 5 sends its whole 19).
    assert dim_ranges("heads", plan, lim)["htime"] == (1, 38, 38)
    big = EngineLimits(chunk=16, max_batch=4, max_text_len=16, max_clips=6000)  # level 5: 188 tokens
    assert dim_ranges("heads", plan, big)["htime"] == (1, 188, 188)
    assert dim_ranges("gattn_rows5", plan, lim)["rows"] == (1, 30, 30)
    assert r0["bb"] == (1, 4, 4) and r0["text1"] == (1 + plan.text_extra_tokens, 16 + plan.text_extra_tokens,
                                                      16 + plan.text_extra_tokens)
    with pytest.raises(InputError, match="even"):
        EngineLimits(chunk=15, max_batch=1, max_text_len=1, max_clips=1)


def test_engines_give_the_onnxruntime_numbers(engines):
    from hieramamba.runtime.backends.onnxruntime import OrtBackend

    bundle_dir, eng_dir, _ = engines
    man = json.loads((eng_dir / "engines.json").read_text())
    assert man["limits"]["chunk"] == 16 and man["tensorrt_version"] == "10.99.0"
    assert man["gpu"]["compute_capability"] == "9.0" and set(man["stages"]) >= {"scan0", "gattn_rows5"}
    # The stand-in runs each stage graph as written (HydraScan by its function body): compare
    # bit for bit with ONNX Runtime doing the same.
    trt_be, ort_be = HostTrtBackend(bundle_dir, eng_dir), OrtBackend(bundle_dir, scan_kernel="graph")
    rng = np.random.default_rng(0)
    plan = ort_be.plan
    # At the limits (600 clips, chunk 16, 3 queries), a tiny video, and smaller chunk/batches.
    for clips, chunk, nq, max_batch in ((600, 16, 3, 3), (1, 16, 1, 3), (137, 6, 3, 2)):
        video = rng.standard_normal((clips, plan.vid_in_dim)).astype(np.float32)
        queries = [rng.standard_normal((int(rng.integers(2, 16)), plan.text_in_dim)).astype(np.float32)
                   for _ in range(nq)]
        got = GroundingRuntime(trt_be, chunk=chunk, max_batch=max_batch).level_outputs(video, queries)
        want = GroundingRuntime(ort_be, chunk=chunk, max_batch=max_batch).level_outputs(video, queries)
        for g, w in zip(got, want):
            for part_g, part_w in zip(g, w):
                for a, b in zip(part_g, part_w):
                    np.testing.assert_array_equal(a, b)


def test_engines_refuse_what_they_were_not_built_for(engines):
    bundle_dir, eng_dir, _ = engines
    be = HostTrtBackend(bundle_dir, eng_dir)
    plan = be.plan
    with pytest.raises(InputError, match="chunk 32 exceeds the engines' chunk 16"):
        GroundingRuntime(be, chunk=32, max_batch=3)
    with pytest.raises(InputError, match="max_batch 4"):
        GroundingRuntime(be, chunk=16, max_batch=4)
    rt = GroundingRuntime(be, chunk=16, max_batch=3)
    video = np.zeros((601, plan.vid_in_dim), np.float32)
    with pytest.raises(InputError, match="601 clips, the engines take at most 600"):
        rt.level_outputs(video, [np.zeros((3, plan.text_in_dim), np.float32)])
    # A window past the profile (here called directly) is named, not run.
    ar = be.arrays
    text, tmask = be.call("text", None, {"text": ar.from_numpy(np.zeros((1, plan.text_in_dim, 16), np.float32)),
                                         "text_mask": ar.from_numpy(np.ones((1, 1, 16), bool))})
    heads = {"tokens": ar.from_numpy(np.zeros((1, 32, 100), np.float32)),
             "mask": ar.from_numpy(np.ones((1, 1, 100), bool)), "text_enc": text, "text_enc_mask": tmask,
             "level_scale": ar.scale(1.0)}
    with pytest.raises(InputError, match="stage heads: input tokens has shape .*outside the engines' profile"):
        be.call("heads", 0, heads)


def test_engine_and_bundle_mismatches_are_refused(engines, tmp_path):
    bundle_dir, eng_dir, _ = engines
    man_path = eng_dir / "engines.json"
    man = json.loads(man_path.read_text())

    HostTrtBackend.capability = "8.0"
    try:
        with pytest.raises(CheckpointError, match="compute capability 9.0 .*this GPU is 8.0"):
            HostTrtBackend(bundle_dir, eng_dir)
    finally:
        HostTrtBackend.capability = "9.0"

    man_path.write_text(json.dumps(dict(man, tensorrt_version="10.3.0")))
    with pytest.raises(CheckpointError, match="built with TensorRT 10.3.0, this is TensorRT 10.99.0"):
        HostTrtBackend(bundle_dir, eng_dir)
    man_path.write_text(json.dumps(man))

    other = tmp_path / "other_bundle"
    shutil.copytree(bundle_dir, other, ignore=shutil.ignore_patterns("trt"))
    (other / "manifest.json").write_text((other / "manifest.json").read_text() + "\n")
    with pytest.raises(CheckpointError, match="another bundle"):
        HostTrtBackend(other, eng_dir)
    with pytest.raises(CheckpointError, match="hieramamba build-engines"):
        HostTrtBackend(other)  # no <bundle>/trt

    be = HostTrtBackend(bundle_dir, eng_dir)
    (eng_dir / "text.engine").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="text.engine: engine of stage 'text' does not match its manifest"):
        be.call("text", None, {"text": be.arrays.from_numpy(np.zeros((1, be.plan.text_in_dim, 16), np.float32)),
                               "text_mask": be.arrays.from_numpy(np.ones((1, 1, 16), bool))})


def test_a_tensorrt_that_inlines_the_scan_function_is_reported(bundle, fake_trt, plugin, tmp_path, monkeypatch):
    """TensorRT <= 10.6 builds a node with a model-local function from the function body: the
    engines are right but the plugin is unused, which the build says per stage."""
    from hieramamba.export import trt_build

    monkeypatch.setattr(trt_build, "gpu_info", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    for inline in (False, True):
        monkeypatch.setattr(fake_trt, "INLINE_FUNCTIONS", inline)
        lines = []
        trt_build.build_bundle_engines(bundle[0], LIMITS, tmp_path / f"e{inline}", plugin_library=plugin,
                                       progress=False, log=lines.append)
        warned = [x for x in lines if x.startswith("warning:")]
        stages = json.loads((bundle[0] / "manifest.json").read_text())["stages"]
        scan_stages = [n for n, st in stages.items() if st["hydra_scan_nodes"]]
        assert scan_stages
        assert len(warned) == (len(scan_stages) if inline else 0), warned
        assert all("ONNX function body" in x for x in warned)


def test_plugin_library_is_required_and_checked(bundle, fake_trt, tmp_path):
    from hieramamba.export.trt_build import build_bundle_engines

    with pytest.raises(BackendUnavailableError, match="libhieramamba_trt_plugin.so not found"):
        build_bundle_engines(bundle[0], LIMITS, tmp_path / "e", plugin_library=tmp_path / "nope.so",
                             progress=False)
    wrong = tmp_path / "libold.so"
    wrong.write_text("HydraScan 2 hieramamba\n")
    with pytest.raises(BackendUnavailableError, match="does not provide plugin HydraScan version 1"):
        build_bundle_engines(bundle[0], LIMITS, tmp_path / "e", plugin_library=wrong, progress=False)
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))


def test_cli_builds_engines_and_ground_needs_a_gpu(engines, tmp_path, capsys):
    from hieramamba.cli import main

    bundle_dir, _, plugin = engines
    out = tmp_path / "cli_engines"
    assert main(["build-engines", str(bundle_dir), "--out", str(out), "--chunk", "16", "--max-batch", "3",
                 "--max-clips", "600", "--plugin", str(plugin), "--no-progress"]) == 0
    assert "chunk=16, max_batch=3, max_text_len=16, max_clips=600" in capsys.readouterr().out
    assert json.loads((out / "engines.json").read_text())["limits"]["max_clips"] == 600
    import torch

    if torch.cuda.is_available():  # the stand-in reads buffers as host memory
        return
    np.save(tmp_path / "v.npy", np.zeros((50, 32), np.float32))
    np.save(tmp_path / "q.npy", np.zeros((4, 32), np.float32))
    rc = main(["ground", "--bundle", str(bundle_dir), "--backend", "tensorrt", "--engines", str(out),
               "--plugin", str(plugin), "--video", str(tmp_path / "v.npy"), "--query", str(tmp_path / "q.npy"),
               "--fps", "30"])
    assert rc == 2 and "runs on a CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_backend_says_so(tmp_path, capsys):
    from hieramamba.cli import main

    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        GroundingRuntime.load(tmp_path, backend="tensorrt")
    assert main(["build-engines", str(tmp_path)]) == 2
    assert "not a runtime bundle" in capsys.readouterr().err


def test_concurrent_calls_get_their_own_contexts(engines):
    from concurrent.futures import ThreadPoolExecutor

    bundle_dir, eng_dir, _ = engines
    be = HostTrtBackend(bundle_dir, eng_dir)
    rt = GroundingRuntime(be, chunk=16, max_batch=2)
    rng = np.random.default_rng(3)
    jobs = [(rng.standard_normal((n, be.plan.vid_in_dim)).astype(np.float32),
             [rng.standard_normal((5, be.plan.text_in_dim)).astype(np.float32)]) for n in (90, 200)]
    alone = [rt.level_outputs(v, q) for v, q in jobs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda job: rt.level_outputs(*job), jobs))
    for a, b in zip(alone, together):
        for la, lb in zip(a[0][0], b[0][0]):  # first query's logits, every level
            np.testing.assert_array_equal(la, lb)


# -- what a first real TensorRT run would hit (issue 17): each test fails on the code before it --

class DeviceTrtBackend(HostTrtBackend):
    """``HostTrtBackend`` on "device" ``index`` of the stand-in: engines and contexts are made
    with that device current, and every buffer meant for the device comes from memory registered
    as that device's (kept allocated for the backend's lifetime)."""

    def __init__(self, bundle_dir, engines_dir, index=1):
        self.index, self._keep = index, []
        super().__init__(bundle_dir, engines_dir)

    def _device_scope(self):
        import fake_tensorrt

        return fake_tensorrt.cuda_device(self.index)

    def _device_empty(self, shape, dtype):
        import fake_tensorrt

        t = super()._device_empty(shape, dtype)
        fake_tensorrt.register_device_memory(t.data_ptr(), max(1, t.numel() * t.element_size()), self.index)
        self._keep.append(t)
        return t

    def _in_device_memory(self, t):
        import fake_tensorrt

        return fake_tensorrt._memory_device(t.data_ptr()) == self.index


def _same_numbers_as_onnxruntime(backend, bundle_dir, clips=137, chunk=6):
    from hieramamba.runtime.backends.onnxruntime import OrtBackend

    ort_be = OrtBackend(bundle_dir, scan_kernel="graph")
    rng = np.random.default_rng(7)
    video = rng.standard_normal((clips, ort_be.plan.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((5, ort_be.plan.text_in_dim)).astype(np.float32) for _ in range(2)]
    got = GroundingRuntime(backend, chunk=chunk, max_batch=2).level_outputs(video, queries)
    want = GroundingRuntime(ort_be, chunk=chunk, max_batch=2).level_outputs(video, queries)
    for g, w in zip(got, want):
        for part_g, part_w in zip(g, w):
            for a, b in zip(part_g, part_w):
                np.testing.assert_array_equal(a, b)


def test_engines_on_a_second_gpu_make_their_contexts_there(engines, fake_trt):
    """device="cuda:1" with device 0 current: an execution context made outside the device scope
    lives on device 0 and its engine's first run fails (issue 17, item 2)."""
    bundle_dir, eng_dir, _ = engines
    fake_trt.reset_devices()
    try:
        _same_numbers_as_onnxruntime(DeviceTrtBackend(bundle_dir, eng_dir, index=1), bundle_dir)
    finally:
        fake_trt.reset_devices()


def test_host_and_device_buffers_follow_get_tensor_location(bundle, fake_trt, plugin, tmp_path, monkeypatch):
    """A shape-tensor input and an execution input the network put on the host must be bound in
    host memory, everything else in device memory: the place is what ``get_tensor_location``
    says, not ``is_shape_inference_io`` (issue 17, item 3)."""
    from hieramamba.export import trt_build

    monkeypatch.setattr(trt_build, "gpu_info", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    monkeypatch.setattr(fake_trt, "SHAPE_INPUTS", {"pe_total"})
    monkeypatch.setattr(fake_trt, "HOST_INPUTS", {"n_valid"})
    out = trt_build.build_bundle_engines(bundle[0], LIMITS, tmp_path / "engines", plugin_library=plugin,
                                         progress=False)
    fake_trt.reset_devices()
    try:
        be = DeviceTrtBackend(bundle[0], out, index=0)
        assert be._engine("pre0").engine.get_tensor_location("n_valid") == fake_trt.TensorLocation.HOST
        assert not be._engine("pre0").engine.is_shape_inference_io("n_valid")
        _same_numbers_as_onnxruntime(be, bundle[0])
    finally:
        fake_trt.reset_devices()


def test_an_invalid_optimization_profile_is_named(bundle, fake_trt, plugin, tmp_path, monkeypatch):
    """``add_optimization_profile`` returns -1 for an invalid profile: say so, with the stage and
    the shapes, instead of a generic build failure later (issue 17, item 4)."""
    from hieramamba.export import trt_build

    real = trt_build.bundle_profiles

    def broken(bundle_dir, limits):
        profiles = real(bundle_dir, limits)
        lo, opt, hi = profiles["text"]["shapes"]["text"]
        profiles["text"]["shapes"]["text"] = (lo, opt, lo)  # opt > max
        return profiles

    monkeypatch.setattr(trt_build, "bundle_profiles", broken)
    with pytest.raises(trt_build.ExportError, match="text.onnx: TensorRT rejected the optimization profile.*text"):
        trt_build.build_bundle_engines(bundle[0], LIMITS, tmp_path / "e", plugin_library=plugin, progress=False)
    assert not (tmp_path / "e").exists()


def test_a_timing_cache_from_another_gpu_is_replaced_and_said(bundle, fake_trt, plugin, tmp_path, monkeypatch):
    """``set_timing_cache`` returns False for another GPU's cache: start a fresh one and say so,
    never write the rejected one back as if it were used (issue 17, item 4)."""
    from hieramamba.export import trt_build

    monkeypatch.setattr(trt_build, "gpu_info", lambda: {"name": "NVIDIA H200", "compute_capability": "9.0"})
    out = tmp_path / "engines"
    out.mkdir()
    (out / "timing.cache").write_bytes(b"fake timing cache for another-gpu")
    lines = []
    trt_build.build_bundle_engines(bundle[0], LIMITS, out, plugin_library=plugin, progress=False, log=lines.append)
    assert any("timing cache" in x and "fresh" in x for x in lines), lines
    assert (out / "timing.cache").read_bytes() == b"fake timing cache for " + fake_trt.GPU.encode()
    # This GPU's cache is taken without a word.
    lines.clear()
    trt_build.build_bundle_engines(bundle[0], LIMITS, out, plugin_library=plugin, progress=False, log=lines.append)
    assert not any("timing cache" in x for x in lines), lines


def test_the_parser_maps_hydrascan_by_its_plugin_attributes(bundle, fake_trt, plugin, tmp_path):
    """TensorRT's ONNX parser finds the plugin by the node's op type and its ``plugin_version`` /
    ``plugin_namespace`` attributes, and falls back to the model-local function when no creator
    matches (TensorRT >= 10.7); the stand-in must do the same (issue 17, item 5)."""
    import onnx

    def layers(path):
        network = fake_trt.Builder(None).create_network(1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = fake_trt.OnnxParser(network, None)
        assert parser.parse_from_file(str(path)), [parser.get_error(i) for i in range(parser.num_errors)]
        return [network.get_layer(i).type for i in range(network.num_layers)]

    scan = bundle[0] / "scan0.onnx"
    assert fake_trt.LayerType.PLUGIN_V3 not in layers(scan)  # no plugin loaded: the function body
    fake_trt.get_plugin_registry().load_library(str(plugin))
    assert layers(scan).count(fake_trt.LayerType.PLUGIN_V3) == 1
    # The node's domain is not what maps it: the attributes are.
    proto = onnx.load(str(scan))
    node = next(n for n in proto.graph.node if n.op_type == "HydraScan")
    node.domain = "another.domain"
    proto.opset_import.append(onnx.helper.make_opsetid("another.domain", 1))
    moved = tmp_path / "moved.onnx"
    onnx.save(proto, str(moved))
    assert layers(moved).count(fake_trt.LayerType.PLUGIN_V3) == 1
    # No creator of that version and no local function: the parser fails, naming the plugin.
    for a in node.attribute:
        if a.name == "plugin_version":
            a.s = b"7"
    onnx.save(proto, str(moved))
    network = fake_trt.Builder(None).create_network(1 << int(fake_trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = fake_trt.OnnxParser(network, None)
    assert not parser.parse_from_file(str(moved)) and "version 7" in parser.get_error(0)
