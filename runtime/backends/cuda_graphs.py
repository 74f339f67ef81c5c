"""CUDA graphs for the torch backend's stages: each stage call becomes one graph replay instead of
hundreds of kernel launches, which is what bounds a chunked runtime on a GPU (small per-chunk
kernels, one Python call each).

A graph is captured per *stage key*: the stage, its level, and the shapes, strides and dtypes of
its tensor inputs. Interior chunks of a level all have one shape, so a long video replays a few graphs many
times; the ends of the video (shorter windows) get graphs of their own. Values that change from
chunk to chunk but are not tensors (the window's position-encoding start, its first slot, the
level's slot count) enter as 0-d int64 input tensors, so they never become part of a key.

Rules that keep replays exact:

* Inputs are copied into the graph's static input tensors before each replay.
* Outputs are cloned right after each replay: a graph writes its outputs to the same memory on
  every replay, and the scheduler keeps stage outputs across later calls (states, lagged halos).
  This also makes it safe for all graphs to share one memory pool: no graph's output memory is
  read after another graph has replayed.
* A key is captured on its ``capture_after``-th sighting (default the 2nd): shapes seen once (the
  last chunk of a one-off video length) run eagerly instead of costing a capture. At most
  ``max_graphs`` graphs are kept (least recently used dropped), so a server that sees many video
  lengths does not grow without bound.
* One lock around copy-in, replay and clone: concurrent calls on one runtime share the static
  tensors, so they take turns stage by stage.

Capturing needs a CUDA device; ``graph_factory`` exists so the bookkeeping can be tested on CPU
with a stand-in that has a graph's semantics (tests/test_runtime_cuda_graphs.py).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Optional

import torch

from hieramamba.errors import BackendUnavailableError, InputError

from .arrays import ScalarInput  # a changing int input: a 0-d int64 tensor updated by fill_


# -- flattening nested stage arguments/outputs (tuples, lists, dicts of tensors) --------------

def _flatten(obj, leaves: list):
    """``obj`` with every tensor and ``ScalarInput`` replaced by its index in ``leaves``
    (appended) -> a hashable spec; other values (level numbers, None) stay in the spec."""
    if isinstance(obj, (torch.Tensor, ScalarInput)):
        leaves.append(obj)
        return ("leaf", len(leaves) - 1)
    if isinstance(obj, (tuple, list)):
        return (type(obj).__name__, tuple(_flatten(o, leaves) for o in obj))
    if isinstance(obj, dict):
        return ("dict", tuple((k, _flatten(v, leaves)) for k, v in obj.items()))
    return ("const", obj)


def _unflatten(spec, leaves: list):
    kind, body = spec
    if kind == "leaf":
        return leaves[body]
    if kind == "tuple":
        return tuple(_unflatten(s, leaves) for s in body)
    if kind == "list":
        return [_unflatten(s, leaves) for s in body]
    if kind == "dict":
        return {k: _unflatten(s, leaves) for k, s in body}
    return body


def _leaf_key(leaf):
    if isinstance(leaf, ScalarInput):
        return "scalar"
    return (tuple(leaf.shape), leaf.stride(), leaf.dtype)


def _static_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with its strides (the graph runs the kernels eager runs on this layout:
    same results to the bit), or dense where ``t`` is broadcast (stride 0 cannot be written)."""
    if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
        return t.clone(memory_format=torch.contiguous_format)
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).copy_(t)


class _TorchCudaGraph:
    """``torch.cuda.CUDAGraph`` behind the small interface ``StageGraphs`` uses."""

    def __init__(self, pool):
        self.graph, self.pool = torch.cuda.CUDAGraph(), pool

    def capture(self, fn: Callable[[], Any]):
        # thread_local: CUDA work of other threads (other calls on the runtime, outside the stage
        # lock) must not invalidate this capture, and is not refused because of it.
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            return fn()

    def replay(self):
        self.graph.replay()


class _Captured:
    __slots__ = ("graph", "static_leaves", "out_spec", "out_leaves")

    def __init__(self, graph, static_leaves, out_spec, out_leaves):
        self.graph, self.static_leaves = graph, static_leaves
        self.out_spec, self.out_leaves = out_spec, out_leaves


