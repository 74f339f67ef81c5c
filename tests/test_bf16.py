"""bfloat16 bundles (issue 20): float32 stage graphs whose large matrix products run with bf16
operands and fp32 accumulation (``hieramamba.export.bf16``, ``plugins/cpu_kernels``).

The kernels are checked against an independent reference, a float64 sum of the same rounded
operands, on both of their code paths (VDPBF16PS where the CPU has AVX512-BF16, the portable
loop); the bundle against the fp32 eager model; the embedded default's held-out recall against
fp32 eager."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hieramamba.errors import ExportError, InputError

from conftest import small_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

HERE = Path(__file__).resolve().parent


def _native_or_skip():
    from hieramamba.native_library import load_native_library

    if load_native_library() is None:
        pytest.skip("libhieramamba_plugins is not built (bash scripts/setup.sh builds it)")


def _cpu_has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _session(proto):
    import onnxruntime as ort

    from hieramamba.ort_options import ort_session_options

    return ort.InferenceSession(proto.SerializeToString(), ort_session_options(ort, 2, scan_kernel="native"),
                                providers=["CPUExecutionProvider"])


def _conv_graph(weight, bias, **attrs):
    from onnx import helper, numpy_helper

    k = weight.shape[2]
    attrs.setdefault("pads", [(k - 1) // 2] * 2)
    inits = [numpy_helper.from_array(weight, "W")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = helper.make_node("Conv", ["x", "W"] + (["b"] if bias is not None else []), ["y"], name="conv", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [None, weight.shape[1], None])],
                          [helper.make_tensor_value_info("y", 1, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _matmul_graph(weight, rank):
    from onnx import helper, numpy_helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", 1, [None] * rank)],
                          [helper.make_tensor_value_info("y", 1, None)], [numpy_helper.from_array(weight, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _gelu_nodes(src, out, divisor, tag):
    """torch's exact GELU as the exporter writes it: x * (0.5 * (1 + erf(x / divisor)))."""
    from onnx import helper, numpy_helper

    c = lambda name, v: helper.make_node("Constant", [], [f"{tag}{name}"],  # noqa: E731
                                         value=numpy_helper.from_array(np.array(v, np.float32)))
    return [c("d", divisor), c("one", 1.0), c("half", 0.5),
            helper.make_node("Div", [src, f"{tag}d"], [f"{tag}q"]),
            helper.make_node("Erf", [f"{tag}q"], [f"{tag}e"]),
            helper.make_node("Add", [f"{tag}e", f"{tag}one"], [f"{tag}a"]),
            helper.make_node("Mul", [f"{tag}half", f"{tag}a"], [f"{tag}h"]),
            helper.make_node("Mul", [src, f"{tag}h"], [out])]


