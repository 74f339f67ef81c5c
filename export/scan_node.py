"""The HydraScan ONNX node and its model-local function (DESIGN §3).

On the export path every ``hydra_scan`` call becomes one node ``hieramamba::HydraScan`` with the
attributes TensorRT's ONNX parser and our plugin read (``plugins/hydra_scan/README.md``):
``chunk_size``, ``has_initial_states``, ``plugin_version="1"``, ``plugin_namespace="hieramamba"``.
The node is emitted with ``torch.onnx.ops.symbolic_multi_out`` (the custom-translation-table
route has no schema for a custom domain and breaks the exporter's inliner, DESIGN §3).

The portable body is not written by hand: ``hydra_scan_reference`` (the exportable chunked SSD,
the only place the math lives) is exported on its own with dynamic batch and time, and its graph
becomes a ``FunctionProto`` of the same domain and name, built against the model's opset. The
body is traced with the dtypes and static sizes (H, P, G, N, chunk_size, with/without states)
seen at the model's call sites, so its casts (fp32 islands, DESIGN §2) match the node's inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from typing import Optional

import torch

from hieramamba.artifacts import SCAN_OP
from hieramamba.errors import ExportError
from hieramamba.ops import scan_override
from hieramamba.ops.hydra_scan import compute_dtype, hydra_scan_reference

# The node's identity (hieramamba.artifacts.SCAN_OP, DESIGN §3) under the names ONNX uses.
DOMAIN, OP_TYPE = SCAN_OP.domain, SCAN_OP.op_type
PLUGIN_VERSION, PLUGIN_NAMESPACE = SCAN_OP.version, SCAN_OP.domain
FUNCTION_VERSION = SCAN_OP.function_version  # opset version of the "hieramamba" domain

INPUT_NAMES = ("x", "dt_f", "dt_b", "A", "dt_bias", "B_f", "C_f", "B_b", "C_b", "state_f0",
               "state_b0")
OUTPUT_NAMES = ("y", "state_f", "state_b")


@dataclasses.dataclass(frozen=True)
class ScanSignature:
    """What the traced function body depends on; every node of one graph must share it."""
    x_dtype: torch.dtype
    dt_dtype: torch.dtype
    A_dtype: torch.dtype
    dt_bias_dtype: torch.dtype
    H: int
    P: int
    G: int
    N: int
    chunk_size: int
    has_states: bool

    def describe(self) -> str:
        return (f"x {self.x_dtype}, dt {self.dt_dtype}, A {self.A_dtype}, dt_bias "
                f"{self.dt_bias_dtype}, H={self.H}, P={self.P}, G={self.G}, N={self.N}, "
                f"chunk_size={self.chunk_size}, states={'yes' if self.has_states else 'no'}")


class _Recorder:
    def __init__(self):
        self.signatures: list[ScanSignature] = []


_ACTIVE: Optional[_Recorder] = None


def _static(v, what) -> int:
    if isinstance(v, torch.SymInt):
        raise ExportError(f"HydraScan export: {what} must be static, got a symbolic size {v}")
    return int(v)


def symbolic_hydra_scan(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0=None,
                        state_b0=None, chunk_size: int = 256):
    """Stands in for ``hieramamba.ops.hydra_scan`` while exporting: emits the HydraScan node.

    Outside ``torch.onnx`` tracing, ``torch.onnx.ops.symbolic_multi_out`` returns placeholder
    zeros, so this must only be active inside ``custom_scan_nodes()``."""
    if (state_f0 is None) != (state_b0 is None):
        # The plugin takes both initial states or neither (README "Optional states").
        ref = state_f0 if state_f0 is not None else state_b0
        zeros = torch.zeros_like(ref)
        state_f0 = zeros if state_f0 is None else state_f0
        state_b0 = zeros if state_b0 is None else state_b0
    has_states = state_f0 is not None
    # The kernels take dt_f, dt_b, A and dt_bias in one dtype, fp32 or x's (plugins/hydra_scan
    # README). The half model has A in fp32 (-exp(A_log.float())) and the others in half: a
    # mixed group goes to fp32, which is exact and what the scan computes in anyway.
    if len({t.dtype for t in (dt_f, dt_b, A, dt_bias)}) > 1:
        dt_f, dt_b, A, dt_bias = (t.float() for t in (dt_f, dt_b, A, dt_bias))
    bsz, L, H, P = x.shape
    G, N = B_f.shape[2], B_f.shape[3]
    sig = ScanSignature(x.dtype, dt_f.dtype, A.dtype, dt_bias.dtype, _static(H, "H"),
                        _static(P, "P"), _static(G, "G"), _static(N, "N"), int(chunk_size),
                        has_states)
    if _ACTIVE is not None:
        _ACTIVE.signatures.append(sig)
    sd = compute_dtype(x.dtype)
    inputs = [x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b]
    if has_states:
        inputs += [state_f0.to(sd), state_b0.to(sd)]
    y, sf, sb = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{OP_TYPE}",
        inputs,
        attrs={
            "chunk_size": int(chunk_size),
            "has_initial_states": int(has_states),
            "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE,
        },
        dtypes=[x.dtype, sd, sd],
        shapes=[list(x.shape), [bsz, H, P, N], [bsz, H, P, N]],
        version=FUNCTION_VERSION,
    )
    return y, sf, sb


@contextlib.contextmanager
def custom_scan_nodes():
    """Within this context every ``hydra_scan`` call (wherever the model makes it:
    ``hieramamba.ops.scan_override``) emits the HydraScan node. Yields a recorder whose
    ``signatures`` lists each call's ScanSignature."""
    global _ACTIVE
    rec, prev = _Recorder(), _ACTIVE
    try:
        _ACTIVE = rec
        with scan_override(symbolic_hydra_scan):
            yield rec
    finally:
        _ACTIVE = prev


