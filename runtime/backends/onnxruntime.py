"""The ONNX Runtime backend: a bundle's stage graphs, one session per stage instance. Torch-free."""

from __future__ import annotations

import threading

import numpy as np

from hieramamba.artifacts import REEXPORT
from hieramamba.errors import BackendUnavailableError, CheckpointError, InputError
from hieramamba.ort_options import (CPU_ARENA_CHOICES, DEFAULT_SCAN_KERNEL, ort_session_options,
                                    resolve_scan_kernel, use_shared_cpu_arena)

from . import GraphBackend
from .arrays import NumpyArrays


class OrtBackend(GraphBackend):
    """Runs the stage graphs of a bundle with ONNX Runtime (``providers`` as ORT takes them;
    default CPU). Sessions are created on first use, under a lock, each after its stage file was
    checked against the manifest's hash; ``InferenceSession.run`` is thread-safe, so one backend
    serves concurrent calls."""

    name = "onnxruntime"

    def __init__(self, bundle_dir, providers=None, intra_op_threads: int | None = None,
                 cpu_arena: str = "shared", spinning: bool = False, scan_kernel: str = DEFAULT_SCAN_KERNEL):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("the onnxruntime backend needs the onnxruntime package "
                                          "(pip install 'hieramamba[runtime]')") from exc
        super().__init__(bundle_dir)
        self.ort = ort
        self.arrays = NumpyArrays(np.float16 if self.manifest.dtype == "float16" else np.float32)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = intra_op_threads
        # CPU buffers: "shared" (default): one arena for all stage sessions, memory patterns off;
        # "off": malloc per buffer, memory patterns on (one block per call); "session": an arena
        # per session (each kept its largest chunk: tiny default, 3 h video, 248 MB vs 134 MB off).
        # Ego4D 2304 clips, fp32 bundle, 2 threads: 1 query 0.70 s / 475 MB shared vs 0.81 s /
        # 488 MB off; 8 queries 4.4 s / 2053 MB vs 5.9 s / 1505 MB (docs/runtime.md).
        if cpu_arena not in CPU_ARENA_CHOICES:
            raise ValueError(f"cpu_arena must be one of {CPU_ARENA_CHOICES}, got {cpu_arena!r}")
        self.cpu_arena = cpu_arena
        # Off by default: each stage session owns an intra-op pool whose threads spin after its
        # calls. With the cores shared with another busy process that cost 4× (tiny default, 1 h
        # video, 2 threads: 0.97–1.22 s spinning, 0.27 s not); on an idle machine the two are
        # within noise (0.24–0.26 vs 0.25–0.27 s; Ego4D 2304 clips: 0.79–0.92 vs 0.85–0.91 s).
        self.spinning = spinning
        # "native" or "graph" (ort_session_options): the C++ HydraScan kernel when the plugin
        # library is built, else the nodes' function body (docs/performance.md). "auto" keeps the
        # body on a GPU provider: the kernel is a CPU-provider kernel, the scan would bounce to host.
        names = [p if isinstance(p, str) else p[0] for p in self.providers]
        if self.manifest.dtype == "bfloat16":
            # Its hieramamba nodes (Bf16Conv, Bf16FeedForward, ChannelNorm, …) have no ONNX body: only the library runs them.
            if scan_kernel == "graph" or any(n != "CPUExecutionProvider" for n in names):
                raise InputError(f"{bundle_dir}: a bfloat16 bundle runs on the CPU provider with the native "
                                 "library's kernels (scan_kernel 'auto' or 'native'); export a float16 or float32 "
                                 "bundle for other providers")
            scan_kernel = "native"
        elif scan_kernel == "auto" and any(n != "CPUExecutionProvider" for n in names):
            scan_kernel = "graph"
        self.scan_kernel = resolve_scan_kernel(scan_kernel)
        self._sessions, self._lock = {}, threading.Lock()

    def _session(self, name):
        with self._lock:
            entry = self._sessions.get(name)
            if entry is None:
                entry = self._sessions[name] = self._open(name)
            return entry

    def _open(self, name):
        st = self.manifest.stages.get(name)
        if st is None:
            raise CheckpointError(f"{self.dir}: bundle has no stage {name!r}; {REEXPORT}")
        self.manifest.verify_stage_files(self.dir, [name])
        # Memory patterns: with the arena off they replace many large allocations per call by
        # one (Ego4D 2304 clips × 8 queries, 2 threads: 6.9–7.4 s with, 9.6–9.9 s without); with
        # the shared arena they only pinned a per-shape block per session.
        opts = ort_session_options(self.ort, self.threads, arena=self.cpu_arena != "off",
                                   mem_pattern=self.cpu_arena != "shared", spinning=self.spinning,
                                   scan_kernel=self.scan_kernel)
        if self.cpu_arena == "shared":
            use_shared_cpu_arena(self.ort, opts)
        path = self.dir / st.file
        try:
            sess = self.ort.InferenceSession(str(path), opts, providers=self.providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: ONNX Runtime cannot load this stage graph "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); {REEXPORT}") from None
        wanted = {i.name for i in sess.get_inputs()}
        unknown = sorted(wanted - set(st.inputs))
        if unknown:
            raise CheckpointError(f"{path}: the graph takes inputs {unknown} that stage {name} does not have "
                                  f"(a file of another stage?); {REEXPORT}")
        return sess, wanted

    def _run(self, name, feeds):
        sess, wanted = self._session(name)
        return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
