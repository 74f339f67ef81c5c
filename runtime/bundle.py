"""Export bundles (folder with ``manifest.json`` + one ONNX graph per stage), the stage methods
shared by the backends that run their graphs, and the ONNX Runtime backend. Torch-free (the
TensorRT backend is ``runtime/trt.py``)."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from hieramamba.errors import BackendUnavailableError, CheckpointError

# 2: global levels in gattn_* stages; 3: one heads stage; 4: HydraScan nodes get their dt inputs
# in one dtype (fp16 bundles had A in fp32, the rest in fp16: refused by the TensorRT plugin's
# format table and by the ONNX Runtime kernel).
BUNDLE_FORMAT = "hieramamba-runtime-bundle/4"
# The HydraScan node / TensorRT plugin identity (DESIGN §3), one place for export and runtime.
SCAN_OP_TYPE = "HydraScan"
SCAN_OP_DOMAIN = "hieramamba"  # ONNX domain and plugin namespace
SCAN_OP_VERSION = "1"
# How ONNX Runtime runs HydraScan nodes (ort_session_options): native kernel, function body, or
# native when the library is built.
SCAN_KERNEL_CHOICES = ("auto", "native", "graph")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path, what: str, missing: str) -> dict:
    """A JSON manifest; CheckpointError(``missing``) when the file is absent, one naming the file
    when it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable {what} ({exc})") from exc


def ort_session_options(ort, threads=None, *, arena: bool = True, mem_pattern: bool = False,
                        spinning: bool = True, scan_kernel: str = "graph"):
    """``onnxruntime.SessionOptions`` as this project runs its graphs. ``threads``: intra-op
    threads (None: ORT's default, one per physical core); ``arena``: the CPU memory arena;
    ``mem_pattern``: ORT plans one block for all of a run's intermediates per input shape — off
    by default: the whole-model MAD graph (8192 clips, 2 threads) peaked at 1282 MB (1 query) /
    3797 MB (4 queries) with it and 856 / 2112 MB without, at equal latency (docs/export.md);
    ``spinning``: idle intra-op threads spin (see ``OrtBackend``); ``scan_kernel``: how
    ``hieramamba::HydraScan`` nodes run — ``"graph"``: their ONNX function body, op by op;
    ``"native"``: the C++ kernel of ``libhieramamba_plugins`` (required; same results, faster,
    docs/export.md); ``"auto"``: native when the library is built, else the body. Use
    ``resolve_scan_kernel`` first to know which one ``"auto"`` gives."""
    so = ort.SessionOptions()
    so.enable_mem_pattern = mem_pattern
    so.enable_cpu_mem_arena = arena
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads:
        so.intra_op_num_threads = threads
    if resolve_scan_kernel(scan_kernel) == "native":
        from hieramamba.native_library import register_ort_scan_kernel

        register_ort_scan_kernel(so, required=True)
    return so


CPU_ARENA_CHOICES = ("shared", "session", "off")
_shared_arena_lock = threading.Lock()
_shared_arena_registered = False


def use_shared_cpu_arena(ort, so) -> None:
    """Sessions created with ``so`` take their CPU buffers from one arena registered in ONNX
    Runtime's environment (created on the first call, once per process) instead of each
    owning an arena or none. For the runtime's ~50 stage sessions: buffers are reused across
    calls and stages (no fresh pages per call), and memory is the largest stage's, not the sum
    of every session's largest (docs/runtime.md). Extends by exactly what is requested."""
    global _shared_arena_registered
    with _shared_arena_lock:
        if not _shared_arena_registered:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
            _shared_arena_registered = True
    so.enable_cpu_mem_arena = True
    so.add_session_config_entry("session.use_env_allocators", "1")


