"""The ``hieramamba profile`` workload: the bench workload through the public ``Grounder``
(model forward + decoding + Soft-NMS), with NVTX ranges on and a capture range.

- ``mode="nvtx"``: for Nsight Systems. Warm-up runs first; the timed runs sit between
  ``torch.cuda.profiler.start()`` and ``stop()`` (``cudaProfilerStart/Stop``; used when CUDA is
  present) so ``nsys profile --capture-range=cudaProfilerApi`` records only them.
- ``mode="record"``: no Nsight needed (the CPU fallback): the ranges record their own
  durations (host wall clock; CUDA events on a GPU) and a per-range summary is returned.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hieramamba import nvtx
from hieramamba.errors import InputError

from .nsys import rows_from_recording, summarize_ranges


@dataclass
class ProfileSettings:
    config: str = "tiny"
    experiment: Optional[str] = None
    clips: int = 256
    queries: int = 1
    tokens: Optional[int] = None  # default min(20, eval.max_text_len)
    dtype: str = "float32"
    device: str = "cpu"
    warmup: int = 1
    repeats: int = 3
    seed: int = 0
    mode: str = "record"
    threads: Optional[int] = None


def _cuda_profiler(device: str):
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.profiler
    return None


def run_profile(ps: ProfileSettings, log=print) -> dict:
    import torch

    from hieramamba.inference import Grounder

    from .bench import BenchSettings, load_model

    if ps.mode not in ("nvtx", "record"):
        raise InputError(f"profile mode must be 'nvtx' or 'record', got {ps.mode!r}")
    if ps.threads:
        torch.set_num_threads(ps.threads)
    model, opt, weights = load_model(BenchSettings(config=ps.config, experiment=ps.experiment,
                                                   device=ps.device, seed=ps.seed))
    dtype = getattr(torch, ps.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise InputError(f"dtype must be float32, float16 or bfloat16, got {ps.dtype!r}")
    grounder = Grounder(model, opt, device=ps.device, dtype=dtype)
    rng = np.random.default_rng(ps.seed)
    video = rng.standard_normal((ps.clips, model.vid_in_dim), dtype=np.float32)
    tokens = ps.tokens or min(20, opt["eval"].get("max_text_len", 20))
    queries = [rng.standard_normal((tokens, model.text_in_dim), dtype=np.float32)
               for _ in range(ps.queries)]
    cuda_prof = _cuda_profiler(ps.device)
    cuda = cuda_prof is not None

    def once():
        grounder.ground(video, queries, fps=30.0)
        if cuda:
            torch.cuda.synchronize()

    previous = nvtx.mode()
    for _ in range(ps.warmup):
        once()
    times = []
    with nvtx.profiling(ps.mode, record_cuda_events=cuda):
        if cuda_prof is not None:
            cuda_prof.start()
        try:
            for _ in range(ps.repeats):
                t0 = time.perf_counter()
                once()
                times.append(time.perf_counter() - t0)
        finally:
            if cuda_prof is not None:
                cuda_prof.stop()
        backend = nvtx.backend_description()
        durations = nvtx.recorded() if ps.mode == "record" else {}
    assert nvtx.mode() == previous
    result = {"settings": ps.__dict__, "weights": weights, "backend": backend,
              "capture_range": "cudaProfilerStart/Stop" if cuda else "none (no CUDA device)",
              "latency_s": {"median": statistics.median(times), "runs": times}}
    if durations:
        result["ranges"] = summarize_ranges(rows_from_recording(durations))
        result["per_run_note"] = (f"totals are over {ps.repeats} run(s); recording adds a clock read per "
                                  "range boundary and, on CPU, host time includes op dispatch")
    return result