def common_signature(signatures) -> Optional[ScanSignature]:
    if not signatures:
        return None
    first = signatures[0]
    for s in signatures[1:]:
        if s != first:
            raise ExportError(
                "HydraScan export: all scan nodes of one graph must share dtypes, sizes and "
                f"chunk_size (one local function serves them all); got {first.describe()} and "
                f"{s.describe()}")
    return first


class _ScanOnly(torch.nn.Module):
    def __init__(self, chunk_size):
        super().__init__()
        self.chunk_size = chunk_size

    def forward(self, x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b):
        return hydra_scan_reference(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
                                    chunk_size=self.chunk_size)


class _ScanOnlyWithStates(_ScanOnly):
    def forward(self, x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0):
        return hydra_scan_reference(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0,
                                    state_b0, chunk_size=self.chunk_size)


def _example_inputs(sig: ScanSignature, bsz=2, L=37):
    g = torch.Generator().manual_seed(0)
    H, P, G, N = sig.H, sig.P, sig.G, sig.N
    sd = compute_dtype(sig.x_dtype)

    def r(*shape, dtype):
        return torch.randn(*shape, generator=g).to(dtype)

    args = [r(bsz, L, H, P, dtype=sig.x_dtype), r(bsz, L, H, dtype=sig.dt_dtype),
            r(bsz, L, H, dtype=sig.dt_dtype), -torch.rand(H, generator=g).to(sig.A_dtype),
            r(H, dtype=sig.dt_bias_dtype)] + [r(bsz, L, G, N, dtype=sig.x_dtype) for _ in range(4)]
    if sig.has_states:
        args += [r(bsz, H, P, N, dtype=sd), r(bsz, H, P, N, dtype=sd)]
    return args


def build_function(sig: ScanSignature, opset: int):
    """Export ``hydra_scan_reference`` for ``sig`` and wrap its graph as the local function
    ``hieramamba::HydraScan`` (inputs in the node's order, attributes declared but the body
    is specialised to ``sig.chunk_size``). Returns an ``onnx.FunctionProto``."""
    import onnx
    from onnx import helper

    n_in = 11 if sig.has_states else 9
    args = _example_inputs(sig)
    B = torch.export.Dim("B", min=1)
    L = torch.export.Dim("L", min=2)
    per_input = [{0: B, 1: L}, {0: B, 1: L}, {0: B, 1: L}, None, None] + [{0: B, 1: L}] * 4
    if sig.has_states:
        per_input += [{0: B}, {0: B}]
    names = list(INPUT_NAMES[:n_in])
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(
                (_ScanOnlyWithStates if sig.has_states else _ScanOnly)(sig.chunk_size), tuple(args), dynamo=True, opset_version=opset,
                dynamic_shapes=tuple(per_input), input_names=names,
                output_names=list(OUTPUT_NAMES), verbose=False, optimize=True)
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"could not export the portable HydraScan body for "
                              f"{sig.describe()}: {type(exc).__name__}: {exc}") from exc
    graph = prog.model_proto.graph
    body = []
    # Initializers become Constant nodes (a function has none).
    for init in graph.initializer:
        body.append(helper.make_node("Constant", [], [init.name], value=init))
    body.extend(graph.node)
    graph_inputs = [i.name for i in graph.input]
    if graph_inputs != names:
        raise ExportError(f"portable HydraScan body: unexpected inputs {graph_inputs}, expected {names}")
    outputs = [o.name for o in graph.output]
    opset_imports = [op for op in prog.model_proto.opset_import]
    for op in opset_imports:
        if op.domain == "" and op.version != opset:
            raise ExportError(f"portable HydraScan body was built with opset {op.version}, "
                              f"the model uses {opset}")
    fn = helper.make_function(
        DOMAIN, OP_TYPE, names, outputs, list(body), opset_imports,
        attributes=["chunk_size", "has_initial_states", "plugin_version", "plugin_namespace"])
    # The traced body's own output names may differ from y/state_f/state_b: rename via Identity.
    if outputs != list(OUTPUT_NAMES):
        ren = {o: f"{o}__fn_out" for o in outputs}
        for node in fn.node:
            node.output[:] = [ren.get(o, o) for o in node.output]
            node.input[:] = [ren.get(i, i) for i in node.input]
        for o, want in zip(outputs, OUTPUT_NAMES):
            fn.node.append(helper.make_node("Identity", [ren[o]], [want]))
        del fn.output[:]
        fn.output.extend(OUTPUT_NAMES)
    return fn


def attach_function(model_proto, fn) -> None:
    """Append ``fn`` to the model's local functions and import its domain."""
    from onnx import helper

    for f in model_proto.functions:
        if f.domain == fn.domain and f.name == fn.name:
            raise ExportError(f"model already has a local function {fn.domain}::{fn.name}")
    model_proto.functions.append(fn)
    if not any(op.domain == DOMAIN for op in model_proto.opset_import):
        model_proto.opset_import.append(helper.make_opsetid(DOMAIN, FUNCTION_VERSION))


def scan_nodes(model_proto):
    return [n for n in model_proto.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
