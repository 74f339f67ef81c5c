"""The per-video task, run by every engine's workers: a worker opens the bundle once
(``GroundingRuntime.load``), then grounds one video per call with all its queries through the
grounding pipeline — the same call ``hieramamba eval --bundle`` makes per video — and returns its
segments (or its error) to the driver, which writes the result file.

Features are read as the evaluation dataset reads them: float32, every ``downsample_rate``-th
row; ``.npy`` without pickles (torch-free), ``.pt`` through the dataset's safe tensor loader.

Test hook (tests only): a ``WorkerConfig.kill_video`` makes the worker that receives that video
``os._exit`` once, before grounding it; the marker file ``kill_marker`` makes it once per run
directory (the driver sets both from ``HIERAMAMBA_CORPUS_TEST_KILL=<video_id>``).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from hieramamba.errors import DataError
from hieramamba.ort_options import DEFAULT_SCAN_KERNEL

from .results import DataSettings


@dataclass(frozen=True)
class WorkerConfig:
    bundle: str
    backend: str = "onnxruntime"
    threads: Optional[int] = None          # ONNX Runtime intra-op threads
    scan_kernel: str = DEFAULT_SCAN_KERNEL
    engines: Optional[str] = None          # tensorrt: engines folder
    plugin: Optional[str] = None           # tensorrt: plugin library
    settings: DataSettings = DataSettings()
    kill_video: Optional[str] = None       # test hook, see the module docstring
    kill_marker: Optional[str] = None


def read_features(path: str, what: str) -> np.ndarray:
    """A ``(rows, dim)`` float32 array from ``.npy`` (no pickles) or ``.pt`` (tensors only)."""
    if path.endswith(".pt"):
        from hieramamba.data.datasets import read_feature_array  # weights_only loader; imports torch

        return read_feature_array(path, what)
    if not path.endswith(".npy"):
        raise DataError(f"{what}: {path} is not a .npy or .pt feature file")
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{what}: feature file not found: {path}") from None
    except Exception as exc:  # numpy raises many types for truncated or foreign files
        raise DataError(f"{what}: cannot read feature file {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] < 1:
        raise DataError(f"{what}: {path} must hold a (rows, dim) array with rows ≥ 1, "
                        f"got {getattr(arr, 'shape', type(arr).__name__)}")
    return np.asarray(arr, dtype=np.float32)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CorpusWorker:
    """Opens the bundle once; ``ground(task)`` per video. Never raises: an error opening the
    bundle is reported by every call (``kind: init_error``; the driver stops the run), an error
    of one video by that call (``kind: error``)."""

    def __init__(self, config: WorkerConfig, device: Optional[str] = None):
        from hieramamba.artifacts import bundle_fingerprint
        from hieramamba.runtime import GroundingRuntime

        self.config, self.name = config, f"{socket.gethostname()}:{os.getpid()}"
        self.runtime, self.init_error, self.bundle = None, None, None
        try:
            self.bundle = bundle_fingerprint(config.bundle)  # on this node: the driver checks it is the same
            if config.backend == "onnxruntime":
                extra = {"threads": config.threads, "scan_kernel": config.scan_kernel}
            else:
                extra = {"engines": config.engines, "plugin_library": config.plugin, "device": device or "cuda"}
            self.runtime = GroundingRuntime.load(config.bundle, backend=config.backend,
                                                 text_overflow=config.settings.text_overflow, **extra)
        except Exception as exc:
            self.init_error = (type(exc).__name__, f"worker {self.name} could not open {config.bundle}: "
                                                   f"{' '.join(str(exc).split())}")

    def _maybe_exit_for_test(self, video_id: str) -> None:
        if self.config.kill_video != video_id or self.config.kill_marker is None:
            return
        try:
            os.close(os.open(self.config.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(17)

    def ground(self, task) -> dict:
        if self.init_error is not None:
            return {"kind": "init_error", "error_type": self.init_error[0], "error": self.init_error[1]}
        self._maybe_exit_for_test(task.video_id)
        t0 = time.perf_counter()
        try:
            s = self.config.settings
            video = read_features(task.video_path, f"video {task.video_id!r}")[::s.downsample_rate]
            queries = [read_features(p, f"video {task.video_id!r}, query {q!r}")
                       for q, p in zip(task.query_ids, task.query_paths)]
            results = self.runtime.ground(video, queries, fps=task.fps, duration=task.duration,
                                          clip_size=s.clip_size, clip_stride=s.clip_stride)
        except Exception as exc:  # this video fails, the run goes on; the status table says why
            return {"kind": "error", "error": one_line(exc), "worker": self.name,
                    "seconds": time.perf_counter() - t0}
        return {"kind": "result", "predictions": [[[g.start_sec, g.end_sec, g.score] for g in segs] for segs in results],
                "bundle": self.bundle, "worker": self.name, "seconds": time.perf_counter() - t0}
