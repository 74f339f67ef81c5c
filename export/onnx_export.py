"""ONNX export of HieraMamba (whole model) and of any module that calls HydraScan (DESIGN §3).

Two layers:

* ``export_module`` — generic: export an ``nn.Module`` with given dynamic axes through the
  ``torch.onnx`` dynamo exporter, every ``hydra_scan`` call as a ``hieramamba::HydraScan`` node
  plus the model-local function carrying its portable body (or, ``portable=True``, that function
  inlined), optionally as a strongly typed fp16 graph; checks the result with
  ``onnx.checker`` (full check). The runtime's stage export builds on this.
* ``export_model`` — the whole grounding network per the official eval protocol: one video,
  any number of queries, padding to the official multiple inside the graph, per-level outputs,
  plus the manifest JSON beside the file.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from hieramamba.errors import ExportError

from . import scan_node

class _NoTorchvisionNotice(logging.Filter):
    """The exporter's registry warns once per torchvision op when torchvision is absent (dozens of
    lines per export); this project exports no torchvision op. Only those lines are dropped."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(_NoTorchvisionNotice())

MIN_OPSET = 18  # the dynamo exporter's minimum; also first opset with ReduceMean axes as input
DEFAULT_OPSET = 18
SUPPORTED_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# Every headdim P and dstate N up to 128 fits the CUDA kernel's shared-memory plan for every dtype
# (plugins/hydra_scan README "CUDA kernel"; checked by hydraScanLogicTest).
MAX_PLUGIN_DIM = 128


def dtype_name(dtype) -> str:
    for k, v in SUPPORTED_DTYPES.items():
        if v == dtype or k == dtype or (k == "float16" and dtype == "fp16") or (
                k == "float32" and dtype == "fp32"):
            return k
    raise ExportError(f"export dtype must be one of {sorted(SUPPORTED_DTYPES)} (or fp32/fp16), "
                      f"got {dtype!r}")


def check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ExportError(f"opset must be an int, got {opset!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: the export needs opset >= {MIN_OPSET} "
                          "(torch.onnx dynamo exporter, ReduceMean/Split with axes inputs)")
    return opset


# ---------------------------------------------------------------------------------------------
# fp32 islands of the fp16 graph (DESIGN §2/§3, REFERENCE §13.8)
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def fp32_islands():
    """While exporting a half-precision module: channel LayerNorm statistics and softmax run in
    fp32 and are cast back. GatedRMSNorm, the AMP RMSNorm and the scan already compute in fp32.
    Eager behaviour outside the context is unchanged."""
    from hieramamba.modules import primitives

    orig_ln = primitives.ChannelLayerNorm.forward
    orig_softmax = F.softmax

    def ln_forward(self, x):
        if x.dtype not in (torch.float16, torch.bfloat16):
            return orig_ln(self, x)
        h = x.float()
        h = h - h.mean(dim=1, keepdim=True)
        h = h / torch.sqrt((h * h).mean(dim=1, keepdim=True) + self.eps)
        if self.weight is not None:
            h = h * self.weight.float() + self.bias.float()
        return h.to(x.dtype)

    def softmax(input, dim=None, _stacklevel=3, dtype=None):
        if dtype is None and input.dtype in (torch.float16, torch.bfloat16):
            return orig_softmax(input.float(), dim=dim).to(input.dtype)
        return orig_softmax(input, dim=dim, _stacklevel=_stacklevel, dtype=dtype)

    primitives.ChannelLayerNorm.forward = ln_forward
    F.softmax = softmax
    try:
        yield
    finally:
        primitives.ChannelLayerNorm.forward = orig_ln
        F.softmax = orig_softmax


# ---------------------------------------------------------------------------------------------
# Generic export
# ---------------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    model_proto: object  # onnx.ModelProto
    opset: int
    dtype: str
    portable: bool
    scan: Optional[scan_node.ScanSignature]
    n_scan_nodes: int
    seconds: float
    input_names: list = field(default_factory=list)
    output_names: list = field(default_factory=list)


