"""ONNX export (custom-node and portable graphs), graph checks and TensorRT engine building
(DESIGN §1, §3). Imported as ``hieramamba.export``; importing it loads neither torch nor onnx.

Whole model
-----------
``export_to_file(model, opt, "m.onnx", dtype="float32"|"float16", portable=False, opset=18)``
    exports ``GroundingGraph`` (one video, any number of queries; video padded inside the graph
    to the official multiple ``2^(levels-1)·stride``; per-level ``logits_l``, ``offsets_l``,
    ``masks_l``) and writes ``m.onnx.json`` (the manifest). CLI: ``hieramamba export``.

Stage export (for the chunked runtime) — the reusable pieces
(the bundle of every stage of a model: ``hieramamba.export.stages.export_bundle``)
------------------------------------------------------------
``export_stage(module, args, out, dynamic_shapes=..., input_names=..., output_names=...,
kind="stage:<name>", mask_semantics=..., config=..., dtype=..., portable=..., extra=...)``
    exports any ``nn.Module`` (eval mode) whose forward calls ``hieramamba.ops.hydra_scan``
    (from anywhere: the op routes its calls to the exporter, ``hieramamba.ops.scan_override``).
    Every scan becomes one
    ``hieramamba::HydraScan`` node (9 inputs, or 11 when initial states are passed; the
    states ``state_f``/``state_b`` are node outputs you may return as graph outputs), the graph
    carries the local function with the portable body, ``onnx.checker`` full check runs, and a
    manifest is written beside the file. All scans of one graph must share dtypes, sizes,
    ``chunk_size`` and whether they take states (one local function per graph).
``export_module(...)`` is the same without writing files (returns ``ExportResult`` with the
    ``onnx.ModelProto``); ``save_model(proto, path)``.
``custom_scan_nodes()`` is the context manager that turns scan calls into nodes, if you drive
    ``torch.onnx.export`` yourself; then ``scan_node.build_function(sig, opset)`` +
    ``scan_node.attach_function(proto, fn)`` add the body, ``inline_scan_function(proto)``
    makes it portable, ``check_graph(proto)`` checks it.
``fp32_islands()``: the precision context used for fp16 exports (LayerNorm stats, softmax).

Manifests and checks
--------------------
``load_manifest(path, expect={"dtype": "float16", "kind": ...})`` validates ``path + '.json'``
(format, file hash, I/O vs graph, opset, expected fields); ExportError on any mismatch.
``check.run_case(session, model, T, nq, text_len)`` compares ONNX Runtime with eager.

TensorRT
--------
``trt_build.build_engine(onnx, engine, ProfileSpec(...), plugin_library=..., timing_cache=...)``;
``profile_from_args("128:2304:9216", "1:8:32", "24")``; per stage of a runtime bundle:
``trt_build.build_bundle_engines(bundle, hieramamba.artifacts.EngineLimits(...))``. Without TensorRT or
the plugin library: ``BackendUnavailableError``.
"""

from __future__ import annotations

_LAZY = {
    "export_to_file": "api", "export_stage": "api",
    "export_module": "onnx_export", "export_model": "onnx_export", "save_model": "onnx_export",
    "check_graph": "onnx_export", "inline_scan_function": "onnx_export",
    "fp32_islands": "onnx_export", "GroundingGraph": "onnx_export", "ExportResult": "onnx_export",
    "custom_scan_nodes": "scan_node", "ScanSignature": "scan_node",
    "load_manifest": "manifest", "build_manifest": "manifest", "write_manifest": "manifest",
    "ProfileSpec": "trt_build", "build_engine": "trt_build", "profile_from_args": "trt_build",
    "build_bundle_engines": "trt_build",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