def _feed_forward_graph(w1, b1, w2, b2, k2=1, extra_reader=False):
    """Conv(w1, b1) → exact GELU → Conv(w2, b2), as the model's FFN exports; ``extra_reader``: the
    GELU's output is also a graph output."""
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "W1"] + (["B1"] if b1 is not None else []), ["h"], pads=[0, 0])]
    nodes += _gelu_nodes("h", "g", 2 ** 0.5, "u")
    nodes.append(helper.make_node("Conv", ["g", "W2", "B2"], ["y"], pads=[(k2 - 1) // 2] * 2))
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2")) if a is not None]
    outputs = [helper.make_tensor_value_info("y", 1, None)] + ([helper.make_tensor_value_info("g", 1, None)]
                                                                if extra_reader else [])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [None, w1.shape[1], None])], outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _feed_forward_error(y, x, w1, b1, w2, b2):
    """Largest |y - reference| / bound over the outputs. Reference: float64 of the bf16-rounded
    operands, GELU exact, the hidden values rounded to bf16 as the second product's operands.
    Bound: float32 accumulation (2e-6 of the output scale) plus one bf16 step times |weight| for
    each hidden value within 1e-5 (|h| + |GELU(h)|) of a bf16 rounding midpoint: there the
    kernel's float32 sums and GELU (within 1e-7 |h| of exact) may round the other way."""
    from math import erf

    from hieramamba.export.bf16 import round_to_bf16

    h = _conv64(round_to_bf16(x), round_to_bf16(w1), b1)
    g = 0.5 * h * (1.0 + np.vectorize(erf)(h / 2 ** 0.5))
    g32 = g.astype(np.float32)
    truncated = g32.view(np.uint32) & np.uint32(0xFFFF0000)  # bf16 toward zero, then one bf16 step away
    low = truncated.view(np.float32).astype(np.float64)
    high = (truncated + np.uint32(0x10000)).view(np.float32).astype(np.float64)
    near = np.abs(g - (low + high) / 2) <= 1e-5 * (np.abs(h) + np.abs(g)) + 1e-30
    ref = _conv64(round_to_bf16(g32), round_to_bf16(w2), b2)
    slack = np.einsum("oc,bct->bot", np.abs(round_to_bf16(w2)[:, :, 0]).astype(np.float64), near * np.abs(high - low))
    scale = max(1.0, np.abs(ref).max())
    return float((np.abs(y - ref) / (2e-6 * scale + slack)).max())


def _conv64(x, w, b):
    """float64 'same' convolution (stride 1, one group)."""
    k = w.shape[2]
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), ((k - 1) // 2,) * 2))
    y = np.zeros((x.shape[0], w.shape[0], x.shape[2])) + (0.0 if b is None else b[None, :, None])
    for j in range(k):
        y += np.einsum("oc,bct->bot", w[:, :, j].astype(np.float64), xp[:, :, j:j + x.shape[2]])
    return y


# (cout, cin, k, t, batch, bias): odd channel counts, rows not a multiple of the 8-row blocks,
# lengths below, at and across the 48-step tiles, several batch rows.
CONV_CASES = [(384, 384, 3, 2304, 1, True), (130, 77, 5, 50, 3, False), (64, 64, 1, 1, 2, True),
              (200, 384, 1, 97, 2, True), (40, 260, 3, 48, 1, True)]
# (x shape, n): rank 2 and 3, odd k, n not a multiple of the 48-column tiles, one row.
MATMUL_CASES = [((1, 700, 384), 1816), ((2, 5, 77), 130), ((1, 768), 384), ((3, 33, 256), 64)]
# (C, H, C', t, batch, bias1): the model's 384 → 1536 → 384 over many spans; odd widths (an
# unpaired hidden channel, rows not a multiple of 8); one step; a few spans; no first bias.
FEED_FORWARD_CASES = [(384, 1536, 384, 1000, 1, True), (37, 75, 19, 301, 2, True), (64, 256, 64, 1, 1, True),
                      (48, 96, 40, 150, 3, False)]


def check_kernels() -> dict:
    """Every case through ONNX Runtime: the error against the float64 sum of the bf16-rounded
    operands must be float32 accumulation's, and far below the error against the unrounded ones
    (the operands really are rounded). Run in a subprocess per code path."""
    from math import erf

    from hieramamba.export.bf16 import bf16_graph, round_to_bf16
    from hieramamba.native_library import load_native_library

    load_native_library(required=True)
    rng = np.random.default_rng(0)
    worst = 0.0
    for cout, cin, k, t, batch, with_bias in CONV_CASES:
        w = (rng.standard_normal((cout, cin, k)) * 0.05).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32) if with_bias else None
        proto, n = bf16_graph(_conv_graph(w, b))
        assert n == 1 and proto.graph.node[0].op_type == "Bf16Conv"
        x = rng.standard_normal((batch, cin, t)).astype(np.float32)
        y = _session(proto).run(None, {"x": x})[0]
        assert y.shape == (batch, cout, t) and y.dtype == np.float32
        ref, exact = _conv64(round_to_bf16(x), round_to_bf16(w), b), _conv64(x, w, b)
        scale = max(1.0, np.abs(ref).max())
        err = np.abs(y - ref).max() / scale
        assert err <= 2e-6, (cout, cin, k, t, batch, err)
        assert np.abs(y - exact).max() / scale > 20 * err, "the operands were not rounded to bfloat16"
        worst = max(worst, err)
    for c, hidden, c_out, t, batch, with_bias in FEED_FORWARD_CASES:
        w1 = (rng.standard_normal((hidden, c, 1)) * 0.1).astype(np.float32)
        b1 = rng.standard_normal(hidden).astype(np.float32) if with_bias else None
        w2 = (rng.standard_normal((c_out, hidden, 1)) * 0.1).astype(np.float32)
        b2 = rng.standard_normal(c_out).astype(np.float32)
        proto, n = bf16_graph(_feed_forward_graph(w1, b1, w2, b2))
        assert n == 1 and [nd.op_type for nd in proto.graph.node] == ["Bf16FeedForward"]
        x = (rng.standard_normal((batch, c, t)) * 2).astype(np.float32)
        session = _session(proto)
        y = session.run(None, {"x": x})[0]
        assert y.shape == (batch, c_out, t) and y.dtype == np.float32
        assert _feed_forward_error(y, x, w1, b1, w2, b2) <= 1.0, (c, hidden, c_out, t, batch)
        unrounded = _conv64(x, w1, b1)
        exact = _conv64(0.5 * unrounded * (1.0 + np.vectorize(erf)(unrounded / 2 ** 0.5)), w2, b2)
        assert np.abs(y - exact).max() / max(1.0, np.abs(exact).max()) > 4e-5, "the operands were not rounded"
        # Position-wise: a prefix alone gives bit for bit the same values. The first case crosses
        # the kernel's routes on AVX512-BF16: 21 spans of 48 steps (span by span) against 2 (the
        # two products over the whole prefix).
        cut = min(t, 2 * 48)
        np.testing.assert_array_equal(session.run(None, {"x": np.ascontiguousarray(x[..., :cut])})[0], y[..., :cut])
    for shape, n_out in MATMUL_CASES:
        w = (rng.standard_normal((shape[-1], n_out)) * 0.05).astype(np.float32)
        proto, n = bf16_graph(_matmul_graph(w, len(shape)))
        assert n == 1 and proto.graph.node[0].op_type == "Bf16MatMul"
        x = rng.standard_normal(shape).astype(np.float32)
        y = _session(proto).run(None, {"x": x})[0]
        assert y.shape == shape[:-1] + (n_out,)
        ref = round_to_bf16(x).astype(np.float64) @ round_to_bf16(w).astype(np.float64)
        exact = x.astype(np.float64) @ w.astype(np.float64)
        scale = max(1.0, np.abs(ref).max())
        err = np.abs(y - ref).max() / scale
        assert err <= 2e-6, (shape, n_out, err)
        assert np.abs(y - exact).max() / scale > 20 * err
        worst = max(worst, err)
    return {"worst": worst}