class StageGraphs:
    """Capture-on-repeat cache of stage graphs on one CUDA ``device`` (see the module text).
    ``graph_factory()``: a new graph object with ``capture(fn) -> outputs`` and ``replay()``
    (default ``torch.cuda.CUDAGraph`` in one pool shared by all graphs); ``warmup``: eager runs of a new key on a side stream
    before its capture (lazy library initialisation must not happen inside a capture)."""

    def __init__(self, device, capture_after: int = 2, max_graphs: int = 256, warmup: int = 1,
                 graph_factory: Optional[Callable] = None):
        self.device = torch.device(device)
        if graph_factory is None:
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise BackendUnavailableError(
                    f"CUDA graphs need a CUDA device; the torch backend runs on {self.device} "
                    f"(torch.cuda.is_available() is {torch.cuda.is_available()}). Pass cuda_graphs=False "
                    "or device='cuda'.")
            pool = torch.cuda.graph_pool_handle()
            graph_factory = lambda: _TorchCudaGraph(pool)  # noqa: E731 - one shared pool
        for name, value, low in (("capture_after", capture_after, 1), ("max_graphs", max_graphs, 1),
                                 ("warmup", warmup, 0)):
            if not isinstance(value, int) or value < low:
                raise InputError(f"StageGraphs: {name} must be an int >= {low}, got {value!r}")
        self.capture_after, self.max_graphs, self.warmup = capture_after, max_graphs, warmup
        self._new_graph = graph_factory
        self._graphs: "OrderedDict[tuple, _Captured]" = OrderedDict()
        self._sightings: "OrderedDict[tuple, int]" = OrderedDict()
        self._lock = threading.Lock()
        self.stats = {"captures": 0, "replays": 0, "eager": 0, "evictions": 0}

    def __len__(self) -> int:
        return len(self._graphs)

    def _scalar(self, value: int) -> torch.Tensor:
        return torch.full((), int(value), dtype=torch.int64, device=self.device)

    def _as_call_leaves(self, leaves):
        return [self._scalar(x) if isinstance(x, ScalarInput) else x for x in leaves]

    def run(self, name: str, fn: Callable, *args):
        """``fn(*args)`` through the graph of its key (captured or replayed as the rules say).
        Tensor arguments must be on this device; ``ScalarInput`` arguments become tensors."""
        leaves: list = []
        spec = _flatten(args, leaves)
        key = (name, spec, tuple(_leaf_key(x) for x in leaves))
        with self._lock:
            captured = self._graphs.get(key)
            if captured is not None:
                self._graphs.move_to_end(key)
                return self._replay(captured, leaves)
            seen = self._sightings.pop(key, 0) + 1
            if seen < self.capture_after:
                self._sightings[key] = seen
                while len(self._sightings) > 4 * self.max_graphs:
                    self._sightings.popitem(last=False)
                self.stats["eager"] += 1
                return fn(*_unflatten(spec, self._as_call_leaves(leaves)))
            captured = self._capture(name, fn, spec, leaves)
            self._graphs[key] = captured
            if len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
                self.stats["evictions"] += 1
            return self._replay(captured, leaves)

    def _capture(self, name, fn, spec, leaves) -> _Captured:
        # Static inputs (outside the graph pool) the replays copy into.
        static = [self._scalar(x) if isinstance(x, ScalarInput) else _static_copy(x) for x in leaves]
        call = lambda: fn(*_unflatten(spec, static))  # noqa: E731
        graph = self._new_graph()
        try:
            if self.warmup and self.device.type == "cuda":
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    for _ in range(self.warmup):
                        call()
                torch.cuda.current_stream(self.device).wait_stream(side)
            out = graph.capture(call)
        except Exception as exc:  # a capture error names CUDA, not the stage: say which one
            raise BackendUnavailableError(
                f"CUDA graph capture of stage {name!r} failed ({type(exc).__name__}: {exc}); "
                "run the torch backend without cuda_graphs") from exc
        out_leaves: list = []
        out_spec = _flatten(out, out_leaves)
        self.stats["captures"] += 1
        return _Captured(graph, static, out_spec, out_leaves)

    def _replay(self, captured: _Captured, leaves) -> Any:
        for dst, src in zip(captured.static_leaves, leaves):
            if isinstance(src, ScalarInput):
                dst.fill_(int(src))
            else:
                dst.copy_(src)
        captured.graph.replay()
        self.stats["replays"] += 1
        return _unflatten(captured.out_spec, [t.clone() for t in captured.out_leaves])
