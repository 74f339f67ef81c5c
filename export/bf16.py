"""The ``bfloat16`` bundle dtype: float32 stage graphs whose large matrix products run with
bfloat16 operands and float32 accumulation (issue 20; docs/export.md "bfloat16 bundles").

``bf16_graph(proto)`` replaces, in a float32 graph,

* every eligible ``Conv`` by ``hieramamba::Bf16Conv(x, w_bf16, bias)``: a constant 3-D weight, one
  group, stride 1, dilation 1, "same" padding of an odd kernel (the bias is float32; zeros when
  the Conv had none);
* every eligible ``MatMul`` by ``hieramamba::Bf16MatMul(x, w_bf16)``: a constant 2-D right operand
  (the token-major projections of the Hydra blocks);

when the weight has at least ``MIN_WEIGHT_PRODUCT`` rows × columns (output × input channels).
The weights are rounded to bfloat16 (nearest even) once, here; the kernel rounds the activations
the same way. Everything else (norms, softmax, the scan, element-wise math, the attention products
of two activations) stays float32, so the only rounding is that of the product operands, and
each product is exact in float32.

The model's feed-forward blocks (1×1 conv C → 4C, exact GELU, 1×1 conv 4C → C) become one
``hieramamba::Bf16FeedForward(x, w1, b1, w2, b2)``: the same two products and roundings, but the
4C hidden activations stay in cache per time span instead of three passes over a (B, 4C, T)
tensor (calls of fewer than 4 spans of 48 steps still make one). Ego4D 2304 clips, 2 threads,
per run: 1 query 0.462 → 0.451 s, 8 queries 3.96 → 3.80 s.

Float32 kernels ride along (same math, fewer passes over memory; float32 rounding only): the
channel LayerNorm (nine ops and two MatMuls) → ``hieramamba::ChannelNorm``, torch's exact GELU
(five ops) → ``com.microsoft::Gelu``, and the depthwise convolutions (Hydra's 7-tap conv, the
3-tap q/k/v convs; ONNX Runtime's grouped Conv is slow on them) → ``hieramamba::DepthwiseConv``.

The hieramamba nodes have no ONNX function body: ONNX Runtime runs them with the kernels of
``libhieramamba_plugins`` (``plugins/cpu_kernels``: VDPBF16PS on CPUs with AVX512-BF16, a portable
loop with the same rounding elsewhere), which the runtime therefore requires for these bundles.
"""

from __future__ import annotations

import numpy as np

from hieramamba.artifacts import SCAN_OP