@pytest.mark.parametrize("code_path", ["avx512_bf16", "portable"])
def test_kernels_equal_float64_sum_of_rounded_operands(code_path):
    _native_or_skip()
    if code_path == "avx512_bf16" and not _cpu_has_avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16 (the portable path is tested)")
    env = dict(os.environ)
    env.pop("HIERAMAMBA_BF16_GEMM", None)
    if code_path == "portable":
        env["HIERAMAMBA_BF16_GEMM"] = "portable"
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import test_bf16; "
            "print(json.dumps(test_bf16.check_kernels()))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["worst"] <= 2e-6


def test_rewrite_replaces_only_eligible_products():
    """Grouped, strided, dilated, asymmetrically padded, tiny and non-constant products stay float32;
    a weight shared by two replaced convolutions is stored once, in bfloat16, and the float32 copy
    dropped."""
    import onnx
    from onnx import helper, numpy_helper

    from hieramamba.export.bf16 import bf16_graph

    rng = np.random.default_rng(1)
    W = numpy_helper.from_array((rng.standard_normal((64, 64, 3)) * 0.1).astype(np.float32), "W")
    Wg = numpy_helper.from_array((rng.standard_normal((64, 32, 3)) * 0.1).astype(np.float32), "Wg")
    Ws = numpy_helper.from_array((rng.standard_normal((2, 64, 3)) * 0.1).astype(np.float32), "Ws")
    nodes = [helper.make_node("Conv", ["x", "W"], ["a"], pads=[1, 1], name="same"),
             helper.make_node("Conv", ["a", "W"], ["b"], pads=[1, 1], name="shared"),
             helper.make_node("Conv", ["b", "Wg"], ["c"], pads=[1, 1], group=2, name="grouped"),
             helper.make_node("Conv", ["c", "W"], ["d"], pads=[1, 1], strides=[2], name="strided"),
             helper.make_node("Conv", ["d", "W"], ["e"], pads=[2, 0], name="causal"),
             helper.make_node("Conv", ["e", "W"], ["f"], pads=[2, 2], dilations=[2], name="dilated"),
             helper.make_node("Conv", ["f", "Ws"], ["g"], pads=[1, 1], name="tiny"),
             helper.make_node("MatMul", ["x", "x"], ["h"], name="two_activations")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 64, 64])],
                          [helper.make_tensor_value_info("g", 1, None), helper.make_tensor_value_info("h", 1, None)],
                          [W, Wg, Ws])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    out, n = bf16_graph(proto)
    assert n == 2
    assert [nd.op_type for nd in out.graph.node] == ["Bf16Conv", "Bf16Conv"] + ["Conv"] * 5 + ["MatMul"]
    inits = {i.name: i for i in out.graph.initializer}
    assert "W" in inits  # still used by the float32 convolutions
    assert inits[out.graph.node[0].input[1]].data_type == onnx.TensorProto.BFLOAT16
    assert [nd.op_type for nd in proto.graph.node][:2] == ["Conv", "Conv"]  # the input is not modified


