"""Stage graphs of the chunked runtime (DESIGN §4) and the bundle that holds them.

A bundle is a folder: ``manifest.json`` (``hieramamba.artifacts.BundleManifest``: dtype, opset,
the plan, every stage's file, hash and I/O names) and one ONNX file per stage instance of
``hieramamba.stage_table`` (``text``, ``front``, per level ``pre{l}``, ``scan{l}``, ``post{l}``
and ``local{l}`` or ``gattn_in{l}``/``gattn_rows{l}``/``gattn_out{l}``, ``heads``). Each graph is
the trace of the stage's torch module (``hieramamba.stage_modules``), with the inputs, order and
dynamic axes the stage table gives. The ``scan{l}`` stages hold the ``HydraScan`` node with its
model-local function (DESIGN §3): ONNX Runtime runs the function body (or the C++ kernel),
TensorRT maps the node to the plugin. Crops happen on the host.
Writing is atomic: the bundle is built in a temporary sibling folder and renamed at the end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from hieramamba.artifacts import (BUNDLE_SCHEMA, BUNDLE_VERSION, SCAN_OP, BundleManifest, StageFile,
                                  check_output_location, file_sha256, temp_sibling)
from hieramamba.errors import ExportError
from hieramamba.ort_options import ort_session_options
from hieramamba.stage_modules import plan_from_model, stage_module
from hieramamba.stage_table import SYMBOLS, dim_value, dynamic_symbol, stage, stage_instances, static_sizes

# Sizes of the example inputs a stage is traced with (any size works: the traced axes are dynamic).
EXAMPLE_SIZES = {"batch": 2, "text": 5, "vtime": 24, "tok": 12, "slen": 18, "slots": 6, "rows": 5, "htime": 12}
INDEX_EXAMPLES = {"n_valid": 27, "slot_offset": 0, "pe_start": 0, "pe_total": 100}


def _dynamic_shapes(spec, sizes: dict, early_fusion: bool) -> tuple:
    """Per input, ``{axis: torch.export.Dim}`` for its dynamic axes (one Dim object per symbol,
    so the exporter knows equal axes are equal; ``bb`` is ``batch`` for early-fusion models and
    the static 1 otherwise)."""
    from torch.export import Dim

    dims = {}

    def dim(symbol):
        name = "batch" if symbol == "bb" else symbol
        if name not in dims:
            dims[name] = Dim(name, min=SYMBOLS[name])
        return dims[name]

    out = []
    for port in spec.inputs:
        axes = {}
        for axis, d in enumerate(port.dims):
            dyn = dynamic_symbol(d)
            if dyn is None or (dyn[0] == "bb" and not early_fusion):
                continue
            symbol, factors = dyn
            mult = 1
            for f in factors:
                mult *= int(f) if f.isdigit() else sizes[f]
            axes[axis] = dim(symbol) * mult if mult > 1 else dim(symbol)
        out.append(axes or None)
    return tuple(out)


def _stage_specs(model, plan, dtype):
    """(instance name, module, example args, dynamic shapes, input names, output names) per
    stage instance of the model, in the stage table's order."""
    g = torch.Generator().manual_seed(0)
    nq = EXAMPLE_SIZES["batch"]
    values = dict(EXAMPLE_SIZES, bb=nq if plan.early_fusion else 1, text1=EXAMPLE_SIZES["text"] + plan.text_extra_tokens)
    text_spec = stage("text")
    with torch.no_grad():
        text_args = (torch.randn(nq, plan.text_in_dim, values["text"], generator=g).to(dtype),
                     torch.ones(nq, 1, values["text"], dtype=torch.bool))
        text_enc = dict(zip(text_spec.output_names, model.encode_text(*text_args)))
    specs = []
    for inst in stage_instances(plan):
        sizes = static_sizes(plan, inst.level)
        args = []
        for port in inst.spec.inputs:
            if inst.spec.name == "text":
                args = list(text_args)
                break
            if port.name in text_enc:
                args.append(text_enc[port.name])
            elif port.kind == "index":
                args.append(torch.tensor(INDEX_EXAMPLES[port.name], dtype=torch.int64))
            elif port.kind == "scale":
                args.append(torch.tensor(1.5))
            else:
                shape = [dim_value(d, {**sizes, **values}) for d in port.dims]
                if port.kind == "mask":
                    args.append(torch.ones(shape, dtype=torch.bool))
                else:
                    args.append(torch.randn(shape, generator=g).to(torch.float32 if port.kind == "state" else dtype))
        specs.append((inst.name, stage_module(model, inst.spec.name, inst.level), tuple(args),
                      _dynamic_shapes(inst.spec, sizes, plan.early_fusion), list(inst.spec.input_names),
                      list(inst.spec.output_names)))
    return specs


