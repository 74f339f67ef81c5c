"""HydraScan op: oracle agreement, chunked composition, autograd, fake/meta, export, dtypes,
errors, the empty-input rule. The float64 oracle is tests/scan_oracle.py (a plain time loop,
independent of ``hieramamba.ops.hydra_scan``)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import scan_oracle
from hieramamba.errors import InputError
from hieramamba.ops import (
    hydra_scan,
    hydra_scan_reference,
    register_kernel,
    scan_boundary_term,
    unregister_kernel,
)
from scan_oracle import oracle, rel_err

F64 = torch.float64


def make_inputs(seed, B, L, H, P, G, N, dtype=F64, states=True, big_dt=False):
    """Arguments of hydra_scan as a list (states at indices 9, 10)."""
    return scan_oracle.args(scan_oracle.make_inputs(B, L, H, P, G, N, seed=seed, dtype=dtype, states=states,
                                                    big_dt=big_dt))


LENGTHS = [1, 2, 3, 17, 64, 255, 256, 257, 600]


@st.composite
def problems(draw):
    H = draw(st.integers(1, 4))
    return dict(
        seed=draw(st.integers(0, 2**31 - 1)),
        B=draw(st.integers(1, 2)),
        L=draw(st.sampled_from(LENGTHS)),
        H=H,
        P=draw(st.integers(1, 8)),
        G=draw(st.sampled_from([g for g in (1, 2, 4) if H % g == 0])),
        N=draw(st.integers(1, 8)),
        states=draw(st.booleans()),
        big_dt=draw(st.booleans()),
        chunk=draw(st.sampled_from([16, 64, 256])),
    )


def _run(p, dtype):
    args = make_inputs(p["seed"], p["B"], p["L"], p["H"], p["P"], p["G"], p["N"], dtype,
                       p["states"], p["big_dt"])
    got = hydra_scan(*args, chunk_size=p["chunk"])
    want = oracle(*args)
    return args, got, want


# ------------------------------------------------------------------------------------------------
# Oracle agreement
# ------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(problems())
def test_matches_oracle_float64(p):
    _, got, want = _run(p, F64)
    assert got[0].dtype == F64 and got[1].dtype == F64 and got[2].dtype == F64
    for g, w in zip(got, want):
        assert g.shape == w.shape
        assert rel_err(g, w) <= 1e-10


@settings(max_examples=30, deadline=None)
@given(problems())
def test_matches_oracle_float32(p):
    _, got, want = _run(p, torch.float32)
    assert got[0].dtype == torch.float32
    assert got[1].dtype == torch.float32 and got[2].dtype == torch.float32
    for g, w in zip(got, want):
        assert rel_err(g, w) <= 1e-4


def test_small_lengths_and_chunk_one():
    # L = 1 has no neighbours in either direction: y == 0, states are one step each.
    args = make_inputs(0, 2, 1, 2, 3, 1, 4)
    y, sf, sb = hydra_scan(*args, chunk_size=256)
    assert torch.equal(y, torch.zeros_like(y))
    want = oracle(*args)
    assert rel_err(sf, want[1]) <= 1e-12 and rel_err(sb, want[2]) <= 1e-12
    # chunk_size 1 (every step its own chunk) and chunk_size > L.
    for chunk in (1, 2, 1000):
        args = make_inputs(1, 1, 9, 2, 2, 2, 3)
        for g, w in zip(hydra_scan(*args, chunk_size=chunk), oracle(*args)):
            assert rel_err(g, w) <= 1e-10


def test_state_only_input():
    # With x = 0 the output is the incoming states read through C, decayed: checks the
    # direction of state passing independently of the within-chunk part.
    args = make_inputs(3, 1, 40, 2, 2, 1, 3)
    args[0] = torch.zeros_like(args[0])
    for g, w in zip(hydra_scan(*args, chunk_size=16), oracle(*args)):
        assert rel_err(g, w) <= 1e-10


def test_non_contiguous_inputs():
    args = make_inputs(5, 2, 33, 4, 3, 2, 5)
    # Same values, transposed storage.
    nc_args = [None if t is None else t.transpose(0, -1).contiguous().transpose(0, -1)
               for t in args]
    assert not nc_args[0].is_contiguous()
    for g, w in zip(hydra_scan(*nc_args, chunk_size=16), hydra_scan(*args, chunk_size=16)):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# Chunked composition (carried states + boundary terms == whole sequence)
# ------------------------------------------------------------------------------------------------


def _slice_args(args, a, b, sf0, sb0):
    out = list(args)
    for i in (0, 1, 2, 5, 6, 7, 8):
        out[i] = args[i][:, a:b]
    out[9], out[10] = sf0, sb0
    return out


def scan_in_pieces(args, cuts, chunk_size):
    """Run hydra_scan on [cuts[k], cuts[k+1]) pieces with carried states and boundary terms."""
    bounds = list(zip(cuts[:-1], cuts[1:]))
    n = len(bounds)
    C_f, C_b = args[6], args[8]
    # Pass 1, right to left: the backward state entering each piece from its right.
    # (state_b of a piece depends only on that piece and its own state_b0.)
    sb_in = [None] * n
    sb_in[n - 1] = args[10]
    for k in range(n - 1, 0, -1):
        _, _, sb = hydra_scan(*_slice_args(args, *bounds[k], None, sb_in[k]), chunk_size=chunk_size)
        sb_in[k - 1] = sb
    # Pass 2, left to right: outputs with both states, plus the boundary terms of the shift.
    ys, sf, sf_in = [], None, args[9]
    for k, (a, b) in enumerate(bounds):
        y, sf, sb = hydra_scan(*_slice_args(args, a, b, sf_in, sb_in[k]), chunk_size=chunk_size)
        y = y.clone()
        if k > 0:  # first row reads C_f of the previous piece's last row
            y[:, 0] += scan_boundary_term(sf_in, C_f[:, a - 1]).to(y.dtype)
        if k < n - 1:  # last row reads C_b of the next piece's first row
            y[:, -1] += scan_boundary_term(sb_in[k], C_b[:, b]).to(y.dtype)
        ys.append(y)
        sf_in = sf
        if k == 0:
            sb_first = sb
    return torch.cat(ys, dim=1), sf, sb_first


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    L=st.integers(2, 300),
    pieces=st.sampled_from([2, 3]),
    H=st.sampled_from([1, 2, 4]),
    G=st.sampled_from([1, 2]),
    states=st.booleans(),
    chunk=st.sampled_from([8, 16, 64]),
    data=st.data(),
)
def test_chunked_composition(seed, L, pieces, H, G, states, chunk, data):
    if H % G:
        G = 1
    pieces = min(pieces, L)
    inner = sorted(data.draw(st.sets(st.integers(1, L - 1), min_size=pieces - 1,
                                     max_size=pieces - 1)))
    cuts = [0, *inner, L]
    args = make_inputs(seed, 2, L, H, 3, G, 4, F64, states)
    whole = hydra_scan(*args, chunk_size=chunk)
    parts = scan_in_pieces(args, cuts, chunk)
    for g, w in zip(parts, whole):
        assert rel_err(g, w) <= 1e-10


def test_boundary_term_values_and_errors():
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 3, 5, generator=g, dtype=F64)
    C = torch.randn(2, 2, 5, generator=g, dtype=F64)
    got = scan_boundary_term(state, C)
    want = torch.stack([(state[:, h] * C[:, h // 2, None, :]).sum(-1) for h in range(4)], dim=1)
    assert got.shape == (2, 4, 3)
    torch.testing.assert_close(got, want)
    assert scan_boundary_term(state.float(), C.half()).dtype == torch.float32
    with pytest.raises(InputError, match="C_row"):
        scan_boundary_term(state, torch.randn(2, 3, 5, dtype=F64))  # 4 heads, 3 groups
    with pytest.raises(InputError, match="state"):
        scan_boundary_term(state[0], C)


# ------------------------------------------------------------------------------------------------
# Autograd
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("G", [1, 2])
def test_gradcheck_all_inputs(G):
    args = make_inputs(7, 1, 5, 2, 2, G, 2)
    args = [t.requires_grad_() for t in args]
    assert torch.autograd.gradcheck(lambda *a: hydra_scan(*a, chunk_size=2), args)


def test_grad_without_states_and_partial_requires_grad():
    args = make_inputs(8, 2, 11, 2, 2, 1, 3, states=False)
    args[0].requires_grad_()
    args[6].requires_grad_()
    y, sf, sb = hydra_scan(*args, chunk_size=4)
    (y.sum() + sf.square().sum()).backward()
    ref = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None
           for t in args]
    y2, sf2, _ = hydra_scan_reference(*ref, chunk_size=4)
    (y2.sum() + sf2.square().sum()).backward()
    torch.testing.assert_close(args[0].grad, ref[0].grad)
    torch.testing.assert_close(args[6].grad, ref[6].grad)
    assert args[1].grad is None


# ------------------------------------------------------------------------------------------------
# Fake tensors / meta
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, F64])
def test_meta_and_fake(dtype):
    from torch._subclasses.fake_tensor import FakeTensorMode

    B, L, H, P, G, N = 2, 9, 4, 3, 2, 5
    args = [None if t is None else t.to(dtype) for t in make_inputs(0, B, L, H, P, G, N)]
    state_dtype = F64 if dtype == F64 else torch.float32
    args[9], args[10] = args[9].to(state_dtype), None

    meta = [None if t is None else t.to("meta") for t in args]
    y, sf, sb = hydra_scan(*meta, chunk_size=4)
    assert y.device.type == "meta" and y.shape == (B, L, H, P) and y.dtype == dtype
    assert sf.shape == sb.shape == (B, H, P, N) and sf.dtype == sb.dtype == state_dtype

    with FakeTensorMode() as mode:
        fake = [None if t is None else mode.from_tensor(t) for t in args]
        y, sf, sb = torch.ops.hieramamba.hydra_scan(*fake, 4)
    assert y.shape == (B, L, H, P) and y.dtype == dtype
    assert sf.shape == (B, H, P, N) and sb.dtype == state_dtype


# ------------------------------------------------------------------------------------------------
# torch.export with dynamic batch and length
# ------------------------------------------------------------------------------------------------


class _TinyHydraCore(torch.nn.Module):
    def __init__(self, fn, H=4):
        super().__init__()
        self.fn = fn
        self.A_log = torch.nn.Parameter(torch.linspace(-1.0, 1.0, H))
        self.dt_bias = torch.nn.Parameter(torch.linspace(-0.5, 0.5, H))

    def forward(self, x, dt_f, dt_b, B_f, C_f, B_b, C_b, state_f0):
        A = -torch.exp(self.A_log)
        return self.fn(x, dt_f, dt_b, A, self.dt_bias, B_f, C_f, B_b, C_b, state_f0, None,
                       chunk_size=8)


@pytest.mark.parametrize("fn", [hydra_scan, hydra_scan_reference], ids=["custom_op", "reference"])
def test_export_dynamic_batch_and_length(fn):
    from torch.export import Dim

    H, P, G, N = 4, 3, 2, 5
    module = _TinyHydraCore(fn, H).eval()

    def inputs(seed, B, L):
        a = make_inputs(seed, B, L, H, P, G, N, torch.float32)
        return (a[0], a[1], a[2], a[5], a[6], a[7], a[8], a[9])

    b, l = Dim("B", min=1, max=64), Dim("L", min=2, max=1 << 16)
    bl = {0: b, 1: l}
    dyn = (bl, bl, bl, bl, bl, bl, bl, {0: b})
    ep = torch.export.export(module, inputs(0, 2, 13), dynamic_shapes=dyn, strict=False)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    if fn is hydra_scan:  # the op stays one opaque node (what the ONNX exporter maps)
        assert torch.ops.hieramamba.hydra_scan.default in targets
    else:
        assert torch.ops.hieramamba.hydra_scan.default not in targets
    run = ep.module()
    for seed, B, L in ((1, 3, 5), (2, 1, 40)):
        args = inputs(seed, B, L)
        with torch.no_grad():
            for got, want in zip(run(*args), module(*args)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Low precision
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
def test_half_precision_inputs(dtype, tol):
    args32 = make_inputs(11, 2, 70, 4, 8, 2, 8, torch.float32)
    # Round the low-precision operands once so both runs see the same values.
    low = [t.to(dtype) if i in (0, 5, 6, 7, 8) else t for i, t in enumerate(args32)]
    ref = [t.float() if i in (0, 5, 6, 7, 8) else t for i, t in enumerate(low)]
    y, sf, sb = hydra_scan(*low, chunk_size=16)
    y32, sf32, sb32 = hydra_scan(*ref, chunk_size=16)
    assert y.dtype == dtype and sf.dtype == torch.float32 and sb.dtype == torch.float32
    assert rel_err(y, y32.to(F64)) <= tol
    # States never pass through the low dtype: they match the fp32 run closely.
    assert rel_err(sf, sf32.to(F64)) <= 1e-5 and rel_err(sb, sb32.to(F64)) <= 1e-5
    # dt, A, dt_bias may also come in the low dtype.
    low2 = [t.to(dtype) if t is not None and i < 9 else t for i, t in enumerate(low)]
    y2, _, _ = hydra_scan(*low2, chunk_size=16)
    assert y2.dtype == dtype and torch.isfinite(y2.float()).all()


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------


def _good():
    return make_inputs(0, 2, 10, 4, 3, 2, 5, torch.float32)


def _set(i, fn):
    def mutate(a):
        a[i] = fn(a[i])
        return a

    return mutate


BAD = {
    "x_rank": (_set(0, lambda t: t[0]), "x"),
    "x_int": (_set(0, lambda t: t.long()), "x"),
    "dt_f_shape": (_set(1, lambda t: t[:, :-1]), "dt_f"),
    "dt_b_rank": (_set(2, lambda t: t[..., None]), "dt_b"),
    "A_shape": (_set(3, lambda t: t[:-1]), "A"),
    "dt_bias_dtype": (_set(4, lambda t: t.double()), "dt_bias"),
    "B_f_length": (_set(5, lambda t: t[:, :-1]), "B_f"),
    "C_f_dtype": (_set(6, lambda t: t.half()), "C_f"),
    "B_b_N": (_set(7, lambda t: t[..., :-1]), "B_b"),
    "C_b_batch": (_set(8, lambda t: t[:1]), "C_b"),
    "groups": (lambda a: [t[:, :, :1].expand(-1, -1, 3, -1) if i in (5, 6, 7, 8) else t
                          for i, t in enumerate(a)], "divisible"),
    "state_f0_shape": (_set(9, lambda t: t[..., :-1]), "state_f0"),
    "state_b0_dtype": (_set(10, lambda t: t.half()), "state_b0"),
    "state_b0_device": (_set(10, lambda t: t.to("meta")), "state_b0"),
    "B_b_device": (_set(7, lambda t: t.to("meta")), "B_b"),
    "no_heads": (lambda a: [t[:, :, :0] if i == 0 else t for i, t in enumerate(a)], "H ≥ 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_raise_input_error(case):
    mutate, word = BAD[case]
    args = mutate(_good())
    with pytest.raises(InputError, match=word) as info:
        hydra_scan(*args)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("B,L,states", [(0, 5, True), (2, 0, True), (2, 0, False), (0, 0, False)])
def test_empty_batch_or_time_returns_initial_states(B, L, states):
    """The op's empty-input rule (validate.py), as the C++/CUDA kernels and the plugin: an empty
    y and the initial states (zeros without them)."""
    args = make_inputs(0, B, L, 4, 3, 2, 5, torch.float32, states)
    y, sf, sb = hydra_scan(*args)
    assert y.shape == (B, L, 4, 3) and y.dtype == torch.float32
    for got, init in ((sf, args[9]), (sb, args[10])):
        assert got.shape == (B, 4, 3, 5) and got.dtype == torch.float32
        assert torch.equal(got, init if init is not None else torch.zeros_like(got))


@pytest.mark.parametrize("chunk", [0, -3, 2.5, True])
def test_bad_chunk_size(chunk):
    with pytest.raises(InputError, match="chunk_size"):
        hydra_scan(*_good(), chunk_size=chunk)


# ------------------------------------------------------------------------------------------------
# Native-kernel dispatch hook
# ------------------------------------------------------------------------------------------------


def test_register_kernel_dispatch():
    calls = []

    def fake_kernel(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0, chunk_size):
        calls.append((x.dtype, chunk_size, state_b0 is None))
        y, sf, sb = hydra_scan_reference(x, dt_f, dt_b, A, dt_bias, B_f, C_f, B_b, C_b,
                                         state_f0, state_b0, chunk_size)
        return y + 1.0, sf, sb  # recognisable

    import importlib

    op = importlib.import_module("hieramamba.ops.hydra_scan.op")
    previous = op._KERNELS.pop("cpu", None)  # restored at the end: other tests rely on the default
    args = make_inputs(4, 1, 12, 2, 2, 1, 3, torch.float32)
    want = hydra_scan(*args, chunk_size=4)
    register_kernel("cpu", fake_kernel)
    try:
        y, sf, sb = hydra_scan(*args, chunk_size=4)
        assert calls == [(torch.float32, 4, False)]
        torch.testing.assert_close(y, want[0] + 1.0)
        torch.testing.assert_close(sf, want[1])
        # Unsupported dtype (fp64 not in the default dtypes) falls back to the reference.
        a64 = [t.double() for t in args]
        hydra_scan(*a64, chunk_size=4)
        assert len(calls) == 1
        # Gradients are recomputed by the reference even when the kernel ran forward.
        x = args[0].clone().requires_grad_()
        hydra_scan(x, *args[1:], chunk_size=4)[0].sum().backward()
        x_ref = args[0].clone().requires_grad_()
        hydra_scan_reference(x_ref, *args[1:], chunk_size=4)[0].sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad)
    finally:
        assert unregister_kernel("cpu")
    hydra_scan(*args, chunk_size=4)
    assert len(calls) == 2  # the grad call above; nothing after unregistering
    assert not unregister_kernel("cpu")
    with pytest.raises(InputError):
        register_kernel("cpu", "not callable")
    if previous is not None:
        op._KERNELS["cpu"] = previous


def test_registered_kernel_is_not_baked_into_export():
    # Export never calls the kernel (fake impl); the exported program dispatches when it runs.
    H, P, G, N = 2, 2, 1, 3
    module = _TinyHydraCore(hydra_scan, H)
    a = make_inputs(0, 1, 6, H, P, G, N, torch.float32)
    inp = (a[0], a[1], a[2], a[5], a[6], a[7], a[8], a[9])
    calls = []

    def kernel(*args):
        calls.append(1)
        return hydra_scan_reference(*args)

    import importlib

    op = importlib.import_module("hieramamba.ops.hydra_scan.op")
    previous = op._KERNELS.get("cpu")
    register_kernel("cpu", kernel)
    try:
        ep = torch.export.export(module, inp, strict=False)
        assert calls == []
        ep.module()(*inp)
        assert calls == [1]
    finally:
        unregister_kernel("cpu")
        if previous is not None:
            op._KERNELS["cpu"] = previous


def test_decay_math_sanity():
    # One head, P = N = 1, B = C = 1, x = 1: forward output is a geometric sum we can write down.
    L = 6
    x = torch.ones(1, L, 1, 1, dtype=F64)
    dt = torch.full((1, L, 1), 0.3, dtype=F64)
    A = torch.tensor([-0.7], dtype=F64)
    bias = torch.zeros(1, dtype=F64)
    one = torch.ones(1, L, 1, 1, dtype=F64)
    zero = torch.zeros_like(one)
    y, sf, sb = hydra_scan(x, dt, dt, A, bias, one, one, zero, zero, chunk_size=4)
    d = math.log1p(math.exp(0.3))
    a = math.exp(-0.7 * d)
    s = [d * sum(a**k for k in range(t + 1)) for t in range(L)]
    torch.testing.assert_close(y.flatten(), torch.tensor([0.0, *s[:-1]], dtype=F64))
    assert sf.item() == pytest.approx(s[-1], rel=1e-12)
    assert sb.item() == 0.0
