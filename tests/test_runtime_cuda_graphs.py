"""CUDA graphs in the torch backend (runtime/backends/cuda_graphs.py).

On CPU the graphs are a stand-in with a CUDA graph's memory semantics (capture runs the stage
once and keeps its output tensors; every replay recomputes from the static inputs and overwrites
those same outputs), and every capture runs under a dispatch mode that refuses the operations a
real capture cannot hold (device→host reads, data-dependent shapes, tensors made from host data).
So the bookkeeping (keys, static inputs, scalar inputs, output lifetimes, eviction) and the
capturability of every stage are checked here; the real capture runs in the GPU test at the end.
"""

import json
import threading

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hieramamba.errors import BackendUnavailableError, InputError
from hieramamba.runtime import GroundingRuntime
from hieramamba.runtime.backends.cuda_graphs import ScalarInput, StageGraphs, _flatten
from hieramamba.stage_modules import plan_from_model
from hieramamba.runtime.scheduler import ChunkScheduler
from hieramamba.runtime.backends.torch import TorchBackend

from test_runtime_chunked import inputs, shrunk

# What a CUDA graph capture cannot contain: each needs the host to see device data (item(),
# bool(), data-dependent output sizes) or copies host data to the device mid-capture.
NOT_CAPTURABLE = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2",
                  "lift_fresh", "_assert_async", "equal"}


class CaptureChecker(TorchDispatchMode):
    def __init__(self, stage):
        super().__init__()
        self.stage = stage

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        boolean_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
        # Tensor repeats without output_size sum them on the host (an int count does not).
        sized_on_host = (name == "repeat_interleave" and func._overloadname != "self_int"
                         and (kwargs or {}).get("output_size") is None)
        if name in NOT_CAPTURABLE or boolean_index or sized_on_host:  # boolean index: nonzero() inside
            raise AssertionError(f"stage {self.stage!r} calls aten.{name}, which a CUDA graph cannot capture")
        return func(*args, **(kwargs or {}))


class StandInGraph:
    """A CUDA graph's semantics on CPU: outputs live in fixed tensors, each replay recomputes
    from the static inputs and overwrites them."""

    def __init__(self):
        self.fn = self.outputs = None

    def capture(self, fn):
        self.fn = fn
        with CaptureChecker(getattr(fn, "__name__", "stage")):
            self.outputs = fn()
        return self.outputs

    def replay(self):
        fresh, fixed = [], []
        _flatten(self.fn(), fresh)
        _flatten(self.outputs, fixed)
        for dst, src in zip(fixed, fresh):
            for d in range(dst.ndim):  # an expanded output (stride 0): write its one real copy
                if dst.stride(d) == 0:
                    dst, src = dst.narrow(d, 0, 1), src.narrow(d, 0, 1)
            dst.copy_(src)


def stand_in_graphs(**kw):
    return StageGraphs("cpu", graph_factory=StandInGraph, **kw)


def run_chunked(backend, plan, vid, valid, text, tmask, chunk):
    return ChunkScheduler(plan, backend, chunk, attn_rows=chunk + 1).run(
        vid[0].numpy(), valid, text.numpy(), tmask.numpy(), official_batch=text.shape[0])


@pytest.fixture(params=["reference", "native"])
def cpu_scan(request, monkeypatch):
    """The scan stage with the pure-PyTorch op (what CUDA runs unless the fused kernel is
    registered) and with the C++ kernel of plugins/ (the CPU default when built)."""
    import importlib

    op = importlib.import_module("hieramamba.ops.hydra_scan.op")  # the module (the package exports the function)
    op._maybe_register_native_cpu()
    if request.param == "reference":
        monkeypatch.delitem(op._KERNELS, "cpu", raising=False)
    elif "cpu" not in op._KERNELS:
        pytest.skip("libhieramamba_plugins is not built")
    return request.param


