"""The manifest JSON written beside every exported ONNX file (schema ``hieramamba.onnx_file``).

``<file>.onnx`` → ``<file>.onnx.json``. It records what a consumer must know to feed the graph
and to trust it: the config, dtype, opset, mask semantics, HydraScan op version, the padding
rule, I/O names/shapes/dtypes (symbolic axes by name) and the torch/onnx versions, plus the
SHA-256 of the ONNX file. Written and read through ``hieramamba.artifacts`` (schema and version
header, atomic write); ``load_manifest`` also validates it against the file and against what the
caller expects; any mismatch raises ExportError naming the field, expected and actual values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from hieramamba.artifacts import SCAN_OP, file_sha256, read_artifact, write_artifact
from hieramamba.errors import CheckpointError, ExportError

SCHEMA, VERSION = "hieramamba.onnx_file", 2
REEXPORT = "re-export with `hieramamba export`"
REQUIRED = ("kind", "dtype", "opset", "mask_semantics", "hydra_scan", "inputs", "outputs", "versions", "sha256")


def manifest_path(path) -> Path:
    return Path(str(path) + ".json")


def _versions() -> dict:
    out = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except ImportError:
            out[name] = None
    try:
        from importlib.metadata import version
        out["hieramamba"] = version("hieramamba")
    except Exception:
        out["hieramamba"] = None
    return out


def io_spec(model_proto) -> tuple[list, list]:
    """Names, element types and shapes (ints or symbolic names) of the graph's inputs/outputs."""
    from onnx import helper

    def one(vi):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in t.shape.dim]
        return {"name": vi.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": dims}

    return [one(v) for v in model_proto.graph.input], [one(v) for v in model_proto.graph.output]


def build_manifest(model_proto, onnx_path, *, kind: str, dtype: str, opset: int,
                   mask_semantics: str, config: Optional[dict], scan_signature=None,
                   portable: bool = False, pad_multiple: Optional[int] = None,
                   extra: Optional[dict] = None) -> dict:
    from hieramamba.ops.hydra_scan import TRACED_CHUNK_SIZE

    from . import scan_node

    inputs, outputs = io_spec(model_proto)
    sig = scan_signature
    m = {
        "kind": kind,
        "file": Path(onnx_path).name,
        "sha256": file_sha256(onnx_path),
        "dtype": dtype,
        "opset": opset,
        "mask_semantics": mask_semantics,
        "portable": bool(portable),
        "hydra_scan": {
            "domain": SCAN_OP.domain,
            "op_type": SCAN_OP.op_type,
            "plugin_version": SCAN_OP.version,
            "plugin_namespace": SCAN_OP.domain,
            "function_version": SCAN_OP.function_version,
            "custom_nodes": 0 if portable else len(scan_node.scan_nodes(model_proto)),
            "chunk_size": None if sig is None else sig.chunk_size,
            # the function body's own chunk (hieramamba.ops.hydra_scan.TRACED_CHUNK_SIZE)
            "body_chunk_size": None if sig is None else min(sig.chunk_size, TRACED_CHUNK_SIZE),
            "has_initial_states": None if sig is None else sig.has_states,
            "sizes": None if sig is None else {"H": sig.H, "P": sig.P, "G": sig.G, "N": sig.N},
        },
        "padding": None if pad_multiple is None else {
            "in_graph": True, "multiple": pad_multiple,
            "rule": "video zero-padded to ceil(T/multiple)*multiple inside the graph, mask "
                    "extended with False (REFERENCE §8.2)"},
        "inputs": inputs,
        "outputs": outputs,
        "config": config,
        "versions": _versions(),
    }
    if extra:
        m.update(extra)
    return m


def write_manifest(manifest: dict, onnx_path) -> Path:
    return write_artifact(manifest_path(onnx_path), SCHEMA, VERSION, manifest)


def load_manifest(onnx_path, *, expect: Optional[dict] = None, verify_hash: bool = True,
                  check_io: bool = True) -> dict:
    """Read ``<onnx_path>.json`` and validate it: format, required fields, file hash, I/O
    against the ONNX graph, and each ``expect`` key (e.g. ``{"dtype": "float16"}``).
    Raises ExportError with the mismatch spelled out."""
    onnx_path = Path(onnx_path)
    p = manifest_path(onnx_path)
    if not onnx_path.is_file():
        raise ExportError(f"ONNX file not found: {onnx_path}")
    try:
        m = read_artifact(p, SCHEMA, VERSION, REEXPORT,
                          missing=f"manifest not found: {p} (every exported file has a manifest beside it; {REEXPORT})")
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    missing = [k for k in REQUIRED if k not in m]
    if missing:
        raise ExportError(f"manifest {p}: missing fields {missing}")
    if verify_hash:
        actual = file_sha256(onnx_path)
        if actual != m["sha256"]:
            raise ExportError(f"manifest {p} does not match {onnx_path.name}: sha256 {m['sha256'][:16]}… "
                              f"recorded, file has {actual[:16]}… (file changed after export?)")
    if check_io:
        import onnx

        proto = onnx.load(str(onnx_path), load_external_data=False)
        ins, outs = io_spec(proto)
        for what, rec, act in (("inputs", m["inputs"], ins), ("outputs", m["outputs"], outs)):
            if rec != act:
                raise ExportError(f"manifest {p}: {what} {_brief(rec)} do not match the graph's "
                                  f"{_brief(act)}")
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset != m["opset"]:
            raise ExportError(f"manifest {p}: opset {m['opset']} recorded, graph has {opset}")
    for key, want in (expect or {}).items():
        have = _get(m, key)
        if have != want:
            raise ExportError(f"manifest {p}: {key} is {have!r}, expected {want!r}")
    return m


def _get(m: dict, dotted: str):
    cur = m
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _brief(io: list) -> str:
    return "[" + ", ".join(f"{d['name']}:{d['dtype']}{d['shape']}" for d in io) + "]"