DOMAIN = SCAN_OP.domain
CONV_OP, MATMUL_OP, DEPTHWISE_OP, FEED_FORWARD_OP = "Bf16Conv", "Bf16MatMul", "DepthwiseConv", "Bf16FeedForward"
# Smaller products (the 1- and 2-channel head outputs: 384 × 3 weights at Ego4D's width) stay
# float32: they cost little and the rounding would buy nothing.
MIN_WEIGHT_PRODUCT = 32 * 32


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounded to nearest even (NaN stays NaN)."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to the nearest bfloat16, as float32 (what the kernel multiplies)."""
    return (to_bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def _attr(node, name, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _eligible_matmul(node, weight) -> bool:
    return (node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and weight is not None
            and weight.ndim == 2 and weight.dtype == np.float32 and weight.size >= MIN_WEIGHT_PRODUCT)


def _same_padded_conv(node, weight, group) -> bool:
    """A float32 Conv over time with a constant 3-D weight, ``group`` groups, stride 1, dilation 1
    and "same" padding of an odd kernel."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or weight is None or weight.ndim != 3:
        return False
    k = weight.shape[2]
    if weight.dtype != np.float32 or k % 2 != 1:
        return False
    p = (k - 1) // 2
    pads = list(_attr(node, "pads", [0, 0]))
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return (_attr(node, "group", 1) == group and list(_attr(node, "strides", [1])) == [1]
            and list(_attr(node, "dilations", [1])) == [1] and auto_pad == "NOTSET" and pads == [p, p]
            and list(_attr(node, "kernel_shape", [k])) == [k])


def _eligible_conv(node, weight) -> bool:
    return (_same_padded_conv(node, weight, group=1)
            and weight.shape[0] * weight.shape[1] >= MIN_WEIGHT_PRODUCT)


def _eligible_depthwise(node, weight) -> bool:
    """One channel per group: weight ``(C, 1, K)`` with ``group == C``."""
    return (weight is not None and weight.ndim == 3 and weight.shape[1] == 1
            and _same_padded_conv(node, weight, group=weight.shape[0]))


def _constants_and_consumers(graph):
    """``({name: array} of initializers and Constant outputs, {name: [nodes reading it]})``
    (a node reading a name twice is listed once)."""
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consumers = {}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        for i in dict.fromkeys(n.input):
            consumers.setdefault(i, []).append(n)
    return consts, consumers


def _fuse_gelu(graph) -> int:
    """``x * (0.5 * (1 + erf(x / sqrt 2)))`` (torch's exact GELU as the exporter writes it: five
    passes over the tensor) → one ``com.microsoft::Gelu(x)`` (ONNX Runtime's CPU contrib kernel,
    the same erf formula). Returns the number fused."""
    from onnx import helper

    consts, consumers = _constants_and_consumers(graph)

    def scalar(name, value):
        c = consts.get(name)
        return c is not None and c.size == 1 and abs(float(c.ravel()[0]) - value) <= 1e-6 * abs(value)

    def only_consumer(name):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in graph_outputs else None

    def other(node, name):
        return node.input[1] if node.input[0] == name else node.input[0]

    graph_outputs = {o.name for o in graph.output}
    fused, removed, replace = 0, set(), {}
    for div in graph.node:
        if div.op_type != "Div" or not scalar(div.input[1], 2 ** 0.5):
            continue
        x = div.input[0]
        erf = only_consumer(div.output[0])
        add = erf and erf.op_type == "Erf" and only_consumer(erf.output[0])
        if not (add and add.op_type == "Add" and scalar(other(add, erf.output[0]), 1.0)):
            continue
        half = only_consumer(add.output[0])
        if not (half and half.op_type == "Mul" and scalar(other(half, add.output[0]), 0.5)):
            continue
        last = only_consumer(half.output[0])
        if not (last and last.op_type == "Mul" and other(last, half.output[0]) == x):
            continue
        replace[id(last)] = helper.make_node("Gelu", [x], list(last.output), name=f"{last.name}.gelu",
                                             domain="com.microsoft")
        removed.update(id(nd) for nd in (div, erf, add, half))
        fused += 1
    if fused:
        nodes = [replace.get(id(nd), nd) for nd in graph.node if id(nd) not in removed]
        del graph.node[:]
        graph.node.extend(nodes)
        _drop_unused_constants(graph)
    return fused


def _fuse_feed_forward(graph) -> int:
    """``Bf16Conv`` (1×1, C → H) → ``com.microsoft::Gelu`` → ``Bf16Conv`` (1×1, H → C'), each
    intermediate read by nothing else → one ``hieramamba::Bf16FeedForward(x, w1, b1, w2, b2)``
    (``plugins/cpu_kernels/bf16Gemm.h`` ``runFeedForward``). Returns the number fused."""
    from onnx import helper

    kernel = {i.name: tuple(i.dims) for i in graph.initializer}
    consumers = {}
    for n in graph.node:
        for i in dict.fromkeys(n.input):
            consumers.setdefault(i, []).append(n)
    read_elsewhere = {o.name for o in graph.output}
    for n in graph.node:
        for a in n.attribute:
            for sub in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                read_elsewhere |= _names_read(sub)

    def only_consumer(name):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in read_elsewhere else None

    def pointwise_conv(node):
        if node is None or node.op_type != CONV_OP or node.domain != DOMAIN:
            return False
        shape = kernel.get(node.input[1], ())
        return len(shape) == 3 and shape[2] == 1

    fused, removed, replace = 0, set(), {}
    for fc1 in graph.node:
        # A conv already taken as a block's second product (A → GELU → B → GELU → C) stays B.
        if not pointwise_conv(fc1) or id(fc1) in replace:
            continue
        gelu = only_consumer(fc1.output[0])
        if not (gelu and gelu.op_type == "Gelu" and gelu.domain == "com.microsoft"):
            continue
        fc2 = only_consumer(gelu.output[0])
        if not (pointwise_conv(fc2) and fc2.input[0] == gelu.output[0]
                and kernel[fc2.input[1]][1] == kernel[fc1.input[1]][0]):
            continue
        replace[id(fc2)] = helper.make_node(
            FEED_FORWARD_OP, [fc1.input[0], fc1.input[1], fc1.input[2], fc2.input[1], fc2.input[2]],
            list(fc2.output), name=f"{fc2.name or fc2.output[0]}.ffn", domain=DOMAIN)
        removed.update((id(fc1), id(gelu)))
        fused += 1
    if fused:
        nodes = [replace.get(id(nd), nd) for nd in graph.node if id(nd) not in removed]
        del graph.node[:]
        graph.node.extend(nodes)
    return fused


def _names_read(graph) -> set:
    """Every value name a node of ``graph`` (or of a subgraph attribute, which may read outer
    names) takes as input, and the graph's outputs."""
    used = {o.name for o in graph.output}
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            for sub in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                used |= _names_read(sub)
    return used


def _fuse_channel_norm(graph) -> int:
    """The model's ``ChannelLayerNorm`` as the float32 export writes it (``channel_mean`` as a
    ``(1, C)`` MatMul: Sub, Mul, MatMul, Add eps, Sqrt, Div, then Mul weight and Add bias) → one
    ``hieramamba::ChannelNorm(x, eps, weight, bias)`` (``plugins/cpu_kernels/channelNorm.cpp``;
    weight ones and bias zeros when the norm has no affine part). Returns the number fused."""
    from onnx import helper, numpy_helper

    consts, consumers = _constants_and_consumers(graph)
    graph_outputs = {o.name for o in graph.output}

    def consumers_of(name):
        return [] if name in graph_outputs else consumers.get(name, [])

    def only(name, op_type):
        c = consumers_of(name)
        return c[0] if len(c) == 1 and c[0].op_type == op_type else None

    def mean_weights(name, channels=None):
        c = consts.get(name)
        return (c is not None and c.ndim == 2 and c.shape[0] == 1 and (channels is None or c.shape[1] == channels)
                and np.allclose(c, 1.0 / c.shape[1], rtol=1e-6))

    def per_channel(name, channels):
        c = consts.get(name)
        return c is not None and c.dtype == np.float32 and c.shape in ((channels,), (channels, 1))

    fused, removed, replace, added = 0, set(), {}, []
    for mean in graph.node:
        if mean.op_type != "MatMul" or not mean_weights(mean.input[0]):
            continue
        x, channels = mean.input[1], consts[mean.input[0]].shape[1]
        sub = only(mean.output[0], "Sub")
        if sub is None or list(sub.input) != [x, mean.output[0]]:
            continue
        users = consumers_of(sub.output[0])
        square = next((u for u in users if u.op_type == "Mul" and list(u.input) == [sub.output[0]] * 2), None)
        div = next((u for u in users if u.op_type == "Div" and u.input[0] == sub.output[0]), None)
        if len(users) != 2 or square is None or div is None:
            continue
        var = only(square.output[0], "MatMul")
        if var is None or var.input[1] != square.output[0] or not mean_weights(var.input[0], channels):
            continue
        add = only(var.output[0], "Add")
        eps = add and (add.input[1] if add.input[0] == var.output[0] else add.input[0])
        if add is None or eps not in consts or consts[eps].size != 1:
            continue
        sqrt = only(add.output[0], "Sqrt")
        if sqrt is None or only(sqrt.output[0], "Div") is not div or div.input[1] != sqrt.output[0]:
            continue
        chain, out = [mean, sub, square, var, add, sqrt, div], div.output[0]
        scale = only(div.output[0], "Mul")
        shift = scale and only(scale.output[0], "Add")
        w = scale and (scale.input[1] if scale.input[0] == div.output[0] else scale.input[0])
        b = shift and (shift.input[1] if shift.input[0] == scale.output[0] else shift.input[0])
        if shift is not None and per_channel(w, channels) and per_channel(b, channels):
            chain, out = chain + [scale, shift], shift.output[0]
        else:
            tag = f"{div.name or div.output[0]}.channel_norm"
            w, b = f"{tag}.weight", f"{tag}.bias"
            added += [numpy_helper.from_array(np.ones(channels, np.float32), w),
                      numpy_helper.from_array(np.zeros(channels, np.float32), b)]
        eps_scalar = f"{eps}.scalar"
        if eps_scalar not in consts:
            consts[eps_scalar] = np.asarray(consts[eps], np.float32).reshape(())
            added.append(numpy_helper.from_array(consts[eps_scalar], eps_scalar))
        replace[id(chain[-1])] = helper.make_node("ChannelNorm", [x, eps_scalar, w, b], [out],
                                                  name=f"{div.name or out}.channel_norm", domain=DOMAIN)
        removed.update(id(nd) for nd in chain[:-1])
        fused += 1
    if fused:
        nodes = [replace.get(id(nd), nd) for nd in graph.node if id(nd) not in removed]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(added)
        _drop_unused_constants(graph)
    return fused


def _drop_unused_constants(graph) -> None:
    """Initializers and Constant nodes nothing reads any more (ONNX Runtime warns about each)."""
    used = _names_read(graph)
    while True:
        keep = [n for n in graph.node if not (n.op_type == "Constant" and n.output[0] not in used)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
        used = _names_read(graph)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def bf16_graph(proto):
    """A copy of float32 graph ``proto`` with its eligible ``Conv`` / ``MatMul`` nodes as
    ``Bf16Conv`` / ``Bf16MatMul``, its depthwise convolutions as ``DepthwiseConv``, its channel
    LayerNorms as ``ChannelNorm``, its exact GELUs as ``com.microsoft::Gelu`` and its feed-forward
    blocks as ``Bf16FeedForward``; returns ``(proto, number of hieramamba nodes written)``."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    new_nodes, replaced = [], 0
    for n in g.node:
        w = inits.get(n.input[1]) if n.op_type in ("Conv", "MatMul") and len(n.input) > 1 else None
        weight = numpy_helper.to_array(w) if w is not None else None
        bias_name = n.input[2] if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] else None
        bias_ok = bias_name is None or bias_name in inits
        depthwise = _eligible_depthwise(n, weight) and bias_ok
        conv = _eligible_conv(n, weight) and bias_ok
        if not (conv or depthwise or _eligible_matmul(n, weight)) or n.input[0] in inits:
            new_nodes.append(n)
            continue
        base = f"{n.name or n.output[0]}.bf16"
        if depthwise:  # float32 weights, float32 math
            inputs = [n.input[0], n.input[1]]
        else:
            wb = helper.make_tensor(f"{base}.weight", onnx.TensorProto.BFLOAT16, list(weight.shape),
                                    to_bf16_bits(weight).tobytes(), raw=True)
            g.initializer.append(wb)
            inputs = [n.input[0], wb.name]
        if conv or depthwise:
            if bias_name is None:
                bias = numpy_helper.from_array(np.zeros(weight.shape[0], np.float32), f"{base}.bias")
                g.initializer.append(bias)
                bias_name = bias.name
            inputs.append(bias_name)
        op = DEPTHWISE_OP if depthwise else CONV_OP if conv else MATMUL_OP
        new_nodes.append(helper.make_node(op, inputs, list(n.output), name=n.name, domain=DOMAIN))
        replaced += 1
    del g.node[:]
    g.node.extend(new_nodes)
    _drop_unused_constants(g)  # the float32 copies of replaced weights
    replaced += _fuse_channel_norm(g)
    if replaced and not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, SCAN_OP.function_version))
    if _fuse_gelu(g) and not any(o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    replaced -= _fuse_feed_forward(g)  # two Bf16Conv nodes (and a Gelu) become one
    return out, replaced