def structure_key(module: nn.Module) -> str:
    """Everything a stage graph depends on besides weight values: module types, their plain
    Python attributes (sizes, windows, flags), parameter/buffer names, shapes and dtypes. Two
    stage modules with equal keys trace to the same graph, so one export serves both with the
    weights swapped (``export_bundle``); each reused graph is still checked numerically."""
    parts = []  # remove_duplicate=False: a module reachable twice lists all its paths
    for name, m in module.named_modules(remove_duplicate=False):
        attrs = sorted((k, repr(v)) for k, v in vars(m).items()
                       if not k.startswith("_") and isinstance(v, (bool, int, float, str, tuple, list, type(None))))
        parts.append(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{attrs}")
    for name, t in list(module.named_parameters(remove_duplicate=False)) + list(
            module.named_buffers(remove_duplicate=False)):
        parts.append(f"{name}|{tuple(t.shape)}|{t.dtype}")
    return "\n".join(parts)


def _named_tensors(module: nn.Module) -> dict:
    """Parameters and buffers (non-persistent ones too) by the names the exporter gives them."""
    out = dict(module.named_parameters())
    out.update(module.named_buffers())
    return out


def _swap_weights(proto, module: nn.Module, stage: str):
    """A copy of ``proto`` (exported unoptimized, so its initializers are exactly the module's
    parameters/buffers by name) carrying ``module``'s tensors."""
    import onnx
    from onnx import numpy_helper

    state = _named_tensors(module)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for init in out.graph.initializer:
        t = state.get(init.name)
        if t is None:
            raise ExportError(f"stage {stage}: graph constant {init.name!r} is not a parameter or "
                              "buffer of the stage module; cannot reuse the graph")
        arr = t.detach().cpu().numpy()
        if tuple(arr.shape) != tuple(init.dims) or numpy_helper.to_array(init).dtype != arr.dtype:
            raise ExportError(f"stage {stage}: {init.name} is {arr.dtype}{list(arr.shape)}, the "
                              f"reused graph holds {list(init.dims)}")
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return out


def _optimize(proto):
    """Constant folding + dead-node removal (as the whole-model export), after the weights are in."""
    from onnxscript import ir

    from .onnx_export import _light_optimize

    model = ir.serde.deserialize_model(proto)
    _light_optimize(model)
    return ir.serde.serialize_model(model)


STAGE_CHECK_TOL = {"float32": 1e-4, "float16": 3e-2, "bfloat16": 3e-2}


def _verify_stage(proto, module, args, input_names, dtype: str, stage: str) -> float | None:
    """Run the stage graph in ONNX Runtime on the export example and compare with the module;
    a gross-error guard (wrong weights, wrong reuse), not the accuracy test. Returns the worst
    relative error, or None when ONNX Runtime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import numpy as np

    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, (tuple, list)) else (want,)
    # bfloat16 graphs hold hieramamba nodes (Bf16Conv, Bf16FeedForward, …), which only the native library runs.
    opts = ort_session_options(ort, 1, scan_kernel="native" if dtype == "bfloat16" else "graph")
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {n: a.detach().cpu().numpy() for n, a in zip(input_names, args)}
    wanted = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    worst = 0.0
    for name, g, w in zip(sess.get_outputs(), got, want):
        w = w.detach().cpu().numpy()
        if w.dtype == bool:
            if not np.array_equal(g, w):
                raise ExportError(f"stage {stage}: output {name.name} differs from the module")
            continue
        w = w.astype(np.float64)
        err = float(np.abs(g.astype(np.float64) - w).max() / max(np.abs(w).max(), 1e-6))
        worst = max(worst, err)
    if worst > STAGE_CHECK_TOL[dtype]:
        raise ExportError(f"stage {stage}: ONNX Runtime differs from the module by {worst:.2e} "
                          f"(relative, tolerance {STAGE_CHECK_TOL[dtype]:g}); the export is wrong")
    return worst


def export_bundle(model, opt, out_dir, dtype="float16", opset: int = 18, stages=None, log=None) -> Path:
    """Export every stage of ``model`` to ``out_dir`` (must not exist) with a manifest.

    ``dtype``: ``"float16"`` (default: the runtime's default precision; fp32 islands as in the
    whole-model export), ``"float32"`` or ``"bfloat16"`` (float32 graphs whose large matrix
    products take bfloat16 operands, ``hieramamba.export.bf16``: for CPUs with AVX512-BF16;
    needs ``libhieramamba_plugins`` to export and to run). ``model`` is not modified. Stages
    whose module has the structure of an already exported one (``structure_key``: the per-level stages of
    equal-sized levels) reuse its graph with their own weights instead of being traced again,
    which cuts the export time several-fold; every stage, reused or not, is run once in ONNX
    Runtime against its module (``STAGE_CHECK_TOL``). ``stages``: export only these instances
    (a partial folder for tests; the runtime refuses it). ``log``: a callable taking one line."""
    import onnx

    from . import scan_node
    from .bf16 import bf16_graph
    from .onnx_export import check_opset, fp32_islands

    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.float32}.get(dtype)
    if tdtype is None:
        raise ExportError(f"bundle dtype must be 'float32', 'float16' or 'bfloat16', got {dtype!r}")
    check_opset(opset)
    if dtype == "bfloat16":
        from hieramamba.native_library import load_native_library

        load_native_library(required=True)  # its kernels check every stage: say so first
    out = Path(out_dir)
    if out.exists():
        raise ExportError(f"bundle folder {out} already exists; remove it or choose another")
    check_output_location(out, "bundle folder", folder=True)  # before minutes of export, not after
    if next(model.parameters()).dtype != tdtype:
        model = copy.deepcopy(model).to(tdtype)
    model = model.eval()
    plan = plan_from_model(model, opt)
    log = log or (lambda line: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out, folder=True)
    files = {}
    traced = {}  # structure key -> (stage name, unoptimized proto)
    islands = fp32_islands if dtype == "float16" else contextlib.nullcontext
    t_all = time.perf_counter()
    try:
        for name, module, args, dyn, ins, outs in _stage_specs(model, plan, tdtype):
            if stages is not None and name not in stages:
                continue
            t0 = time.perf_counter()
            key = structure_key(module)
            with islands(), torch.no_grad():
                if key in traced:
                    source, proto = traced[key]
                    proto = _swap_weights(proto, module, name)
                    how = f"graph of {source}"
                else:
                    proto = _trace_stage(module, args, dyn, ins, outs, opset, name)
                    traced[key] = (name, proto)
                    how = "traced"
                proto = _optimize(proto)
                if dtype == "bfloat16":
                    proto, _ = bf16_graph(proto)
                err = _verify_stage(proto, module, args, ins, dtype, name)
            fname = f"{name}.onnx"
            onnx.save_model(proto, str(tmp / fname))
            files[name] = StageFile(fname, file_sha256(tmp / fname), tuple(ins), tuple(outs),
                                    len(scan_node.scan_nodes(proto)))
            check = "not verified (no onnxruntime)" if err is None else f"max rel err vs module {err:.1e}"
            log(f"{name}: {how}, {check}, {time.perf_counter() - t0:.1f} s")
        BundleManifest(dtype=dtype, opset=opset, plan=plan, stages=files,
                       export_seconds=round(time.perf_counter() - t_all, 1)).write(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _trace_stage(module, args, dyn, ins, outs, opset, name):
    """Unoptimized export: initializers stay the module's parameters by name (for reuse);
    scans become HydraScan nodes plus the local function."""
    from . import scan_node

    with scan_node.custom_scan_nodes() as rec, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(module, args, dynamo=True, opset_version=opset,
                                     dynamic_shapes=dyn, input_names=ins, output_names=outs,
                                     verbose=False, optimize=False)
        except Exception as exc:
            raise ExportError(f"stage {name}: torch.onnx export failed: {type(exc).__name__}: "
                              f"{str(exc)[:1500]}") from exc
    proto = prog.model_proto
    sig = scan_node.common_signature(rec.signatures)
    if sig is not None:
        scan_node.attach_function(proto, scan_node.build_function(sig, opset))
    return proto


def cache_dir() -> Path:
    """Where derived artifacts (bundles of the embedded default) are cached:
    ``$HIERAMAMBA_CACHE`` or ``~/.cache/hieramamba``."""
    return Path(os.environ.get("HIERAMAMBA_CACHE") or Path.home() / ".cache" / "hieramamba")


def _valid_bundle(folder: Path) -> str | None:
    """None when ``folder`` holds a complete, intact bundle, else why not."""
    from hieramamba.errors import CheckpointError

    try:
        BundleManifest.read(folder).verify_stage_files(folder)
    except CheckpointError as exc:
        return str(exc)
    return None


def default_bundle(dtype: str = "float16", log=None) -> Path:
    """The runtime bundle of the embedded default (``hieramamba.checkpoint.load_default``),
    exported on first use into ``cache_dir()/bundles`` and reused afterwards. The folder name
    holds a hash of the weights file, the package version and the bundle format, so a new
    default or a new exporter never reuses a stale bundle. A cached bundle is verified (manifest
    and every stage file's hash) before use; a corrupt one is exported again. Concurrent
    processes take turns on a lock file: one exports, the others then use its bundle."""
    import fcntl
    import hashlib

    import hieramamba
    from hieramamba.artifacts import check_output_folder
    from hieramamba.checkpoint import default_experiment_dir, load_default

    log = log or (lambda line: None)
    folder = default_experiment_dir()
    h = hashlib.sha256()
    for part in (folder / "models" / "last.pth", folder / "opt.yaml"):
        h.update(part.read_bytes())
    h.update(f"{hieramamba.__version__}|{BUNDLE_SCHEMA}/{BUNDLE_VERSION}|{SCAN_OP.version}".encode())
    bundles = cache_dir() / "bundles"
    out = bundles / f"{folder.name}-{dtype}-{h.hexdigest()[:16]}"
    if out.is_dir() and _valid_bundle(out) is None:
        return out
    check_output_folder(bundles, "the cache folder ($HIERAMAMBA_CACHE or ~/.cache/hieramamba)")
    bundles.mkdir(parents=True, exist_ok=True)
    with open(bundles / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes (also if this process dies)
        if out.is_dir():
            why = _valid_bundle(out)
            if why is None:  # another process exported it meanwhile
                return out
            log(f"the cached bundle {out} is unusable ({why}); exporting it again")
            shutil.rmtree(out)
        model, opt = load_default()
        log(f"exporting the default's {dtype} bundle to {out} (once)")
        export_bundle(model, opt, out, dtype=dtype, log=log)
    return out
