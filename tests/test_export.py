"""ONNX export: HydraScan node + local function, portable graph, fp16, manifest, errors.

Every numeric check runs the exported file in ONNX Runtime (CPU) and compares with eager
PyTorch (and, for the golden models, with the official outputs). The graphs are exported once
at one length and run at others, incl. the shortest video (T=1) and one longer than
max_seq_len (PE resampled inside the graph). The full matrix (four official configs, lengths
1/127/2304/5000, 1 and 8 queries, both graphs, both dtypes) is benchmarks/check_onnx_matrix.py.
"""

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from hieramamba.checkpoint import load_experiment  # noqa: E402
from hieramamba.config import load_config, packaged_config_path, parse_config, read_yaml  # noqa: E402
from hieramamba.errors import BackendUnavailableError, ExportError  # noqa: E402
from hieramamba.export import scan_node  # noqa: E402
from hieramamba.export.api import export_to_file  # noqa: E402
from hieramamba.export.check import ort_session, run_case  # noqa: E402
from hieramamba.export.manifest import load_manifest, manifest_path  # noqa: E402
from hieramamba.export.onnx_export import (check_graph, check_opset, export_model,  # noqa: E402
                                           inline_scan_function, save_model)
from hieramamba.model import build_model  # noqa: E402


def _save(proto, path):
    save_model(proto, path)
    return ort_session(path)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """The tiny config at video stride 2 (as MAD): padding multiple S = 2^5·2 = 64, the export
    example 3·S − 17 = 175 clips (export_model's default)."""
    torch.manual_seed(0)
    raw = read_yaml(packaged_config_path("tiny"))
    raw["model"]["vid_net"]["stride"] = 2
    opt = parse_config(raw)
    model = build_model(opt).eval()
    d = tmp_path_factory.mktemp("tiny")
    path, man = export_to_file(model, opt, d / "tiny.onnx")
    return model, opt, path, man


def _assert_close(res, tol):
    assert res.mask_mismatches() == 0, [e for e in res.errors if e.mask_mismatches]
    assert res.worst() <= tol, [(e.name, e.max_rel) for e in res.errors]


def test_custom_node_attributes_and_function(tiny_export):
    model, _, path, man = tiny_export
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    nodes = scan_node.scan_nodes(proto)
    assert len(nodes) == model.num_levels  # one Hydra layer per AMP block
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"hieramamba"
        assert attrs["chunk_size"] == 256 and attrs["has_initial_states"] == 0
        assert len(n.input) == 9 and "" not in n.input
    fns = [f for f in proto.functions if (f.domain, f.name) == ("hieramamba", "HydraScan")]
    assert len(fns) == 1 and len(fns[0].input) == 9 and list(fns[0].output) == ["y", "state_f", "state_b"]
    assert all(n.domain in ("", "ai.onnx") for n in fns[0].node)  # portable body: standard ops
    assert man["hydra_scan"]["custom_nodes"] == model.num_levels
    assert {"video", "video_mask", "text", "text_mask"} == {i["name"] for i in man["inputs"]}
    # fp32 graphs (the CPU format) take the channel LayerNorms' means as MatMuls: ONNX Runtime's
    # ReduceMean over axis 1 is slow (primitives.channel_mean; fp16 graphs: test_fp16_graph_...).
    assert _channel_reduce_means(proto) == []


def _channel_reduce_means(proto):
    """ReduceMean nodes over axis 1 (the channel axis of (B, C, T)): their axes input is a
    Constant node or an initializer."""
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer
              if i.data_type == onnx.TensorProto.INT64}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name in ("value", "value_ints"):
            consts[n.output[0]] = onnx.helper.get_attribute_value(n.attribute[0])
            if isinstance(consts[n.output[0]], onnx.TensorProto):
                consts[n.output[0]] = onnx.numpy_helper.to_array(consts[n.output[0]])
    return [n for n in proto.graph.node if n.op_type == "ReduceMean" and len(n.input) > 1
            and consts.get(n.input[1]) is not None and list(np.atleast_1d(consts[n.input[1]])) == [1]]


