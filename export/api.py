"""File-level entry points: export to a file with its manifest, and stage export helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hieramamba.errors import ExportError

from .manifest import build_manifest, write_manifest
from .onnx_export import (DEFAULT_OPSET, GroundingGraph, dtype_name, export_model, export_module,
                          save_model)


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def export_to_file(model, opt: Optional[dict], out, *, dtype="float32", portable: bool = False,
                   opset: int = DEFAULT_OPSET, source: Optional[dict] = None):
    """Export the whole model to ``out`` and write ``out + '.json'``. Returns (path, manifest)."""
    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"output path must end in .onnx, got {out}")
    res = export_model(model, opset=opset, portable=portable, dtype=dtype,
                       text_len=int((opt or {}).get("eval", {}).get("max_text_len", 24)))
    save_model(res.model_proto, out)
    config = None if opt is None else _json_safe({"model": opt.get("model"), "eval": opt.get("eval")})
    man = build_manifest(
        res.model_proto, out, kind="grounding_model", dtype=res.dtype, opset=res.opset,
        mask_semantics=model.mask_semantics, config=config, scan_signature=res.scan,
        portable=portable, pad_multiple=GroundingGraph(model).pad_multiple,
        extra={"source": source, "export_seconds": round(res.seconds, 2),
               "num_levels": model.num_levels, "vid_stride": model.vid_stride})
    write_manifest(man, out)
    return out, man


def export_stage(module, args, out, *, dynamic_shapes, input_names, output_names,
                 kind: str, mask_semantics: str = "official", config: Optional[dict] = None,
                 dtype="float32", portable: bool = False, opset: int = DEFAULT_OPSET,
                 extra: Optional[dict] = None):
    """Export any module that calls HydraScan (e.g. one pyramid stage of the chunked runtime,
    with state inputs/outputs) to ``out`` with a manifest of ``kind``. Returns (path, manifest).

    For fp16, pass a half-precision module and half-precision float args."""
    res = export_module(module, args, dynamic_shapes=dynamic_shapes, input_names=input_names,
                        output_names=output_names, opset=opset, portable=portable,
                        dtype=dtype_name(dtype))
    out = save_model(res.model_proto, out)
    man = build_manifest(res.model_proto, out, kind=kind, dtype=res.dtype, opset=res.opset,
                         mask_semantics=mask_semantics, config=_json_safe(config),
                         scan_signature=res.scan, portable=portable,
                         extra=dict(extra or {}, export_seconds=round(res.seconds, 2)))
    write_manifest(man, out)
    return out, man