def test_feed_forward_is_fused_only_when_nothing_else_reads_its_hidden_values():
    """1×1 conv → exact GELU → 1×1 conv becomes one Bf16FeedForward; not when the GELU's output
    is also read elsewhere (here a graph output) or the second conv has 3 taps."""
    from hieramamba.export.bf16 import bf16_graph

    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((128, 64, 1)) * 0.1).astype(np.float32)
    b = rng.standard_normal(128).astype(np.float32)
    w2 = (rng.standard_normal((64, 128, 1)) * 0.1).astype(np.float32)
    w2k3 = (rng.standard_normal((64, 128, 3)) * 0.1).astype(np.float32)
    b2 = rng.standard_normal(64).astype(np.float32)
    ops = lambda proto: [nd.op_type for nd in proto.graph.node if nd.op_type != "Constant"]  # noqa: E731
    out, n = bf16_graph(_feed_forward_graph(w1, b, w2, b2))
    assert (n, ops(out)) == (1, ["Bf16FeedForward"])
    assert {i.name for i in out.graph.initializer} == set(out.graph.node[0].input[1:])  # no float32 copies left
    out, n = bf16_graph(_feed_forward_graph(w1, b, w2, b2, extra_reader=True))
    assert (n, ops(out)) == (2, ["Bf16Conv", "Gelu", "Bf16Conv"])
    out, n = bf16_graph(_feed_forward_graph(w1, b, w2k3, b2, k2=3))
    assert (n, ops(out)) == (2, ["Bf16Conv", "Gelu", "Bf16Conv"])
    # A → GELU → B → GELU → C: B is the first block's second product, not also the next block's first.
    from onnx import helper

    chain = _feed_forward_graph(w1, b, w2, b2)
    chain.graph.node[-1].output[0] = "y1"
    chain.graph.node.extend(_gelu_nodes("y1", "g2", 2 ** 0.5, "v")
                            + [helper.make_node("Conv", ["g2", "W1", "B1"], ["y"], pads=[0, 0])])
    out, n = bf16_graph(chain)
    assert (n, ops(out)) == (2, ["Bf16FeedForward", "Gelu", "Bf16Conv"])
    _native_or_skip()
    x = rng.standard_normal((1, 64, 50)).astype(np.float32)
    assert _session(out).run(None, {"x": x})[0].shape == (1, 128, 50)


@pytest.fixture(scope="module")
def bundle_bf16(tmp_path_factory):
    _native_or_skip()
    from hieramamba.export.stages import export_bundle

    model, opt = small_model()
    out = tmp_path_factory.mktemp("rt_bf16") / "bundle"
    export_bundle(model, opt, out, dtype="bfloat16")
    return out, model, opt


