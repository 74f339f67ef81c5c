"""TensorRT engine building: everything but the TensorRT calls (profiles, plugin lookup,
argument checks, engine manifest); the command fails clearly without TensorRT."""

import importlib.util
import json

import pytest

from hieramamba.cli import main
from hieramamba.errors import BackendUnavailableError, ExportError
from hieramamba.export.trt_build import (ProfileSpec, engine_manifest, input_dims_from_manifest,
                                         parse_range, profile_from_args)
from hieramamba.native_library import TRT_PLUGIN, find_library
from hieramamba.trt_env import import_tensorrt

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_profile_shapes_follow_the_graph_inputs():
    p = profile_from_args("1:2304:9216", "1:8:32", "24")
    shapes = p.shapes(256, 768)
    assert shapes["video"] == ((1, 256, 1), (1, 256, 2304), (1, 256, 9216))
    assert shapes["video_mask"] == ((1, 1, 1), (1, 1, 2304), (1, 1, 9216))
    assert shapes["text"] == ((1, 768, 24), (8, 768, 24), (32, 768, 24))
    assert shapes["text_mask"][2] == (32, 1, 24)


@pytest.mark.parametrize("spec,msg", [("128:64:256", "min <= opt <= max"), ("0:1:2", "min <= opt"),
                                      ("a:b:c", "integers"), ("1:2", "MIN:OPT:MAX")])
def test_profile_argument_errors(spec, msg):
    with pytest.raises(ExportError, match=msg):
        profile_from_args(spec, "1", "24")


def test_parse_range_single_value_is_fixed():
    assert parse_range("24", "--text-len") == (24, 24, 24)


def test_missing_plugin_library_is_a_clear_error(tmp_path, monkeypatch):
    from hieramamba import native_library

    monkeypatch.setattr(native_library, "_REPO_ROOT", tmp_path / "repo")  # no build/ there
    monkeypatch.setattr(native_library, "_PACKAGE_DIR", tmp_path / "repo")
    monkeypatch.delenv("HIERAMAMBA_PLUGIN_LIB", raising=False)
    with pytest.raises(BackendUnavailableError, match="libhieramamba_trt_plugin.so not found .*libnope.so"):
        find_library(TRT_PLUGIN, str(tmp_path / "libnope.so"))
    # One variable for both libraries: a folder, or one library's file (the other is beside it).
    lib = tmp_path / "libhieramamba_trt_plugin.so"
    lib.write_bytes(b"\x7fELF")
    for value in (tmp_path, tmp_path / "libhieramamba_plugins.so", lib):
        monkeypatch.setenv("HIERAMAMBA_PLUGIN_LIB", str(value))
        assert find_library(TRT_PLUGIN) == lib
    monkeypatch.setenv("HIERAMAMBA_PLUGIN_LIB", str(tmp_path / "elsewhere"))
    with pytest.raises(BackendUnavailableError, match="HIERAMAMBA_PLUGIN_LIB"):
        find_library(TRT_PLUGIN)
    assert find_library(TRT_PLUGIN, str(lib)) == lib
    # The variable earlier versions read is refused, not silently ignored.
    monkeypatch.setenv("HIERAMAMBA_TRT_PLUGIN", str(lib))
    with pytest.raises(BackendUnavailableError, match="HIERAMAMBA_TRT_PLUGIN is no longer read"):
        find_library(TRT_PLUGIN)


def test_engine_manifest_records_versions_and_profile(tmp_path):
    onnx_man = {"sha256": "ab", "dtype": "float16", "mask_semantics": "official", "config": {"x": 1},
                "inputs": [{"name": "video", "dtype": "float16", "shape": [1, 256, "T"]},
                           {"name": "text", "dtype": "float16", "shape": ["Nq", 768, "Tt"]}],
                "outputs": [], "padding": {"multiple": 128}}
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"engine")
    p = ProfileSpec(1, 2304, 9216, 1, 8, 32, 24, 24, 24)
    m = engine_manifest(onnx_man, tmp_path / "m.onnx", eng, p, trt_version="10.16.0",
                        plugin_library="/x/libhieramamba_trt_plugin.so", gpu="NVIDIA H200",
                        timing_cache=None)
    assert m["tensorrt_version"] == "10.16.0" and m["gpu"] == "NVIDIA H200"
    assert m["plugin"] == {"library": "/x/libhieramamba_trt_plugin.so", "name": "HydraScan",
                           "version": "1", "namespace": "hieramamba"}
    assert m["profile"]["len_max"] == 9216 and m["dtype"] == "float16" and m["engine_sha256"]
    assert input_dims_from_manifest(onnx_man) == (256, 768)
    json.dumps(m)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_exits_nonzero(tmp_path, capsys):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        import_tensorrt()
    # A missing manifest is reported before TensorRT is even needed.
    (tmp_path / "m.onnx").write_bytes(b"")
    assert main(["build-engine", str(tmp_path / "m.onnx")]) == 2
    assert "manifest not found" in capsys.readouterr().err


def _tiny_graph_with_manifest(path):
    """A valid ONNX file in the whole-model I/O layout with its manifest (no export needed)."""
    import onnx
    from onnx import TensorProto, helper

    from hieramamba.export.manifest import build_manifest, write_manifest

    ins = [helper.make_tensor_value_info("video", TensorProto.FLOAT, [1, 8, "T"]),
           helper.make_tensor_value_info("text", TensorProto.FLOAT, ["Nq", 4, "Tt"])]
    outs = [helper.make_tensor_value_info("logits_0", TensorProto.FLOAT, [1, 8, "T"])]
    g = helper.make_graph([helper.make_node("Identity", ["video"], ["logits_0"])], "g", ins, outs)
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(proto, path)
    write_manifest(build_manifest(proto, path, kind="grounding_model", dtype="float32", opset=18,
                                  mask_semantics="official", config=None), path)


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_build_engine_command_says_tensorrt_is_missing(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    _tiny_graph_with_manifest(path)
    assert main(["build-engine", str(path), "--lengths", "1:128:1024"]) == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err
    assert main(["build-engine", str(path), "--lengths", "128:1:1024"]) == 2
    assert "min <= opt <= max" in capsys.readouterr().err