def export_module(module: nn.Module, args: Sequence[torch.Tensor], *, dynamic_shapes,
                  input_names: Sequence[str], output_names: Sequence[str],
                  opset: int = DEFAULT_OPSET, portable: bool = False, dtype="float32",
                  check: bool = True) -> ExportResult:
    """Export ``module(*args)`` to ONNX (in memory; save with ``save_model``).

    ``dynamic_shapes``: as ``torch.export`` takes it (one entry per arg, ``{axis: Dim}``).
    ``dtype``: ``"float32"`` or ``"float16"``. For fp16 the module must already be in half
    precision and the args too (floating ones); the graph is then strongly typed with the fp32
    islands of ``fp32_islands`` and of the scan. ``portable``: inline the HydraScan function
    (standard ops only, no custom node). Every ``hydra_scan`` call the module makes becomes a
    node (``hieramamba.ops.scan_override``). Raises ExportError on an unsupported request or a
    failed export/check.
    """
    import onnx

    opset = check_opset(opset)
    dname = dtype_name(dtype)
    t0 = time.perf_counter()
    if module.training:
        raise ExportError("export needs the module in eval mode (dropout / drop-path are active "
                          "in training mode); call .eval() first")
    islands = fp32_islands() if dname == "float16" else contextlib.nullcontext()
    with scan_node.custom_scan_nodes() as rec, islands, \
            warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                module, tuple(args), dynamo=True, opset_version=opset,
                dynamic_shapes=dynamic_shapes, input_names=list(input_names),
                output_names=list(output_names), verbose=False, optimize=False)
            _light_optimize(prog.model)
        except ExportError:
            raise
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"torch.onnx export failed: {type(exc).__name__}: "
                              f"{str(exc)[:2000]}") from exc
    proto = prog.model_proto
    sig = scan_node.common_signature(rec.signatures)
    n_nodes = len(scan_node.scan_nodes(proto))
    if sig is not None:
        fn = scan_node.build_function(sig, opset)
        scan_node.attach_function(proto, fn)
    if portable:
        proto = inline_scan_function(proto)
    if check:
        check_graph(proto, expect_scan_nodes=0 if portable else n_nodes)
    return ExportResult(proto, opset, dname, portable, sig, n_nodes, time.perf_counter() - t0,
                        list(input_names), list(output_names))


def _light_optimize(ir_model) -> None:
    """Constant folding and dead-node removal only. The exporter's default optimizer also runs
    onnxscript's pattern rewriter, which took ~30 % of the export time here (profiled with
    py-spy) for no change that ONNX Runtime or TensorRT would not make themselves."""
    from onnxscript import optimizer

    optimizer.fold_constants_ir(ir_model)
    optimizer.remove_unused_nodes(ir_model)