@pytest.mark.slow
def test_bf16_bundle_matches_fp32_eager(bundle_bf16):
    """Head outputs within 2e-2 (absolute on logits, relative to each output's largest value on
    offsets) of the fp32 eager model and the same top-1 segment, chunked over several chunks."""
    import onnx

    from hieramamba.inference import Grounder
    from hieramamba.metrics import segment_iou
    from hieramamba.runtime import GroundingRuntime

    path, model, opt = bundle_bf16
    assert json.loads((path / "manifest.json").read_text())["dtype"] == "bfloat16"
    ops = [nd.op_type for f in path.glob("*.onnx") for nd in onnx.load(str(f)).graph.node]
    assert sum(op in ("Bf16Conv", "Bf16MatMul", "Bf16FeedForward") for op in ops) > 20
    assert "Bf16FeedForward" in ops
    rng = np.random.default_rng(3)
    video = rng.standard_normal((170, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((n, model.text_in_dim)).astype(np.float32) for n in (4, 11)]
    rt = GroundingRuntime.load(path, chunk=24, attn_rows=5)
    assert rt.backend.scan_kernel == "native"
    eager = Grounder(model, opt)
    for (gl, go, gm), (wl, wo, wm) in zip(rt.level_outputs(video, queries), eager.level_outputs(video, queries)):
        for level in range(len(wl)):
            assert np.abs(gl[level] - wl[level]).max() <= 2e-2
            assert np.abs(go[level] - wo[level]).max() / np.abs(wo[level]).max() <= 2e-2
            np.testing.assert_array_equal(gm[level], wm[level])
    for got, want in zip(rt.ground(video, queries, fps=30.0), eager.ground(video, queries, fps=30.0)):
        top_got, top_want = [got[0].start_sec, got[0].end_sec], [want[0].start_sec, want[0].end_sec]
        assert segment_iou(np.array(top_got), np.array(top_want)) >= 0.99, (top_got, top_want)


def test_bf16_bundle_refuses_other_providers_and_tensorrt(bundle_bf16):
    from hieramamba.export.trt_build import build_bundle_engines
    from hieramamba.artifacts import EngineLimits
    from hieramamba.runtime import GroundingRuntime

    path, _, _ = bundle_bf16
    with pytest.raises(InputError, match="bfloat16 bundle runs on the CPU provider"):
        GroundingRuntime.load(path, scan_kernel="graph")
    with pytest.raises(ExportError, match="bfloat16 bundle is for ONNX Runtime on CPU"):
        build_bundle_engines(path, EngineLimits(chunk=64, max_batch=1, max_clips=256, max_text_len=16))


@pytest.mark.slow
def test_embedded_default_held_out_recall_bf16_equals_fp32(tmp_path):
    """The embedded default on its held-out synthetic split (bench_train_tiny.py's): the bfloat16
    bundle's R@1 within 0.3 points of fp32 eager at both IoU thresholds."""
    _native_or_skip()
    import hieramamba
    from hieramamba.checkpoint import default_synthetic_settings
    from hieramamba.data import make_synthetic
    from hieramamba.evaluate import evaluate_model, evaluate_pipeline, r_at
    from hieramamba.export.stages import export_bundle
    from hieramamba.runtime import GroundingRuntime

    model, opt = hieramamba.load_default()
    settings = dict(default_synthetic_settings()["make_synthetic"])
    settings["queries_per_video"] = tuple(settings["queries_per_video"])
    syn = make_synthetic(tmp_path / "syn", "tiny", **settings)
    fp32 = evaluate_model(model, opt, data_paths=syn.paths(), split="test")
    export_bundle(model, opt, tmp_path / "bundle", dtype="bfloat16")
    bf16 = evaluate_pipeline(GroundingRuntime.load(tmp_path / "bundle"), opt, data_paths=syn.paths(), split="test")
    for iou in (0.5, 0.3):
        assert abs(r_at(bf16, 1, iou) - r_at(fp32, 1, iou)) <= 0.003, (iou, r_at(bf16, 1, iou), r_at(fp32, 1, iou))


def test_exact_gelu_is_fused_and_other_patterns_are_not():
    """torch's exact GELU as exported (x * (0.5 * (1 + erf(x / sqrt 2)))) becomes one
    com.microsoft::Gelu with the same values; a near miss (x / 2) is left alone."""
    import onnxruntime as ort
    from onnx import helper

    from hieramamba.export.bf16 import bf16_graph

    nodes = _gelu_nodes("x", "y", 2 ** 0.5, "g") + _gelu_nodes("y", "z", 2.0, "n")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [2, 8, 5])],
                          [helper.make_tensor_value_info("z", 1, None)])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    out, _ = bf16_graph(proto)
    ops = [n.op_type for n in out.graph.node if n.op_type != "Constant"]
    assert ops == ["Gelu", "Div", "Erf", "Add", "Mul", "Mul"]
    x = np.random.default_rng(2).standard_normal((2, 8, 5)).astype(np.float32) * 3
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, {"x": x})[0]
    np.testing.assert_allclose(run(out), run(proto), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("affine", [True, False])
def test_channel_layer_norm_is_fused_with_the_same_values(tmp_path, affine):
    """The model's ChannelLayerNorm, exported as the float32 graphs have it, becomes one
    hieramamba::ChannelNorm node computing the same values (float32 rounding), on both axes'
    edges (channels not a multiple of 16, time across the kernel's 256-step blocks)."""
    _native_or_skip()
    import torch

    from hieramamba.export.bf16 import bf16_graph
    from hieramamba.modules.primitives import ChannelLayerNorm

    torch.manual_seed(0)
    norm = ChannelLayerNorm(37, affine=affine).eval()
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 37, 300) * 3 + 1
    prog = torch.onnx.export(norm, (x,), dynamo=True, input_names=["x"], output_names=["y"], verbose=False,
                             dynamic_shapes=({2: torch.export.Dim("t")},))
    proto = prog.model_proto
    out, n = bf16_graph(proto)
    assert n == 1 and [nd.op_type for nd in out.graph.node if nd.op_type != "Constant"] == ["ChannelNorm"]
    want = norm(x).detach().numpy()
    for t in (300, 1, 257):
        got = _session(out).run(None, {"x": x[..., :t].numpy()})[0]
        np.testing.assert_allclose(got, norm(x[..., :t]).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert want.shape == (2, 37, 300)


def test_depthwise_convolutions_run_in_float32_and_only_same_padded_ones_are_replaced():
    """Depthwise convolutions (one channel per group) become hieramamba::DepthwiseConv with
    float32 weights: equal to a float64 convolution of the unrounded operands to float32 rounding
    (T shorter than the kernel, T = 1, batches, with and without bias); causal, strided and
    dilated ones stay ONNX Convs."""
    from hieramamba.export.bf16 import bf16_graph

    _native_or_skip()
    rng = np.random.default_rng(3)
    for channels, k, t, batch, with_bias in [(1024, 7, 3456, 1, True), (384, 3, 100, 3, False), (5, 7, 4, 2, True),
                                             (16, 3, 1, 1, True), (33, 1, 20, 1, True)]:
        w = (rng.standard_normal((channels, 1, k)) * 0.3).astype(np.float32)
        b = rng.standard_normal(channels).astype(np.float32) if with_bias else None
        graph = _conv_graph(w, b, group=channels)
        graph.graph.input[0].type.tensor_type.shape.dim[1].dim_value = channels  # not the weight's 1
        proto, n = bf16_graph(graph)
        assert n == 1 and [nd.op_type for nd in proto.graph.node] == ["DepthwiseConv"]
        assert {i.name: i.data_type for i in proto.graph.initializer}["W"] == 1  # float32 weights kept
        x = rng.standard_normal((batch, channels, t)).astype(np.float32)
        y = _session(proto).run(None, {"x": x})[0]
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), ((k - 1) // 2,) * 2))
        ref = np.zeros((batch, channels, t)) + (0.0 if b is None else b[None, :, None])
        for j in range(k):
            ref += w[None, :, 0, j, None].astype(np.float64) * xp[:, :, j:j + t]
        assert y.shape == ref.shape and np.abs(y - ref).max() <= 1e-6 * max(1.0, np.abs(ref).max()), (channels, k, t)
    w = (rng.standard_normal((8, 1, 3)) * 0.3).astype(np.float32)
    for attrs in (dict(pads=[2, 0]), dict(strides=[2]), dict(dilations=[2], pads=[2, 2])):
        proto, n = bf16_graph(_conv_graph(w, None, group=8, **attrs))
        assert n == 0 and [nd.op_type for nd in proto.graph.node] == ["Conv"], attrs
