"""Stage graphs of the chunked runtime (DESIGN §4) and the bundle that holds them.

A bundle is a folder: ``manifest.json`` (format version, plan, dtype, opset, mask semantics,
scan op version, every stage's file and I/O names) and one ONNX file per stage:

==============  ==========================================================================
``text``        text (Nq, Dt, Tt), text_mask → text_enc, text_enc_mask
``front``       video window, mask, text_enc, text_enc_mask, pe_start, pe_total → level-0 input
``pre{l}``      level tokens window, mask, n_valid, slot_offset → seq, seq_mask, z and the
                seven scan inputs (x, dt_f, dt_b, B_f, C_f, B_b, C_b) of the window
``scan{l}``     scan inputs + state_f0, state_b0, c_f_prev, c_b_next → y (with the boundary
                terms of the one-step shift), state_f, state_b
``post{l}``     seq, seq_mask, y, x, z → fused1
``local{l}``    (windowed levels) fused1 window, seq_mask → anchors, tokens of the window
``gattn_in{l}`` (global-attention levels) fused1, seq_mask of the level → per-head q, k, v
``gattn_rows{l}`` q rows block, k, v, seq_mask → attention output of those rows
``gattn_out{l}`` fused1, seq_mask, attention output → anchors, tokens
``heads``       tokens window, mask, text_enc, text_enc_mask, level_scale → logits, offsets
                (one graph for every level; the level's scale is ``plan["head_scales"][l]``)
==============  ==========================================================================

Every stage is a thin wrapper that calls the model's own modules (the same calls as
``hieramamba.runtime.torch_backend``). The ``scan{l}`` stages hold the ``HydraScan`` node with its
model-local function (DESIGN §3): ONNX Runtime runs the function body, TensorRT maps the node to
the plugin. Crops happen on the host.
Writing is atomic: the bundle is built in a temporary sibling folder and renamed at the end.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from hieramamba.errors import ExportError

from hieramamba.runtime.bundle import BUNDLE_FORMAT, SCAN_OP_VERSION, ort_session_options


class TextStage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text, text_mask):
        return self.model.encode_text(text, text_mask)


class FrontStage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, vid, mask, text, text_mask, pe_start, pe_total):
        vid, mask = self.model.fuse_early(vid, mask, text, text_mask)
        return self.model.vid_net.embed(vid, mask, pe_window=(pe_start, pe_total))[0]


class PreStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, tokens, mask, n_valid, slot_offset):
        seq, seq_mask, _ = self.block.interleave(tokens, mask, n_valid, slot_offset)
        parts = self.block.global_encoder.scan_inputs(self.block.norm_global(seq))
        return (seq, seq_mask) + tuple(parts)


class ScanStage(nn.Module):
    def __init__(self, hydra):
        super().__init__()
        self.hydra = hydra

    def forward(self, x, dt_f, dt_b, b_f, c_f, b_b, c_b, state_f0, state_b0, c_f_prev, c_b_next):
        import hieramamba.ops as ops  # looked up at call time: the export patches it
        from hieramamba.runtime.torch_backend import add_boundary_terms

        h = self.hydra
        y, sf, sb = ops.hydra_scan(x, dt_f, dt_b, h.scan_A(), h.dt_bias, b_f, c_f, b_b, c_b,
                                   state_f0, state_b0, chunk_size=h.chunk_size)
        return add_boundary_terms(y, state_f0, c_f_prev, state_b0, c_b_next), sf, sb


class PostStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, seq, seq_mask, y, x, z):
        out = self.block.global_encoder.scan_output(y, x, z)
        return self.block.mix_global(seq, seq_mask, out)


class LocalStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask):
        nb = fused1.shape[1] // 3
        return self.block.split(self.block.mix_local(fused1, seq_mask), nb, 2 * nb)


class GlobalAttnInStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask):
        return self.block.global_attention_inputs(fused1, seq_mask)


class GlobalAttnRowsStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, q, k, v, seq_mask):
        return self.block.global_attention_rows(q, k, v, seq_mask)


class GlobalAttnOutStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask, attn):
        nb = fused1.shape[1] // 3
        return self.block.split(self.block.mix_local_from_attention(fused1, seq_mask, attn), nb, 2 * nb)


class HeadsStage(nn.Module):
    """Late fusion + heads, for every level: the level enters only through its regression
    scale, a graph input (``level_scale``, the ``plan["head_scales"]`` value), so a bundle holds
    these weights once instead of once per level."""

    def __init__(self, model):
        super().__init__()
        self.fusion, self.cls_head = model.fusion, model.cls_head
        # The regression tower without the per-level scales (a shallow copy sharing the conv/norm
        # submodules): the scales are inputs, not weights, of this graph.
        self.reg_tower = copy.copy(model.reg_head)
        self.reg_tower._modules = {k: v for k, v in model.reg_head._modules.items() if k != "scales"}

    def forward(self, tokens, mask, text, text_mask, level_scale):
        x, xm = self.fusion(tokens, mask, text, text_mask)
        return self.cls_head(x, xm), self.reg_tower.with_scale(x, xm, level_scale)


def _stage_specs(model, dtype):
    """(name, module, example args, dynamic shapes, input names, output names) per stage."""
    from torch.export import Dim

    B, Tt = Dim("batch", min=1), Dim("text", min=1)
    f = lambda *s: torch.randn(*s, dtype=dtype)  # noqa: E731
    bm = lambda *s: torch.ones(*s, dtype=torch.bool)  # noqa: E731
    i64 = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    nq, tt, t = 2, 5, 12
    dt_in, dv = model.text_in_dim, model.vid_in_dim
    d = model.vid_net.embd_fc.conv.out_channels
    with torch.no_grad():
        text_enc, text_enc_mask = model.encode_text(f(nq, dt_in, tt), bm(nq, 1, tt))
    Tt1 = Dim("text1", min=2)
    specs = [("text", TextStage(model), (f(nq, dt_in, tt), bm(nq, 1, tt)),
              ({0: B, 2: Tt}, {0: B, 2: Tt}), ["text", "text_mask"], ["text_enc", "text_enc_mask"])]
    bb = nq if model.early_fusion else 1
    text_dyn = ({0: B, 2: Tt1}, {0: B, 2: Tt1})
    vid_w = 2 * t * model.vid_stride
    specs.append(("front", FrontStage(model),
                  (f(1, dv, vid_w), bm(1, 1, vid_w), text_enc, text_enc_mask, i64(0), i64(100)),
                  ({2: Dim("vtime", min=2) * model.vid_stride if model.vid_stride > 1 else Dim("vtime", min=2)},
                   {2: Dim("vtime", min=2) * model.vid_stride if model.vid_stride > 1 else Dim("vtime", min=2)})
                  + text_dyn + (None, None),
                  ["video", "video_mask", "text_enc", "text_enc_mask", "pe_start", "pe_total"], ["x"]))
    TB = B if model.early_fusion else None
    for lvl, blk in enumerate(model.vid_net.branch):
        hyd = blk.global_encoder
        e, h, p, n, g = hyd.d_inner, hyd.nheads, hyd.headdim, hyd.d_state, hyd.ngroups
        # Plain (not even-only) token length: the last level of a padded video can be odd.
        tokd = {0: TB, 2: Dim("tok", min=2)} if TB is not None else {2: Dim("tok", min=2)}
        S = Dim("slots", min=1) * 3
        # Every level's Hydra part runs in chunks; only the local encoder differs.
        specs.append((f"pre{lvl}", PreStage(blk), (f(bb, d, t), bm(bb, 1, t), i64(27), i64(0)),
                      (tokd, tokd, None, None),
                      ["tokens", "mask", "n_valid", "slot_offset"],
                      ["seq", "seq_mask", "z", "x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b"]))
        L = 3 * t // 2
        scan_args = (f(bb, L, h, p), f(bb, L, h), f(bb, L, h), f(bb, L, g, n), f(bb, L, g, n),
                     f(bb, L, g, n), f(bb, L, g, n), torch.randn(bb, h, p, n), torch.randn(bb, h, p, n),
                     f(bb, g, n), f(bb, g, n))
        SL = Dim("slen", min=2)
        bt = {0: B, 1: SL}
        specs.append((f"scan{lvl}", ScanStage(hyd), scan_args,
                      (bt, bt, bt, bt, bt, bt, bt, {0: B}, {0: B}, {0: B}, {0: B}),
                      ["x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b", "state_f0", "state_b0",
                       "c_f_prev", "c_b_next"], ["y", "state_f", "state_b"]))
        specs.append((f"post{lvl}", PostStage(blk),
                      (f(bb, L, d), bm(bb, L, 1), f(bb, L, h, p), f(bb, L, h, p), f(bb, L, e)),
                      (bt, bt, bt, bt, bt), ["seq", "seq_mask", "y", "x", "z"], ["fused1"]))
        if blk.local_encoder.attn.attn.window_size > 0:
            specs.append((f"local{lvl}", LocalStage(blk), (f(bb, L, d), bm(bb, L, 1)),
                          ({0: B, 1: S}, {0: B, 1: S}), ["fused1", "seq_mask"], ["anchors", "tokens"]))
        else:
            mha = blk.local_encoder.attn.attn
            nh, hdim = mha.n_heads, mha.embd_dim // mha.n_heads
            R = Dim("rows", min=2)
            qkv_dyn = {0: B, 2: S}
            specs.append((f"gattn_in{lvl}", GlobalAttnInStage(blk), (f(bb, L, d), bm(bb, L, 1)),
                          ({0: B, 1: S}, {0: B, 1: S}), ["fused1", "seq_mask"], ["q", "k", "v"]))
            specs.append((f"gattn_rows{lvl}", GlobalAttnRowsStage(blk),
                          (f(bb, nh, 5, hdim), f(bb, nh, L, hdim), f(bb, nh, L, hdim), bm(bb, L, 1)),
                          ({0: B, 2: R}, qkv_dyn, qkv_dyn, {0: B, 1: S}),
                          ["q", "k", "v", "seq_mask"], ["attn"]))
            specs.append((f"gattn_out{lvl}", GlobalAttnOutStage(blk),
                          (f(bb, L, d), bm(bb, L, 1), f(bb, nh, L, hdim)),
                          ({0: B, 1: S}, {0: B, 1: S}, qkv_dyn), ["fused1", "seq_mask", "attn"],
                          ["anchors", "tokens"]))
    HT = Dim("htime", min=2)
    hd = {0: TB, 2: HT} if TB is not None else {2: HT}
    specs.append(("heads", HeadsStage(model),
                  (f(bb, d, t), bm(bb, 1, t), text_enc, text_enc_mask, torch.tensor(1.5)),
                  (hd, hd) + text_dyn + (None,), ["tokens", "mask", "text_enc", "text_enc_mask", "level_scale"],
                  ["logits", "offsets"]))
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


STAGE_CHECK_TOL = {"float32": 1e-4, "float16": 3e-2}


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
    opts = ort_session_options(ort, 1)
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
    whole-model export) or ``"float32"``. ``model`` is not modified. Stages whose module has
    the structure of an already exported one (``structure_key``: the per-level stages of
    equal-sized levels) reuse its graph with their own weights instead of being traced again,
    which cuts the export time several-fold; every stage, reused or not, is run once in ONNX
    Runtime against its module (``STAGE_CHECK_TOL``). ``log``: a callable taking one line."""
    import onnx

    from hieramamba.runtime.plan import plan_from_model

    from . import scan_node
    from .onnx_export import fp32_islands

    tdtype = {"float32": torch.float32, "float16": torch.float16}.get(dtype)
    if tdtype is None:
        raise ExportError(f"bundle dtype must be 'float32' or 'float16', got {dtype!r}")
    out = Path(out_dir)
    if out.exists():
        raise ExportError(f"bundle folder {out} already exists; remove it or choose another")
    if next(model.parameters()).dtype != tdtype:
        model = copy.deepcopy(model).to(tdtype)
    model = model.eval()
    log = log or (lambda line: None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    manifest = {"format": BUNDLE_FORMAT, "scan_op_version": SCAN_OP_VERSION, "dtype": dtype,
                "opset": opset, "mask_semantics": model.mask_semantics,
                "plan": plan_from_model(model, opt), "stages": {}}
    traced = {}  # structure key -> (stage name, unoptimized proto)
    islands = fp32_islands if dtype == "float16" else contextlib.nullcontext
    t_all = time.perf_counter()
    try:
        for name, module, args, dyn, ins, outs in _stage_specs(model, tdtype):
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
                err = _verify_stage(proto, module, args, ins, dtype, name)
            fname = f"{name}.onnx"
            onnx.save_model(proto, str(tmp / fname))
            manifest["stages"][name] = {"file": fname, "inputs": ins, "outputs": outs,
                                        "hydra_scan_nodes": len(scan_node.scan_nodes(proto))}
            check = "not verified (no onnxruntime)" if err is None else f"max rel err vs module {err:.1e}"
            log(f"{name}: {how}, {check}, {time.perf_counter() - t0:.1f} s")
        manifest["export_seconds"] = round(time.perf_counter() - t_all, 1)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
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


def default_bundle(dtype: str = "float16", log=None) -> Path:
    """The runtime bundle of the embedded default (``hieramamba.checkpoint.load_default``),
    exported on first use into ``cache_dir()/bundles`` and reused afterwards. The folder name
    holds a hash of the weights file, the package version and the bundle format, so a new
    default or a new exporter never reuses a stale bundle."""
    import hashlib

    import hieramamba
    from hieramamba.checkpoint import default_experiment_dir, load_default

    folder = default_experiment_dir()
    h = hashlib.sha256()
    for part in (folder / "models" / "last.pth", folder / "opt.yaml"):
        h.update(part.read_bytes())
    h.update(f"{hieramamba.__version__}|{BUNDLE_FORMAT}|{SCAN_OP_VERSION}".encode())
    out = cache_dir() / "bundles" / f"{folder.name}-{dtype}-{h.hexdigest()[:16]}"
    if not (out / "manifest.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        model, opt = load_default()
        (log or (lambda line: None))(f"exporting the default's {dtype} bundle to {out} (once)")
        try:
            export_bundle(model, opt, out, dtype=dtype, log=log)
        except ExportError:
            if (out / "manifest.json").is_file():  # a concurrent process finished first
                return out
            raise
    return out
