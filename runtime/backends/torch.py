"""Torch backend of the chunk scheduler: the stages are the model's own stage modules
(``hieramamba.stage_modules``, the ones the exporter traces), run eagerly or, on CUDA, each
replayed as a CUDA graph captured for its shapes (``cuda_graphs.StageGraphs``). Imported only when
asked for (``GroundingRuntime.from_model``)."""

from __future__ import annotations

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised without torch
    from hieramamba.errors import BackendUnavailableError
    raise BackendUnavailableError("the torch backend needs PyTorch installed") from exc

from hieramamba.device import resolve_device
from hieramamba.stage_modules import plan_from_model, stage_module
from hieramamba.stage_table import instance_name, stage

from .arrays import TorchArrays


class TorchBackend:
    """Stages over a ``HieraMamba`` in eval mode (moved to ``device`` and ``dtype`` float32 or
    float16/bfloat16, in place). ``cuda_graphs`` (CUDA devices): each stage call replays a CUDA
    graph captured for its shapes (``True`` or a ready ``StageGraphs``); the text encoder stays
    eager (once per query batch, a new length per query)."""

    name = "torch"

    def __init__(self, model, opt: dict, device="cpu", dtype=torch.float32, cuda_graphs=False):
        self.device, self.dtype = resolve_device(device), dtype
        self.graphs = None
        if cuda_graphs is True:
            from .cuda_graphs import StageGraphs

            self.graphs = StageGraphs(self.device)  # raises with the reason off CUDA
        elif cuda_graphs is not False and cuda_graphs is not None:
            self.graphs = cuda_graphs
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.plan = plan_from_model(self.model, opt)  # after the cast: the head scales as run
        self.arrays = TorchArrays(self.device, dtype)
        self._modules = {}

    def _module(self, name, level):
        key = instance_name(name, level)
        mod = self._modules.get(key)
        if mod is None:
            mod = self._modules[key] = stage_module(self.model, name, level)
        return mod

    @torch.no_grad()
    def call(self, name, level, inputs):
        mod = self._module(name, level)
        args = [inputs[p] for p in stage(name).input_names]
        if self.graphs is None or name == "text":
            out = mod(*args)
        else:
            out = self.graphs.run(instance_name(name, level), mod, *args)
        return out if isinstance(out, tuple) else (out,)

    def check_request(self, num_clips=None, chunk=None, max_batch=None) -> None:
        return None
