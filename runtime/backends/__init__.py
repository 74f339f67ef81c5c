"""Backends of the chunk scheduler: each runs the stages of ``hieramamba.stage_table``.

* ``onnxruntime.OrtBackend`` — a bundle's stage graphs in ONNX Runtime (torch-free).
* ``tensorrt.TrtBackend`` — a bundle's stages as TensorRT engines on a CUDA device.
* ``torch.TorchBackend`` — the model's own stage modules (``hieramamba.stage_modules``), eager or
  as CUDA graphs (``cuda_graphs.StageGraphs``).

A backend has the ``StageBackend`` interface; ``GraphBackend`` is the shared part of the two that
run a bundle's graphs (open and verify the bundle, feed each graph by the names the manifest
records). Importing this package imports neither torch nor onnxruntime nor tensorrt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Protocol

from hieramamba.artifacts import BundleManifest
from hieramamba.stage_table import instance_name


class StageBackend(Protocol):
    name: str
    plan: Any      # hieramamba.artifacts.Plan
    arrays: Any    # arrays.NumpyArrays or arrays.TorchArrays

    def call(self, stage: str, level: Optional[int], inputs: Mapping[str, Any]) -> tuple:
        """Run stage ``stage`` (of level ``level`` for per-level stages) on named inputs (the
        stage table's input names, values of this backend's array kind); its outputs in the
        table's order."""

    def check_request(self, num_clips=None, chunk=None, max_batch=None) -> None:
        """Refuse, before running, what this backend cannot take (engines built for limits)."""


class GraphBackend:
    """A bundle folder's stage graphs: reads and checks its manifest (schema, plan, stage table;
    stage file hashes when a stage is first opened) and feeds a graph its inputs by name. A
    subclass provides ``_run(instance, feeds) -> outputs``."""

    def __init__(self, bundle_dir):
        self.dir = Path(bundle_dir)
        self.manifest = BundleManifest.read(self.dir)
        self.plan = self.manifest.plan

    def call(self, stage, level, inputs):
        name = instance_name(stage, level)
        dense = self.arrays.dense
        return tuple(self._run(name, {k: dense(v) for k, v in inputs.items()}))

    def check_request(self, num_clips=None, chunk=None, max_batch=None) -> None:
        return None

    def _run(self, instance: str, feeds: dict):  # pragma: no cover - abstract
        raise NotImplementedError