def resolve_scan_kernel(choice: str) -> str:
    """``"native"`` or ``"graph"`` for a ``scan_kernel`` choice (``"auto"``: native when
    ``libhieramamba_plugins`` can be loaded). ``"native"`` without the library raises
    ``BackendUnavailableError`` with the build command."""
    from hieramamba.native_library import load_native_library

    if choice not in SCAN_KERNEL_CHOICES:
        raise ValueError(f"scan_kernel must be one of {SCAN_KERNEL_CHOICES}, got {choice!r}")
    if choice == "graph":
        return "graph"
    found = load_native_library(required=choice == "native") is not None
    return "native" if found else "graph"


def read_manifest(bundle_dir) -> dict:
    """Read and check a bundle manifest; raises CheckpointError on a missing file or a version
    this runtime does not understand."""
    path = Path(bundle_dir) / "manifest.json"
    man = read_json(path, "manifest", f"{bundle_dir}: not a runtime bundle (no manifest.json); export "
                    "one with hieramamba.export.stages.export_bundle")
    if man.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: bundle format is {man.get('format')!r}, this runtime reads "
                              f"{BUNDLE_FORMAT!r}; re-export the bundle with this version")
    if str(man.get("scan_op_version")) != SCAN_OP_VERSION:
        raise CheckpointError(f"{path}: HydraScan op version is {man.get('scan_op_version')!r}, "
                              f"expected {SCAN_OP_VERSION!r}; re-export the bundle")
    for key in ("plan", "stages", "dtype"):
        if key not in man:
            raise CheckpointError(f"{path}: manifest lacks {key!r}")
    require_stage_files(bundle_dir, man["stages"], "stage")
    return man


def require_stage_files(folder, stages: dict, what: str) -> None:
    """CheckpointError naming the first ``{stage: {"file": ...}}`` entry missing from ``folder``."""
    for name, st in stages.items():
        if not (Path(folder) / st["file"]).is_file():
            raise CheckpointError(f"{folder}: {what} file {st['file']} of stage {name!r} is missing")


class StageGraphBackend:
    """The stage methods of the scheduler (see ``TorchBackend``) over a bundle's stage graphs,
    one place for every backend that runs graphs: a subclass provides ``_run(stage, **feeds)``
    (returns the stage's outputs in order; feeds it does not declare are dropped), ``_dense``
    (a contiguous array of its kind) and the array helpers."""

    def __init__(self, bundle_dir):
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(bundle_dir)
        self.plan = self.manifest["plan"]

    def _run(self, stage, **feeds):  # pragma: no cover - abstract
        raise NotImplementedError

    def _dense(self, a):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _index(v):
        return np.asarray(v, np.int64)

    def text(self, text, text_mask):
        return tuple(self._run("text", text=self.from_numpy(text), text_mask=self.from_numpy(text_mask)))

    def front(self, vid, mask, text, text_mask, pe_start, pe_total):
        return self._run("front", video=vid, video_mask=mask, text_enc=text, text_enc_mask=text_mask,
                         pe_start=self._index(pe_start), pe_total=self._index(pe_total))[0]

    def amp_pre(self, level, tokens, mask, n_valid, slot_offset):
        out = self._run(f"pre{level}", tokens=self._dense(tokens), mask=mask, n_valid=self._index(n_valid),
                        slot_offset=self._index(slot_offset))
        return {"seq": out[0], "seq_mask": out[1], "z": out[2], "scan": tuple(out[3:10])}

    def scan(self, level, scan, state_f0, state_b0, c_f_prev, c_b_next):
        names = ("x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b")
        feeds = {n: self._dense(t) for n, t in zip(names, scan)}
        y, sf, sb = self._run(f"scan{level}", **feeds, state_f0=state_f0, state_b0=state_b0,
                              c_f_prev=self._dense(c_f_prev), c_b_next=self._dense(c_b_next))
        return y, sf, sb

    def amp_post(self, level, pre, y):
        d = self._dense
        return self._run(f"post{level}", seq=d(pre["seq"]), seq_mask=d(pre["seq_mask"]), y=y,
                         x=d(pre["scan"][0]), z=d(pre["z"]))[0]

    def amp_local(self, level, fused1, seq_mask):
        a, t = self._run(f"local{level}", fused1=self._dense(fused1), seq_mask=self._dense(seq_mask))
        return a, t

    def gattn_in(self, level, fused1, seq_mask):
        return tuple(self._run(f"gattn_in{level}", fused1=self._dense(fused1), seq_mask=self._dense(seq_mask)))

    def gattn_rows(self, level, q_rows, k, v, seq_mask):
        return self._run(f"gattn_rows{level}", q=self._dense(q_rows), k=k, v=v,
                         seq_mask=self._dense(seq_mask))[0]

    def gattn_out(self, level, fused1, seq_mask, attn):
        a, t = self._run(f"gattn_out{level}", fused1=self._dense(fused1), seq_mask=self._dense(seq_mask),
                         attn=self._dense(attn))
        return a, t

    def heads(self, level, tokens, mask, text, text_mask):
        lg, of = self._run("heads", tokens=self._dense(tokens), mask=mask, text_enc=text, text_enc_mask=text_mask,
                           level_scale=np.asarray(self.plan["head_scales"][level], np.float32))
        return lg, of