@pytest.mark.parametrize("name,valid,chunk", [
    ("ego4d", 301, 18),   # 8 levels; windowed and global-attention levels; interior + edge shapes
    ("mad", 777, 22),     # stride 2, 9 levels
    ("tacos", 200, 20),   # no early fusion (backbone at batch 1)
])
def test_graphed_stages_equal_eager(name, valid, chunk, cpu_scan):
    model, opt = shrunk(name)
    plan = plan_from_model(model, opt)
    vid, vmask, text, tmask = inputs(model, opt, valid, 2, 3, plan.pad_multiple)
    want = run_chunked(TorchBackend(model, opt), plan, vid, valid, text, tmask, chunk)
    graphs = stand_in_graphs()
    backend = TorchBackend(model, opt, cuda_graphs=graphs)
    for _ in range(2):  # the second video replays graphs captured during the first
        got = run_chunked(backend, plan, vid, valid, text, tmask, chunk)
        for w, g in zip(want, got):
            for lw, lg in zip(w, g):
                np.testing.assert_array_equal(lg, lw)
    s = graphs.stats
    assert s["captures"] == len(graphs) > 10 and s["replays"] > 2 * s["captures"] and s["eager"] > 0


def test_scalar_inputs_are_not_part_of_the_key():
    """Chunks that differ only in their position (pe_start, slot offset) share one graph."""
    calls = []

    def stage(x, offset):
        calls.append(offset)
        return x * 2 + offset  # offset is a 0-d int64 tensor inside the graph

    graphs = stand_in_graphs()
    x = torch.arange(4.0)
    outs = [graphs.run("s", stage, x + i, ScalarInput(10 * i)) for i in range(5)]
    for i, out in enumerate(outs):  # each output kept its own values (cloned from the graph)
        torch.testing.assert_close(out, (x + i) * 2 + 10 * i, rtol=0, atol=0)
    assert len(graphs) == 1 and graphs.stats == {"captures": 1, "replays": 4, "eager": 1, "evictions": 0}
    assert all(isinstance(c, torch.Tensor) and c.dtype == torch.int64 and c.ndim == 0 for c in calls)
    # A plain int is a constant of the graph: another value is another key.
    graphs.run("s", stage, x, 3)
    graphs.run("s", stage, x, 3)
    assert len(graphs) == 2


def test_capture_after_and_eviction():
    graphs = stand_in_graphs(capture_after=3, max_graphs=2)
    f = lambda t: t + 1  # noqa: E731
    for _ in range(2):
        graphs.run("f", f, torch.zeros(1))
    assert len(graphs) == 0 and graphs.stats["eager"] == 2
    graphs.run("f", f, torch.zeros(1))
    assert len(graphs) == 1
    for n in (2, 3):  # two more shapes, each captured on its 3rd sighting: the oldest is dropped
        for _ in range(3):
            out = graphs.run("f", f, torch.zeros(n))
        torch.testing.assert_close(out, torch.ones(n))
    assert len(graphs) == 2 and graphs.stats["evictions"] == 1


def test_outputs_survive_later_replays():
    """The scheduler keeps outputs across calls; a replay must not change them."""
    graphs = stand_in_graphs(capture_after=1)
    a = graphs.run("f", lambda t: (t * 3, {"id": t}), torch.ones(3))
    b = graphs.run("f", lambda t: (t * 3, {"id": t}), torch.full((3,), 5.0))
    torch.testing.assert_close(a[0], torch.full((3,), 3.0))
    torch.testing.assert_close(a[1]["id"], torch.ones(3))  # an input passed through, not aliased
    torch.testing.assert_close(b[0], torch.full((3,), 15.0))


def test_concurrent_calls_on_one_graphed_backend():
    model, opt = shrunk("ego4d")
    plan = plan_from_model(model, opt)
    backend = TorchBackend(model, opt, cuda_graphs=stand_in_graphs())
    cases = [inputs(model, opt, 150 + 40 * i, 1, i, plan.pad_multiple) for i in range(3)]
    valid = [150 + 40 * i for i in range(3)]
    want = [run_chunked(TorchBackend(model, opt), plan, v, n, t, m, 16) for (v, _, t, m), n in zip(cases, valid)]
    got, errors = [None] * 3, []

    def work(i):
        try:
            v, _, t, m = cases[i]
            got[i] = run_chunked(backend, plan, v, valid[i], t, m, 16)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    for w, g in zip(want, got):
        for lvl in range(plan.num_levels):
            np.testing.assert_array_equal(g[0][lvl], w[0][lvl])