def test_no_shape_baked_from_export_length(tiny_export):
    """The graph was exported at T=175, 2 queries, 24 tokens: every input axis but the channel
    dims is symbolic and no Reshape/Expand constant contains the export-time sizes."""
    _, _, path, man = tiny_export
    proto = onnx.load(str(path))
    shapes = {i["name"]: i["shape"] for i in man["inputs"]}
    assert isinstance(shapes["video"][2], str) and isinstance(shapes["text"][0], str)
    assert isinstance(shapes["text"][2], str)
    padded = 192  # 175 padded to the multiple 64; level 0 has padded/2 tokens (stride 2)
    suspicious = {175, padded, padded // 2, 3 * padded // 4, padded // 4}
    consts = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = onnx.numpy_helper.to_array(a.t)
    for n in proto.graph.node:
        if n.op_type in ("Reshape", "Expand", "ConstantOfShape", "Tile", "Slice"):
            for i in n.input[1:]:
                v = consts.get(i)
                if v is not None and v.dtype.kind == "i" and v.size < 16:
                    assert not (set(v.ravel().tolist()) & suspicious), (n.op_type, n.name, v)


@pytest.mark.parametrize("T,nq", [(1, 1), (127, 3), (1100, 2)])  # 1100 > stride·max_seq_len = 256
def test_ort_matches_eager_custom_and_portable(tiny_export, tmp_path, T, nq):
    model, _, path, _ = tiny_export
    sess = ort_session(path)
    res = run_case(sess, model, T, nq, 16, seed=T, valid=max(1, T - 5))
    _assert_close(res, 1e-4)
    portable = inline_scan_function(onnx.load(str(path)))
    check_graph(portable, expect_scan_nodes=0)
    assert not any(n.domain == "hieramamba" for n in portable.graph.node)
    res_p = run_case(_save(portable, tmp_path / "p.onnx"), model, T, nq, 16, seed=T,
                     valid=max(1, T - 5))
    _assert_close(res_p, 1e-4)


def test_native_scan_kernel_replaces_the_function_body(tiny_export, tmp_path):
    """With libhieramamba_plugins registered, ONNX Runtime runs the HydraScan nodes with the C++
    kernel instead of inlining their function body (seen in its profile), with the same outputs."""
    from hieramamba.native_library import load_native_library
    from hieramamba.ort_options import ort_session_options

    if load_native_library(required=False) is None:
        pytest.skip("libhieramamba_plugins is not built (tests/test_native_scan.py builds it)")
    model, _, path, _ = tiny_export
    ran = {}
    for kernel in ("native", "graph"):
        so = ort_session_options(ort, 2, scan_kernel=kernel)
        so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / kernel)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        _assert_close(run_case(sess, model, 300, 2, 16, seed=7, valid=290), 1e-4)
        events = json.loads(open(sess.end_profiling()).read())
        ran[kernel] = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and "op_name" in e.get("args", {})}
    assert "HydraScan" in ran["native"], sorted(ran["native"])
    assert "HydraScan" not in ran["graph"] and "CumSum" in ran["graph"]


def test_fp16_graph_is_strongly_typed_and_close(tiny_export, tmp_path):
    model, opt, _, _ = tiny_export
    path, man = export_to_file(model, opt, tmp_path / "h.onnx", dtype="float16")
    assert man["dtype"] == "float16"
    proto = onnx.load(str(path))
    f16 = onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == f16
    assert proto.graph.output[0].type.tensor_type.elem_type == f16
    # The channel LayerNorms keep ReduceMean over axis 1 (mean and variance), the pattern
    # TensorRT fuses into its normalization layer.
    n_norms = sum(type(m).__name__ == "ChannelLayerNorm" for m in model.modules())
    assert n_norms > 0 and len(_channel_reduce_means(proto)) >= 2 * n_norms
    # Scan states are fp32 islands; LayerNorm/softmax upcast (Cast to FLOAT present).
    n = scan_node.scan_nodes(proto)[0]
    assert len(n.output) == 3
    assert any(x.op_type == "Cast" and onnx.helper.get_attribute_value(x.attribute[0]) == onnx.TensorProto.FLOAT
               for x in proto.graph.node)
    sessions = [ort_session(path)]
    from hieramamba.native_library import load_native_library

    if load_native_library(required=False) is not None:
        # The kernels take the node's dt inputs in one dtype: the half model's fp32 A and fp16
        # dt/dt_bias are exported as fp32 (exact), else no kernel would match this node.
        sessions.append(ort_session(path, 2, scan_kernel="native"))
    for sess in sessions:
        for T, nq in [(1, 1), (700, 2)]:
            res = run_case(sess, model, T, nq, 16, dtype=torch.float16, seed=T)
            assert res.worst() <= 1e-2, [(e.name, e.max_rel) for e in res.errors]