class OrtBackend(StageGraphBackend):
    """Runs the stage graphs of a bundle with ONNX Runtime (``providers`` as ORT takes them;
    default CPU). Sessions are created on first use, under a lock; ``InferenceSession.run`` is
    thread-safe, so one backend serves concurrent calls."""

    name = "onnxruntime"

    def __init__(self, bundle_dir, providers=None, intra_op_threads: int | None = None,
                 cpu_arena: str = "shared", spinning: bool = False, scan_kernel: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("the onnxruntime backend needs the onnxruntime package "
                                          "(pip install 'hieramamba[runtime]')") from exc
        super().__init__(bundle_dir)
        self.ort = ort
        self.dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32
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
        if scan_kernel == "auto" and any(n != "CPUExecutionProvider" for n in names):
            scan_kernel = "graph"
        self.scan_kernel = resolve_scan_kernel(scan_kernel)
        self._sessions, self._lock = {}, threading.Lock()

    def _session(self, name):
        with self._lock:
            sess = self._sessions.get(name)
            if sess is None:
                st = self.manifest["stages"].get(name)
                if st is None:
                    raise CheckpointError(f"{self.dir}: bundle has no stage {name!r}")
                # Memory patterns: with the arena off they replace many large allocations per
                # call by one (Ego4D 2304 clips × 8 queries, 2 threads: 6.9–7.4 s with, 9.6–9.9 s
                # without); with the shared arena they only pinned a per-shape block per session.
                opts = ort_session_options(self.ort, self.threads, arena=self.cpu_arena != "off",
                                           mem_pattern=self.cpu_arena != "shared",
                                           spinning=self.spinning, scan_kernel=self.scan_kernel)
                if self.cpu_arena == "shared":
                    use_shared_cpu_arena(self.ort, opts)
                sess = self.ort.InferenceSession(str(self.dir / st["file"]), opts, providers=self.providers)
                self._sessions[name] = (sess, {i.name for i in sess.get_inputs()})
                sess = self._sessions[name]
            return sess

    def _run(self, name, **feeds):
        sess, wanted = self._session(name)
        return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})

    _dense = staticmethod(np.ascontiguousarray)

    # -- array helpers ---------------------------------------------------------------------
    def from_numpy(self, a):
        a = np.asarray(a)
        return np.ascontiguousarray(a if a.dtype == bool else a.astype(self.dtype, copy=False))

    def to_numpy(self, a):
        return np.asarray(a, dtype=np.float64)

    def cat(self, arrays, axis):
        return np.concatenate(arrays, axis=axis)

    def copy(self, a):
        return np.array(a, copy=True, order="C")

    def empty_like(self, a, shape):
        return np.empty(shape, a.dtype)

    def zeros_state(self, level, batch):
        s = self.plan["scan"][level]
        return np.zeros((batch, s["H"], s["P"], s["N"]), np.float32)

    def zeros_row(self, level, batch):
        s = self.plan["scan"][level]
        return np.zeros((batch, s["G"], s["N"]), self.dtype)
