"""ONNX Runtime (CPU) against eager PyTorch: per-output max abs / rel errors.

ONNX Runtime is called directly (``InferenceSession``); nothing here re-implements what it does.
The relative error of an output is ``max|ort − eager| / max|eager|`` (norm-wise: element-wise
ratios are meaningless where the reference crosses zero). Masks must match exactly.
The eager reference is always the fp32 model, also for an fp16 graph: that is the error a user
of the fp16 graph sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from hieramamba.errors import BackendUnavailableError, ExportError

from .onnx_export import GroundingGraph, example_inputs, model_io_names


@dataclass
class OutputError:
    name: str
    max_abs: float
    max_rel: float
    mask_mismatches: int = 0


@dataclass
class CaseResult:
    T: int
    nq: int
    text_len: int
    errors: list
    ort_seconds: float
    eager_seconds: float

    def worst(self, prefixes=("logits", "offsets")) -> float:
        vals = [e.max_rel for e in self.errors if e.name.startswith(tuple(prefixes))]
        return max(vals) if vals else 0.0

    def mask_mismatches(self) -> int:
        return sum(e.mask_mismatches for e in self.errors)


def ort_session(path, threads: Optional[int] = None, scan_kernel: str = "graph"):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime is not installed: pip install "
                                      "'hieramamba[export]'") from exc
    from hieramamba.ort_options import ort_session_options

    so = ort_session_options(ort, threads, scan_kernel=scan_kernel)
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not load {path}: {exc}") from exc


def compare_outputs(names: Sequence[str], got: Sequence[np.ndarray], ref: Sequence[torch.Tensor]):
    errs = []
    for name, g, r in zip(names, got, ref):
        r = r.detach().cpu().numpy()
        if g.shape != r.shape:
            raise ExportError(f"output {name}: ONNX Runtime shape {g.shape}, eager {r.shape}")
        if r.dtype == np.bool_:
            errs.append(OutputError(name, 0.0, 0.0, int((g != r).sum())))
            continue
        d = np.abs(g.astype(np.float64) - r.astype(np.float64))
        scale = float(np.abs(r).max()) if r.size else 0.0
        mabs = float(d.max()) if d.size else 0.0
        errs.append(OutputError(name, mabs, mabs / scale if scale > 0 else mabs))
    return errs


def run_case(session, model, T: int, nq: int, text_len: int, *, dtype=torch.float32,
             seed: int = 0, valid: Optional[int] = None, eager_graph=None,
             eager_cache: Optional[dict] = None) -> CaseResult:
    """One input set: random video of length ``T`` (valid up to ``valid``), ``nq`` random
    queries of ``text_len`` tokens with varied valid lengths; eager fp32 vs the session.
    ``eager_cache``: a dict shared by calls on the same model; the eager outputs (and their
    time) of an input set are computed once and reused for the other graphs/dtypes."""
    graph = eager_graph or GroundingGraph(model).eval()
    args = example_inputs(model, T, nq, text_len, seed=seed, valid=valid)
    ins, outs = model_io_names(model.num_levels)
    feed = {}
    for name, a in zip(ins, args):
        a = a.numpy()
        if a.dtype != np.bool_ and dtype == torch.float16:
            a = a.astype(np.float16)
        feed[name] = a
    t0 = time.perf_counter()
    got = session.run(outs, feed)
    ort_seconds = time.perf_counter() - t0
    key = (T, nq, text_len, seed, valid)
    if eager_cache is not None and key in eager_cache:
        ref, eager_seconds = eager_cache[key]
    else:
        t1 = time.perf_counter()
        with torch.no_grad():
            ref = graph(*args)
        eager_seconds = time.perf_counter() - t1
        if eager_cache is not None:
            eager_cache[key] = (ref, eager_seconds)
    return CaseResult(T, nq, text_len, compare_outputs(outs, got, ref), ort_seconds, eager_seconds)


def format_case(r: CaseResult) -> str:
    lines = [f"T={r.T} queries={r.nq} text_len={r.text_len}: ORT {r.ort_seconds * 1e3:.1f} ms, "
             f"eager {r.eager_seconds * 1e3:.1f} ms"]
    for e in r.errors:
        if e.name.startswith("masks"):
            lines.append(f"  {e.name:12s} mask mismatches {e.mask_mismatches}")
        else:
            lines.append(f"  {e.name:12s} max abs {e.max_abs:.3e}  max rel {e.max_rel:.3e}")
    return "\n".join(lines)
