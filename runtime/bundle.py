"""Export bundles (folder with ``manifest.json`` + one ONNX graph per stage) and the
ONNX Runtime / TensorRT backends that run them. Torch-free."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from hieramamba.errors import BackendUnavailableError, CheckpointError

BUNDLE_FORMAT = "hieramamba-runtime-bundle/2"  # 2: global levels in gattn_* stages
SCAN_OP_VERSION = "1"


def read_manifest(bundle_dir) -> dict:
    """Read and check a bundle manifest; raises CheckpointError on a missing file or a version
    this runtime does not understand."""
    path = Path(bundle_dir) / "manifest.json"
    if not path.is_file():
        raise CheckpointError(f"{bundle_dir}: not a runtime bundle (no manifest.json); export one "
                              "with hieramamba.export.stages.export_bundle")
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable manifest ({exc})") from exc
    if man.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path}: bundle format is {man.get('format')!r}, this runtime reads "
                              f"{BUNDLE_FORMAT!r}; re-export the bundle with this version")
    if str(man.get("scan_op_version")) != SCAN_OP_VERSION:
        raise CheckpointError(f"{path}: HydraScan op version is {man.get('scan_op_version')!r}, "
                              f"expected {SCAN_OP_VERSION!r}; re-export the bundle")
    for key in ("plan", "stages", "dtype"):
        if key not in man:
            raise CheckpointError(f"{path}: manifest lacks {key!r}")
    for name, st in man["stages"].items():
        if not (Path(bundle_dir) / st["file"]).is_file():
            raise CheckpointError(f"{bundle_dir}: stage {name!r} file {st['file']} is missing")
    return man


class OrtBackend:
    """Runs the stage graphs of a bundle with ONNX Runtime (``providers`` as ORT takes them;
    default CPU). Sessions are created on first use, under a lock; ``InferenceSession.run`` is
    thread-safe, so one backend serves concurrent calls."""

    name = "onnxruntime"

    def __init__(self, bundle_dir, providers=None, intra_op_threads: int | None = None,
                 cpu_mem_arena: bool = False):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("the onnxruntime backend needs the onnxruntime package "
                                          "(pip install 'hieramamba[runtime]')") from exc
        self.ort = ort
        self.dir = Path(bundle_dir)
        self.manifest = read_manifest(bundle_dir)
        self.plan = self.manifest["plan"]
        self.dtype = np.float16 if self.manifest["dtype"] == "float16" else np.float32
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = intra_op_threads
        # Off by default: every stage/level has its own session, and each session's arena kept
        # its largest chunk's buffers (tiny default, 3 h video: 248 → 134 MB peak, same latency).
        self.cpu_mem_arena = cpu_mem_arena
        self._sessions, self._lock = {}, threading.Lock()

    def _session(self, name):
        with self._lock:
            sess = self._sessions.get(name)
            if sess is None:
                st = self.manifest["stages"].get(name)
                if st is None:
                    raise CheckpointError(f"{self.dir}: bundle has no stage {name!r}")
                opts = self.ort.SessionOptions()
                opts.enable_cpu_mem_arena = self.cpu_mem_arena
                if self.threads:
                    opts.intra_op_num_threads = self.threads
                sess = self.ort.InferenceSession(str(self.dir / st["file"]), opts, providers=self.providers)
                self._sessions[name] = (sess, {i.name for i in sess.get_inputs()})
                sess = self._sessions[name]
            return sess

    def _run(self, name, **feeds):
        sess, wanted = self._session(name)
        return sess.run(None, {k: v for k, v in feeds.items() if k in wanted})

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

    def zeros_state(self, level, batch):
        s = self.plan["scan"][level]
        return np.zeros((batch, s["H"], s["P"], s["N"]), np.float32)

    def zeros_row(self, level, batch):
        s = self.plan["scan"][level]
        return np.zeros((batch, s["G"], s["N"]), self.dtype)

    # -- stages ----------------------------------------------------------------------------
    def text(self, text, text_mask):
        return tuple(self._run("text", text=self.from_numpy(text), text_mask=self.from_numpy(text_mask)))

    def front(self, vid, mask, text, text_mask, pe_start, pe_total):
        return self._run("front", video=vid, video_mask=mask, text_enc=text, text_enc_mask=text_mask,
                         pe_start=np.asarray(pe_start, np.int64), pe_total=np.asarray(pe_total, np.int64))[0]

    def amp_pre(self, level, tokens, mask, n_valid, slot_offset):
        out = self._run(f"pre{level}", tokens=tokens, mask=mask, n_valid=np.asarray(n_valid, np.int64),
                        slot_offset=np.asarray(slot_offset, np.int64))
        return {"seq": out[0], "seq_mask": out[1], "z": out[2], "scan": tuple(out[3:10])}

    def scan(self, level, scan, state_f0, state_b0, c_f_prev, c_b_next):
        names = ("x", "dt_f", "dt_b", "B_f", "C_f", "B_b", "C_b")
        feeds = {n: np.ascontiguousarray(t) for n, t in zip(names, scan)}
        y, sf, sb = self._run(f"scan{level}", **feeds, state_f0=state_f0, state_b0=state_b0,
                              c_f_prev=np.ascontiguousarray(c_f_prev), c_b_next=np.ascontiguousarray(c_b_next))
        return y, sf, sb

    def amp_post(self, level, pre, y):
        return self._run(f"post{level}", seq=np.ascontiguousarray(pre["seq"]),
                         seq_mask=np.ascontiguousarray(pre["seq_mask"]), y=y,
                         x=np.ascontiguousarray(pre["scan"][0]), z=np.ascontiguousarray(pre["z"]))[0]

    def amp_local(self, level, fused1, seq_mask):
        a, t = self._run(f"local{level}", fused1=np.ascontiguousarray(fused1),
                         seq_mask=np.ascontiguousarray(seq_mask))
        return a, t

    def gattn_in(self, level, fused1, seq_mask):
        return tuple(self._run(f"gattn_in{level}", fused1=np.ascontiguousarray(fused1),
                               seq_mask=np.ascontiguousarray(seq_mask)))

    def gattn_rows(self, level, q_rows, k, v, seq_mask):
        return self._run(f"gattn_rows{level}", q=np.ascontiguousarray(q_rows), k=k, v=v,
                         seq_mask=np.ascontiguousarray(seq_mask))[0]

    def gattn_out(self, level, fused1, seq_mask, attn):
        a, t = self._run(f"gattn_out{level}", fused1=np.ascontiguousarray(fused1),
                         seq_mask=np.ascontiguousarray(seq_mask), attn=np.ascontiguousarray(attn))
        return a, t

    def heads(self, level, tokens, mask, text, text_mask):
        lg, of = self._run(f"heads{level}", tokens=np.ascontiguousarray(tokens), mask=mask,
                           text_enc=text, text_enc_mask=text_mask)
        return lg, of


def tensorrt_backend(bundle_dir, plugin_library=None):
    """TensorRT engines per stage. Absent-safe: raises BackendUnavailableError with the reason
    when TensorRT or the HydraScan plugin library is not available."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            "the tensorrt backend needs TensorRT's Python package (pip install 'hieramamba[tensorrt]') "
            "and a GPU; use backend='onnxruntime' here") from exc
    if plugin_library is not None and not Path(plugin_library).is_file():
        raise BackendUnavailableError(f"HydraScan TensorRT plugin library not found: {plugin_library} "
                                      "(build plugins/ with CMake where TensorRT is installed)")
    raise BackendUnavailableError("per-stage TensorRT engines are not built by this version yet "
                                  "(see docs/runtime.md); use backend='onnxruntime'")