@pytest.mark.parametrize("case", ["ego4d", "tacos"])
def test_golden_models_ort_vs_eager_and_official(golden, tmp_path, case):
    model, opt = load_experiment(golden / case / "experiment")
    path, man = export_to_file(model, opt, tmp_path / f"{case}.onnx")
    load_manifest(path, expect={"mask_semantics": "official", "dtype": "float32"})
    sess = ort_session(path)
    text_len = opt["eval"]["max_text_len"]
    # Random inputs, shortest video and one longer than the golden max_seq_len (512).
    for T, nq in [(1, 1), (700, 3)]:
        _assert_close(run_case(sess, model, T, nq, text_len, seed=T), 1e-4)
    # The official outputs (float64 official code) through ONNX Runtime.
    sc = next(s for s in json.loads((golden / case / "manifest.json").read_text())["scenarios"]
              if s["kind"] == "eval")
    inp = np.load(golden / case / sc["inputs_file"])
    out = np.load(golden / case / sc["outputs_file"])
    keys = sorted((k for k in inp if k.startswith("in.text.")), key=lambda k: int(k.split(".")[-1]))
    video = inp["in.vid"][None]
    T = video.shape[-1]
    text = np.zeros((len(keys), inp[keys[0]].shape[0], text_len), np.float32)
    tmask = np.zeros((len(keys), 1, text_len), bool)
    for i, k in enumerate(keys):
        text[i, :, : inp[k].shape[1]] = inp[k]
        tmask[i, 0, : inp[k].shape[1]] = True
    feed = {"video": video, "video_mask": np.ones((1, 1, T), bool), "text": text, "text_mask": tmask}
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    for l in range(model.num_levels):
        np.testing.assert_array_equal(got[f"masks_{l}"], out[f"masks.{l}"])
        for name in ("logits", "offsets"):
            ref = out[f"{name}.{l}"]
            err = np.abs(got[f"{name}_{l}"] - ref).max() / max(np.abs(ref).max(), 1e-12)
            assert err <= 1e-4, f"{case} {name}.{l}: {err:.2e}"


# -- manifest and errors -------------------------------------------------------------------------


def test_manifest_validation_errors(tiny_export, tmp_path):
    _, _, path, man = tiny_export
    m = load_manifest(path, expect={"dtype": "float32", "hydra_scan.plugin_version": "1"})
    assert m["opset"] == 18 and m["versions"]["torch"] == torch.__version__
    assert m["padding"]["multiple"] == 64 and m["mask_semantics"] == "official"
    assert m["hydra_scan"]["chunk_size"] == 256 and m["hydra_scan"]["body_chunk_size"] == 64
    with pytest.raises(ExportError, match="dtype is 'float32', expected 'float16'"):
        load_manifest(path, expect={"dtype": "float16"})
    # A manifest that belongs to another file.
    other = tmp_path / "copy.onnx"
    other.write_bytes(path.read_bytes() + b"\0")
    manifest_path(other).write_text(manifest_path(path).read_text())
    with pytest.raises(ExportError, match="sha256"):
        load_manifest(other)
    # I/O that does not match the graph.
    other.write_bytes(path.read_bytes())
    bad = json.loads(manifest_path(path).read_text())
    bad["inputs"][0]["name"] = "features"
    manifest_path(other).write_text(json.dumps(bad))
    with pytest.raises(ExportError, match="inputs"):
        load_manifest(other)
    manifest_path(other).unlink()
    with pytest.raises(ExportError, match="manifest not found"):
        load_manifest(other)


def test_bad_requests_raise_clear_errors(tiny_export):
    model, _, _, _ = tiny_export
    with pytest.raises(ExportError, match="opset 13 is too old"):
        check_opset(13)
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_model(model, opset=13)
    with pytest.raises(ExportError, match="dtype"):
        export_model(model, dtype="bfloat16")
    with pytest.raises(ExportError, match="HieraMamba"):
        export_model(torch.nn.Linear(2, 2))
    cfg = load_config("tiny")
    cfg["model"]["vid_net"]["mamba_dstate"] = 256  # the CUDA plan fits N <= 128
    with pytest.raises(ExportError, match="mamba_dstate=256 exceeds"):
        export_model(build_model(cfg).eval())
    model.train()
    try:
        with pytest.raises(ExportError, match="eval mode"):
            export_model(model)
    finally:
        model.eval()