def inline_scan_function(model_proto):
    """Replace every HydraScan node by its function body (standard ops only)."""
    import onnx
    from onnx import inliner

    out = inliner.inline_local_functions(model_proto)
    left = [n for n in out.graph.node if n.domain == scan_node.DOMAIN]
    if left:
        raise ExportError(f"inlining left {len(left)} {scan_node.DOMAIN} nodes in the graph")
    del out.functions[:]
    keep = [op for op in out.opset_import if op.domain != scan_node.DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def check_graph(model_proto, expect_scan_nodes: Optional[int] = None) -> None:
    """``onnx.checker`` full check, the HydraScan node attributes, no leftover custom domain in
    a portable graph. Raises ExportError."""
    import onnx

    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc
    nodes = scan_node.scan_nodes(model_proto)
    if expect_scan_nodes is not None and len(nodes) != expect_scan_nodes:
        raise ExportError(f"expected {expect_scan_nodes} HydraScan nodes, found {len(nodes)}")
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        want = {"plugin_version": scan_node.PLUGIN_VERSION.encode(),
                "plugin_namespace": scan_node.PLUGIN_NAMESPACE.encode()}
        for k, v in want.items():
            if attrs.get(k) != v:
                raise ExportError(f"HydraScan node {n.name}: attribute {k} is {attrs.get(k)!r}, "
                                  f"expected {v!r}")
        if "chunk_size" not in attrs or len(n.input) not in (9, 11) or "" in n.input:
            raise ExportError(f"HydraScan node {n.name}: needs chunk_size and 9 or 11 named "
                              f"inputs, has attributes {sorted(attrs)} and inputs {list(n.input)}")
    if nodes and not any(f.domain == scan_node.DOMAIN and f.name == scan_node.OP_TYPE
                         for f in model_proto.functions):
        raise ExportError("graph has HydraScan nodes but no local HydraScan function")


def save_model(model_proto, path) -> Path:
    """Write the graph atomically (a graph over 2 GiB keeps its weights in ``<file>.data``)."""
    import onnx

    from hieramamba.artifacts import write_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = model_proto.ByteSize()
    if size >= 2 ** 31 - 1:
        onnx.save_model(model_proto, path, save_as_external_data=True,
                        location=path.name + ".data")
    else:
        write_atomic(path, model_proto.SerializeToString())
    return path


# ---------------------------------------------------------------------------------------------
# Whole-model export
# ---------------------------------------------------------------------------------------------


class GroundingGraph(nn.Module):
    """The exported computation: one video, ``Nq`` queries, per-level head outputs.

    Inputs: ``video (1, Dv, T)``, ``video_mask (1, 1, T)`` bool, ``text (Nq, Dt, Tt)``,
    ``text_mask (Nq, 1, Tt)`` bool. The video is zero-padded inside the graph to the official
    multiple ``S = 2^(levels-1)·stride`` (REFERENCE §8.2) with the mask extended by False, so any
    ``T ≥ 1`` gives the official evaluator's result. Outputs per level ``l`` (``T_l =
    ceil(T/S)·S / (stride·2^l)``): ``logits_l (Nq, T_l)``, ``offsets_l (Nq, T_l, 2)``,
    ``masks_l (Nq, T_l)`` bool."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.pad_multiple = 2 ** (model.num_levels - 1) * model.vid_stride

    def forward(self, video, video_mask, text, text_mask):
        S = self.pad_multiple
        T = video.shape[-1]
        padded = (T + S - 1) // S * S
        # index_select + where instead of F.pad: pad bounds would need floor arithmetic the
        # exporter cannot prove; this keeps one symbol for the padded length.
        pos = torch.arange(padded, device=video.device)
        valid = pos < T
        src = torch.where(valid, pos, 0)
        video = torch.where(valid, video.index_select(2, src), 0.0).to(video.dtype)
        video_mask = video_mask.index_select(2, src) & valid
        logits, offsets, masks = self.model.forward_levels(video, video_mask, text, text_mask)
        out = []
        for l, o, m in zip(logits, offsets, masks):
            out += [l, o, m]
        return tuple(out)


def model_io_names(num_levels: int):
    inputs = ["video", "video_mask", "text", "text_mask"]
    outputs = []
    for l in range(num_levels):
        outputs += [f"logits_{l}", f"offsets_{l}", f"masks_{l}"]
    return inputs, outputs


def check_model_supported(model) -> None:
    """Raise ExportError for a model the exporter (or the TensorRT plugin) cannot serve."""
    from hieramamba.model import HieraMamba
    from hieramamba.modules.hydra import Hydra

    if not isinstance(model, HieraMamba):
        raise ExportError(f"export_model takes a hieramamba.model.HieraMamba, got "
                          f"{type(model).__name__}")
    hydras = [m for m in model.modules() if isinstance(m, Hydra)]
    for h in hydras:
        for what, size in (("mamba_dstate", h.d_state), ("headdim", h.headdim)):
            if size > MAX_PLUGIN_DIM:
                raise ExportError(f"unsupported config: {what}={size} exceeds the HydraScan "
                                  f"plugin's limit of {MAX_PLUGIN_DIM}")
        if h.nheads % h.ngroups:
            raise ExportError(f"unsupported config: {h.nheads} heads not divisible by "
                              f"{h.ngroups} groups")
    keys = {(h.d_inner, h.d_state, h.headdim, h.ngroups, h.chunk_size) for h in hydras}
    if len(keys) > 1:
        raise ExportError("unsupported config: Hydra layers of different sizes/chunk sizes "
                          f"({sorted(keys)}); one HydraScan function serves a graph")


def example_inputs(model, T: int = 300, nq: int = 2, text_len: int = 24, dtype=torch.float32,
                   seed: int = 0, valid: Optional[int] = None, text_valid=None):
    """Random inputs in the exported layout (video valid up to ``valid``, default T)."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(1, model.vid_in_dim, T, generator=g).to(dtype)
    n = T if valid is None else valid
    video_mask = (torch.arange(T) < n)[None, None]
    text = torch.randn(nq, model.text_in_dim, text_len, generator=g).to(dtype)
    if text_valid is None:
        text_valid = [max(1, text_len - (i % max(1, text_len // 2))) for i in range(nq)]
    text_mask = (torch.arange(text_len)[None] < torch.tensor(text_valid)[:, None])[:, None]
    return video, video_mask, text, text_mask


def export_model(model, *, opset: int = DEFAULT_OPSET, portable: bool = False, dtype="float32",
                 text_len: Optional[int] = None, example_T: Optional[int] = None, example_nq: int = 2,
                 max_T: int = 2 ** 20, check: bool = True) -> ExportResult:
    """Export the whole grounding network (``GroundingGraph``) with dynamic time, query and
    text axes. ``model`` is a HieraMamba in eval mode (fp32; it is copied to half for fp16).
    ``text_len`` is the export example's text length (default 24); it is a dynamic axis."""
    import copy

    check_model_supported(model)
    if model.training:
        raise ExportError("export needs the model in eval mode (dropout / drop-path are active "
                          "in training mode); call .eval() first")
    dname = dtype_name(dtype)
    tdt = SUPPORTED_DTYPES[dname]
    m = model if tdt == next(model.parameters()).dtype else copy.deepcopy(model).to(tdt)
    m = m.eval()
    graph = GroundingGraph(m).eval()
    text_len = text_len or 24
    if example_T is None:
        # Several padding blocks and not a multiple of them: with one block (e.g. 300 < 512 for
        # MAD) torch.export specialises the block count to 1 and bakes T ≤ 512 into the graph.
        example_T = 3 * graph.pad_multiple - 17
    args = example_inputs(m, example_T, example_nq, text_len, dtype=tdt)
    T = torch.export.Dim("T", min=1, max=max_T)
    Q = torch.export.Dim("Nq", min=1, max=4096)
    Tt = torch.export.Dim("Tt", min=1, max=4096)
    dyn = ({2: T}, {2: T}, {0: Q, 2: Tt}, {0: Q, 2: Tt})
    ins, outs = model_io_names(m.num_levels)
    return export_module(graph, args, dynamic_shapes=dyn, input_names=ins, output_names=outs,
                         opset=opset, portable=portable, dtype=dname, check=check)