@pytest.mark.parametrize("stage", [
    lambda t: t * t.sum().item(),              # a device value read on the host
    lambda t: t[t > 0],                        # output size depends on data
    lambda t: t + torch.tensor([1.0, 2.0]),    # host data copied in mid-capture
    lambda t: t.repeat_interleave(t.long(), dim=0),  # output size from device values
])
def test_stand_in_refuses_what_a_capture_cannot_hold(stage):
    graphs = stand_in_graphs(capture_after=1)
    with pytest.raises(BackendUnavailableError, match="cannot capture"):
        graphs.run("bad", stage, torch.ones(2))


def test_cuda_graphs_need_cuda():
    model, opt = shrunk("ego4d")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(BackendUnavailableError, match="CUDA graphs need a CUDA device"):
        GroundingRuntime.from_model(model, opt, device="cpu", cuda_graphs=True)
    with pytest.raises(InputError, match="max_graphs"):
        StageGraphs("cpu", graph_factory=StandInGraph, max_graphs=0)


def test_capture_failure_names_the_stage():
    class Refusing(StandInGraph):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    graphs = StageGraphs("cpu", graph_factory=Refusing, capture_after=1)
    with pytest.raises(BackendUnavailableError, match="stage 'heads'.*without cuda_graphs"):
        graphs.run("heads", lambda t: t, torch.ones(1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (not measured on GPU here)")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 1e-2)])
def test_real_cuda_graphs_match_eager_on_gpu(dtype, tol):
    model, opt = shrunk("ego4d")
    plan = plan_from_model(model, opt)
    vid, vmask, text, tmask = inputs(model, opt, 301, 2, 3, plan.pad_multiple)
    want = run_chunked(TorchBackend(model, "cuda", dtype), plan, vid, 301, text, tmask, 18)
    backend = TorchBackend(model, "cuda", dtype, cuda_graphs=True)
    for _ in range(2):
        got = run_chunked(backend, plan, vid, 301, text, tmask, 18)
        for lvl in range(plan.num_levels):
            scale = max(np.abs(want[0][lvl]).max(), 1e-6)
            assert np.abs(got[0][lvl] - want[0][lvl]).max() / scale <= tol
    assert backend.graphs.stats["replays"] > 0


def test_cli_ground_cuda_graphs_flags(tmp_path, capsys):
    from pathlib import Path

    import hieramamba
    from hieramamba.cli import main

    tiny = Path(hieramamba.__file__).parent / "assets" / "tiny"
    np.save(tmp_path / "v.npy", np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32))
    np.save(tmp_path / "q.npy", np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32))
    common = ["ground", "--experiment", str(tiny), "--video", str(tmp_path / "v.npy"),
              "--query", str(tmp_path / "q.npy"), "--fps", "30"]
    assert main(common + ["--cuda-graphs"]) == 2
    assert "--cuda-graphs is an option of --backend torch" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(common + ["--backend", "torch", "--cuda-graphs"]) == 2
        assert "CUDA graphs need a CUDA device" in capsys.readouterr().err
    assert main(common + ["--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "g.json")]) == 0
    assert len(json.loads((tmp_path / "g.json").read_text())["queries"][0]["segments"]) > 0


def test_bench_cuda_graph_path_keeps_each_groups_outputs(tmp_path):
    """``eager_cuda_graphs`` (profiling/paths.py) with the stand-in: MAD grounds each query as its
    own group, so one graph is replayed per query; every group keeps its own outputs."""
    from hieramamba.profiling.bench import make_inputs
    from hieramamba.profiling.paths import BenchContext, _cuda_graph_runner, _eager_runner

    model, opt = shrunk("mad")
    ctx = BenchContext(model=model, opt=opt, device="cpu", threads=1, workdir=tmp_path)
    inputs = make_inputs(model, opt, 600, 3, None)
    assert len(inputs[2]) == 3
    graphed = _cuda_graph_runner(ctx, graph_factory=StandInGraph)
    want = _eager_runner(ctx, "float32")(inputs)
    for _ in range(2):
        got = graphed(inputs)
        for (lw, ow), (lg, og) in zip(want, got):
            for a, b in zip(lw + ow, lg + og):
                np.testing.assert_array_equal(b, a)
