"""The contract layer (DESIGN §1): what ``export/`` writes and ``runtime/`` reads. Torch-free.

* ``SCAN_OP``: the identity of the HydraScan node and TensorRT plugin (DESIGN §3).
* ``Plan``: the static description of a model that chunked grounding needs (no weights).
* ``BundleManifest``: a runtime bundle's ``manifest.json`` (plan + one ONNX file per stage).
* ``EngineLimits`` / ``EnginesManifest``: a TensorRT engines folder's ``engines.json``.
* ``read_artifact`` / ``write_artifact``: every manifest of the project (these two and the
  single-file ``<file>.onnx.json`` / ``<file>.engine.json`` of ``hieramamba.export``) is JSON
  with a ``schema`` name and an integer ``version``, written atomically, refused with one line
  naming the file and the command that makes a new one when the schema or version differs.
* ``file_sha256`` and ``verify_file``: artifact files are checked against the hash their
  manifest records, once per process per file identity.

Each typed record has one ``from_dict`` that validates types, ranges and consistency (raising
``CheckpointError`` that names the file and the field) and one ``to_dict``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import CheckpointError, InputError

MASK_SEMANTICS = ("official", "per_sample")
BUNDLE_DTYPES = ("float32", "float16", "bfloat16")  # bfloat16: float32 I/O, bf16 convolution operands


# -- the HydraScan op identity -----------------------------------------------------------------
@dataclass(frozen=True)
class OpIdentity:
    """A custom ONNX node and the TensorRT plugin it maps to: ``domain`` is also the plugin
    namespace, ``version`` the plugin version (a string, as TensorRT keys creators), and
    ``function_version`` the opset version of the domain holding the node's local function."""
    domain: str
    op_type: str
    version: str
    function_version: int


SCAN_OP = OpIdentity(domain="hieramamba", op_type="HydraScan", version="1", function_version=1)


# -- files -------------------------------------------------------------------------------------
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_verified: dict = {}  # file identity -> sha256 it had when verified
_verified_lock = threading.Lock()


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def verify_file(path, sha256: str, what: str, remedy: str) -> None:
    """``CheckpointError`` unless the file at ``path`` has ``sha256``. A file whose identity
    (path, inode, size, modification time) was verified before in this process is not read again:
    opening a bundle twice costs one hash of each file, not two."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} is missing; {remedy}")
    key = _identity(path)
    with _verified_lock:
        if _verified.get(key) == sha256:
            return
    actual = file_sha256(path)
    if actual != sha256:
        raise CheckpointError(f"{path}: {what} does not match its manifest (sha256 {actual[:12]}…, "
                              f"recorded {sha256[:12]}…): changed or corrupted after it was written; {remedy}")
    with _verified_lock:
        _verified[key] = sha256


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(path) -> None:
    """Remove the temporary siblings (``.<name>.<pid>.*``) an earlier writer of ``path`` left when
    it was killed: those whose process is gone. Live writers' (other processes', this one's) stay."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    prefix = f".{path.name}."
    for sib in path.parent.glob(f".{glob_escape(path.name)}.*"):
        pid = sib.name[len(prefix):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if sib.is_dir() and not sib.is_symlink():
            import shutil

            shutil.rmtree(sib, ignore_errors=True)
        else:
            try:
                sib.unlink()
            except OSError:
                pass


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def temp_sibling(path, folder: bool = False) -> Path:
    """A new temporary file (or folder) beside ``path`` named ``.<name>.<pid>.<random>``, after
    removing stale ones of dead writers (``remove_stale_temps``): renamed onto ``path`` when done."""
    path = Path(path)
    remove_stale_temps(path)
    prefix = f".{path.name}.{os.getpid()}."
    umask = os.umask(0)
    os.umask(umask)
    if folder:  # mkdtemp/mkstemp make private (0700/0600) entries: give the usual permissions
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        os.chmod(tmp, 0o777 & ~umask)
        return tmp
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_atomic(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling and a rename: never a half file."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def check_output_location(path, flag: str, folder: bool = False) -> Path:
    """Before any work: ``InputError`` unless ``path`` can be written (a file, or with ``folder`` a
    folder that does not exist yet): its nearest existing ancestor must be a writable folder, and
    an existing ``path`` a writable file. ``flag`` names the option in the message."""
    path = Path(path).expanduser()
    if folder and path.exists():
        raise InputError(f"{flag} {path} already exists; remove it or choose another")
    if path.exists() and (path.is_dir() or not os.access(path, os.W_OK)):
        raise InputError(f"{flag} {path} is {'a folder' if path.is_dir() else 'not writable'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write into {parent} (permission denied)")
    return path


def check_output_folder(path, flag: str) -> Path:
    """``InputError`` unless ``path`` is (or can be made) a folder this process can write into."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{flag} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"{flag} {path}: cannot write into it (permission denied)")
        return path
    return check_output_location(path, flag, folder=True)


def write_artifact(path, schema: str, version: int, body: Mapping[str, Any]) -> Path:
    """``{"schema", "version", **body}`` as JSON at ``path``, atomically."""
    doc = {"schema": schema, "version": version, **body}
    return write_atomic(path, (json.dumps(doc, indent=1, default=str) + "\n").encode())


def content_hash(body: Mapping[str, Any]) -> str:
    """The hash a manifest records of its own content (canonical JSON): an edit is noticed."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def read_artifact(path, schema: str, version: int, remedy: str, missing: Optional[str] = None) -> dict:
    """The JSON document at ``path`` if it is an object of ``schema`` at ``version``; otherwise
    ``CheckpointError`` naming the file, what is wrong and ``remedy`` (the command that writes a
    new one). ``missing``: the message for an absent file (default: says it is missing)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing or f"{path} is missing; {remedy}")
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON manifest ({exc}); {remedy}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: a manifest is a JSON object, this holds a {type(doc).__name__}; {remedy}")
    if doc.get("schema") != schema:
        old = doc.get("format")
        found = f"an older hieramamba's format {old!r}" if old else f"schema {doc.get('schema')!r}"
        raise CheckpointError(f"{path}: {found}, this hieramamba reads schema {schema!r}; {remedy}")
    if doc.get("version") != version:
        raise CheckpointError(f"{path}: {schema} version {doc.get('version')!r}, this hieramamba reads "
                              f"version {version}; {remedy}")
    return doc


# -- field checks ----------------------------------------------------------------------------
class _Fields:
    """Typed access to one JSON object with errors that name the file and the field."""

    def __init__(self, doc, where: str):
        if not isinstance(doc, dict):
            raise CheckpointError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        self.doc, self.where = doc, where

    def _get(self, key):
        if key not in self.doc:
            raise CheckpointError(f"{self.where}: field {key!r} is missing")
        return self.doc[key]

    def fail(self, key, want, value):
        raise CheckpointError(f"{self.where}: field {key!r} must be {want}, got {value!r}")

    def int(self, key, low=None, high=None):
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int) or (low is not None and v < low) or (
                high is not None and v > high):
            bounds = "" if low is None else f" ≥ {low}" + ("" if high is None else f" and ≤ {high}")
            self.fail(key, f"an int{bounds}", v)
        return v

    def number(self, key, positive=False):
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (positive and v <= 0):
            self.fail(key, "a finite positive number" if positive else "a finite number", v)
        return float(v)

    def bool(self, key):
        v = self._get(key)
        if not isinstance(v, bool):
            self.fail(key, "true or false", v)
        return v

    def str(self, key, choices=None):
        v = self._get(key)
        if not isinstance(v, str) or (choices is not None and v not in choices):
            self.fail(key, f"one of {list(choices)}" if choices else "a string", v)
        return v

    def list(self, key, length=None):
        v = self._get(key)
        if not isinstance(v, list) or (length is not None and len(v) != length):
            self.fail(key, "a list" + (f" of {length} entries" if length is not None else ""), v)
        return v

    def obj(self, key):
        v = self._get(key)
        if not isinstance(v, dict):
            self.fail(key, "a JSON object", v)
        return _Fields(v, f"{self.where}: {key}")

    def optional(self, key, reader, *args, **kwargs):
        return None if self.doc.get(key) is None else reader(key, *args, **kwargs)


# -- the plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanDims:
    """HydraScan sizes of one level: heads ``H``, head dim ``P``, state dim ``N``, groups ``G``."""
    H: int
    P: int
    N: int
    G: int


DECODE_KEYS = ("pre_nms_thresh", "pre_nms_topk", "seg_len_thresh", "nms")
NMS_KEYS = ("mode", "iou_thresh", "min_score", "max_num_segs", "sigma", "voting_thresh")


@dataclass(frozen=True)
class Plan:
    """What grounding needs to know about a model besides its weights: the pyramid (levels,
    stride, which levels are windowed), the sizes of the stage tensors, the query grouping of
    the official evaluator, the decoding settings (``decode``: the config's ``eval`` keys
    ``pre_nms_thresh``, ``pre_nms_topk``, ``seg_len_thresh``, ``nms``), the clip geometry
    defaults and the regression head's per-level scales. Built from a model by
    ``hieramamba.stage_modules.plan_from_model``; stored in a bundle's manifest."""
    num_levels: int
    vid_stride: int
    windowed: tuple
    early_fusion: bool
    mask_semantics: str
    vid_in_dim: int
    text_in_dim: int
    embd_dim: int            # D: backbone width
    text_enc_dim: int        # C: encoded text width
    text_extra_tokens: int   # tokens the text encoder adds (the background token)
    attn_heads: int          # heads of the global-attention levels' local encoder
    scan: tuple              # ScanDims per level
    pad_multiple: int
    max_text_len: int
    batchify: bool
    decode: Mapping[str, Any]
    clip_size: float
    clip_stride: float
    head_scales: tuple

    @property
    def max_num_segs(self) -> int:
        return int(self.decode["nms"]["max_num_segs"])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windowed"], d["head_scales"] = list(self.windowed), list(self.head_scales)
        d["scan"] = [asdict(s) for s in self.scan]
        d["decode"] = json.loads(json.dumps(self.decode))
        return d

    @classmethod
    def from_dict(cls, doc, where: str = "plan") -> "Plan":
        f = _Fields(doc, where)
        levels = f.int("num_levels", 1, 64)
        stride = f.int("vid_stride", 1)
        windowed = f.list("windowed", levels)
        if not all(isinstance(w, bool) for w in windowed):
            f.fail("windowed", "a list of true/false", windowed)
        scans = []
        for i, s in enumerate(f.list("scan", levels)):
            sf = _Fields(s, f"{where}: scan[{i}]")
            dims = ScanDims(sf.int("H", 1), sf.int("P", 1), sf.int("N", 1), sf.int("G", 1))
            if dims.H % dims.G:
                sf.fail("G", f"a divisor of H={dims.H}", dims.G)
            scans.append(dims)
        scales = f.list("head_scales", levels)
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scales):
            f.fail("head_scales", "a list of finite numbers", scales)
        embd, heads = f.int("embd_dim", 1), f.int("attn_heads", 1)
        if embd % heads:
            f.fail("attn_heads", f"a divisor of embd_dim={embd}", heads)
        pad = f.int("pad_multiple", 1)
        if pad != 2 ** (levels - 1) * stride:
            f.fail("pad_multiple", f"2^(num_levels-1)·vid_stride = {2 ** (levels - 1) * stride}", pad)
        decode = f.obj("decode")
        decode.number("pre_nms_thresh")
        decode.int("pre_nms_topk", 1)
        decode.number("seg_len_thresh")
        nms = decode.obj("nms")
        nms.str("mode")
        for key in ("iou_thresh", "min_score", "sigma", "voting_thresh"):
            nms.number(key)
        nms.int("max_num_segs", 1)
        return cls(num_levels=levels, vid_stride=stride, windowed=tuple(windowed),
                   early_fusion=f.bool("early_fusion"),
                   mask_semantics=f.str("mask_semantics", MASK_SEMANTICS),
                   vid_in_dim=f.int("vid_in_dim", 1), text_in_dim=f.int("text_in_dim", 1),
                   embd_dim=embd, text_enc_dim=f.int("text_enc_dim", 1),
                   text_extra_tokens=f.int("text_extra_tokens", 0, 1), attn_heads=heads,
                   scan=tuple(scans), pad_multiple=pad, max_text_len=f.int("max_text_len", 1),
                   batchify=f.bool("batchify"), decode=decode.doc,
                   clip_size=f.number("clip_size", positive=True),
                   clip_stride=f.number("clip_stride", positive=True),
                   head_scales=tuple(float(s) for s in scales))


# -- bundles -----------------------------------------------------------------------------------
BUNDLE_SCHEMA, BUNDLE_VERSION = "hieramamba.bundle", 5
BUNDLE_MANIFEST = "manifest.json"
REEXPORT = "re-export the bundle with `hieramamba export-bundle`"


@dataclass(frozen=True)
class StageFile:
    """One stage graph of a bundle (or one engine of an engines folder)."""
    file: str
    sha256: str
    inputs: tuple
    outputs: tuple
    hydra_scan_nodes: int = 0
    profile: Optional[Mapping[str, Any]] = None  # engines: the optimization profile built for

    def to_dict(self) -> dict:
        d = {"file": self.file, "sha256": self.sha256, "inputs": list(self.inputs),
             "outputs": list(self.outputs), "hydra_scan_nodes": self.hydra_scan_nodes}
        if self.profile is not None:
            d["profile"] = self.profile
        return d

    @classmethod
    def from_dict(cls, doc, where: str) -> "StageFile":
        f = _Fields(doc, where)
        name = f.str("file")
        if Path(name).name != name or name in ("", ".", ".."):
            f.fail("file", "a file name inside the folder", name)
        sha = f.str("sha256")
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            f.fail("sha256", "64 hex digits", sha)
        ins, outs = f.list("inputs"), f.list("outputs")
        if not all(isinstance(n, str) for n in ins + outs):
            f.fail("inputs", "lists of names", (ins, outs))
        return cls(name, sha, tuple(ins), tuple(outs), f.int("hydra_scan_nodes", 0),
                   doc.get("profile"))


def _check_stage_io(stages: Mapping[str, StageFile], plan: Plan, where: str) -> None:
    """The stages are exactly the stage table's instances for ``plan``, each with the table's
    input and output names (the runtime feeds them by these names)."""
    from .stage_table import stage_instances

    want = {inst.name: inst.spec for inst in stage_instances(plan)}
    if set(stages) != set(want):
        missing, extra = sorted(set(want) - set(stages)), sorted(set(stages) - set(want))
        raise CheckpointError(f"{where}: stages do not match the plan ({plan.num_levels} levels): "
                              f"missing {missing}, unexpected {extra}")
    for name, st in stages.items():
        spec = want[name]
        if st.inputs != spec.input_names or st.outputs != spec.output_names:
            raise CheckpointError(f"{where}: stage {name} has inputs {list(st.inputs)} / outputs "
                                  f"{list(st.outputs)}, the stage table says {list(spec.input_names)} / "
                                  f"{list(spec.output_names)}")


@dataclass(frozen=True)
class BundleManifest:
    dtype: str
    opset: int
    plan: Plan
    stages: Mapping[str, StageFile]
    scan_op_version: str = SCAN_OP.version
    export_seconds: Optional[float] = None

    @property
    def mask_semantics(self) -> str:
        return self.plan.mask_semantics

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "opset": self.opset, "scan_op_version": self.scan_op_version,
                "plan": self.plan.to_dict(), "stages": {k: v.to_dict() for k, v in self.stages.items()},
                "export_seconds": self.export_seconds}

    def write(self, folder) -> Path:
        body = self.to_dict()
        body["content_sha256"] = content_hash(body)
        return write_artifact(Path(folder) / BUNDLE_MANIFEST, BUNDLE_SCHEMA, BUNDLE_VERSION, body)

    @classmethod
    def read(cls, folder) -> "BundleManifest":
        """Read and validate ``folder/manifest.json`` (schema, types, consistency with the stage
        table). Stage files are checked by ``verify_stage_files``."""
        path = Path(folder) / BUNDLE_MANIFEST
        doc = read_artifact(path, BUNDLE_SCHEMA, BUNDLE_VERSION, REEXPORT,
                            missing=f"{folder}: not a runtime bundle (no {BUNDLE_MANIFEST}); export one with "
                                    "`hieramamba export-bundle`")
        f = _Fields(doc, str(path))
        body = {k: v for k, v in doc.items() if k not in ("schema", "version", "content_sha256")}
        if f.str("content_sha256") != content_hash(body):
            raise CheckpointError(f"{path}: the manifest was edited after export (its content hash differs); "
                                  f"{REEXPORT}")
        op_version = f.str("scan_op_version")
        if op_version != SCAN_OP.version:
            f.fail("scan_op_version", f"{SCAN_OP.version!r} (this hieramamba's HydraScan); {REEXPORT}", op_version)
        plan = Plan.from_dict(doc.get("plan"), f"{path}: plan")
        stages = {name: StageFile.from_dict(st, f"{path}: stages.{name}")
                  for name, st in f.obj("stages").doc.items()}
        _check_stage_io(stages, plan, str(path))
        return cls(dtype=f.str("dtype", BUNDLE_DTYPES), opset=f.int("opset", 1), plan=plan, stages=stages,
                   scan_op_version=op_version, export_seconds=doc.get("export_seconds"))

    def verify_stage_files(self, folder, names=None) -> None:
        """Every stage file (or those in ``names``) has the hash the manifest records."""
        for name in (self.stages if names is None else names):
            st = self.stages[name]
            verify_file(Path(folder) / st.file, st.sha256, f"stage file of {name!r}", REEXPORT)


def bundle_fingerprint(folder) -> str:
    """The hash of a bundle's manifest (which records every stage file's hash): engines and
    cached derivatives belong to one bundle."""
    return file_sha256(Path(folder) / BUNDLE_MANIFEST)


# -- TensorRT engines --------------------------------------------------------------------------
ENGINES_SCHEMA, ENGINES_VERSION = "hieramamba.trt_engines", 2
ENGINES_MANIFEST = "engines.json"
MIN_TRT_MAJOR = 10


def _positive_int(what, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{what} must be a positive int, got {v!r}")


# build-engines' default chunk: on a GPU larger calls pay, and activations live in device memory.
DEFAULT_ENGINE_CHUNK = 2048


@dataclass(frozen=True)
class EngineLimits:
    """What per-stage engines accept: ``chunk`` level tokens per chunk (the runtime's ``chunk``
    may be smaller), ``max_batch`` queries per backbone batch, ``max_text_len`` query tokens,
    ``max_clips`` video features, ``attn_rows`` rows per global-attention block (None: the
    runtime's default)."""
    chunk: int
    max_batch: int
    max_text_len: int
    max_clips: int
    attn_rows: Optional[int] = None

    def __post_init__(self):
        for what in ("chunk", "max_batch", "max_text_len", "max_clips"):
            _positive_int(f"engine limit {what}", getattr(self, what))
        if self.chunk < 2 or self.chunk % 2:
            raise InputError(f"engine limit chunk must be an even int ≥ 2, got {self.chunk}")
        if self.attn_rows is not None:
            _positive_int("engine limit attn_rows", self.attn_rows)

    def describe(self) -> str:
        return (f"chunk={self.chunk}, max_batch={self.max_batch}, max_text_len={self.max_text_len}, "
                f"max_clips={self.max_clips}" + (f", attn_rows={self.attn_rows}" if self.attn_rows else ""))


REBUILD = "rebuild the engines with `hieramamba build-engines`"


@dataclass(frozen=True)
class EnginesManifest:
    bundle: str                 # bundle_fingerprint of the bundle they were built from
    dtype: str
    limits: EngineLimits
    tensorrt_version: str
    gpu: Mapping[str, Any]      # name, compute_capability
    plugin: Mapping[str, Any]   # library, name, version, namespace
    stages: Mapping[str, StageFile]
    build_seconds: Optional[float] = None

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "dtype": self.dtype, "limits": asdict(self.limits),
                "tensorrt_version": self.tensorrt_version, "gpu": dict(self.gpu), "plugin": dict(self.plugin),
                "stages": {k: v.to_dict() for k, v in self.stages.items()}, "build_seconds": self.build_seconds}

    def write(self, folder) -> Path:
        return write_artifact(Path(folder) / ENGINES_MANIFEST, ENGINES_SCHEMA, ENGINES_VERSION, self.to_dict())

    @classmethod
    def read(cls, folder, bundle_dir, bundle: BundleManifest) -> "EnginesManifest":
        """Read and check an engines folder against its bundle: schema, fingerprint, one engine
        per bundle stage. TensorRT version, GPU and engine hashes are checked by the backend."""
        path = Path(folder) / ENGINES_MANIFEST
        doc = read_artifact(path, ENGINES_SCHEMA, ENGINES_VERSION, REBUILD,
                            missing=f"{folder}: no TensorRT engines there ({ENGINES_MANIFEST} missing); "
                                    f"build them with `hieramamba build-engines {bundle_dir}`")
        f = _Fields(doc, str(path))
        if f.str("bundle") != bundle_fingerprint(bundle_dir):
            raise CheckpointError(f"{path}: these engines were built from another bundle than {bundle_dir} "
                                  f"(re-exported or changed since); {REBUILD}")
        lim = f.obj("limits")
        try:
            limits = EngineLimits(lim.int("chunk"), lim.int("max_batch"), lim.int("max_text_len"),
                                  lim.int("max_clips"), lim.optional("attn_rows", lim.int))
        except InputError as exc:
            raise CheckpointError(f"{path}: {exc}; {REBUILD}") from None
        stages = {name: StageFile.from_dict(st, f"{path}: stages.{name}")
                  for name, st in f.obj("stages").doc.items()}
        missing = sorted(set(bundle.stages) - set(stages))
        if missing:
            raise CheckpointError(f"{path}: no engine for stage(s) {', '.join(missing)}; {REBUILD}")
        gpu, plugin = f.obj("gpu"), f.obj("plugin")
        return cls(bundle=doc["bundle"], dtype=f.str("dtype", BUNDLE_DTYPES), limits=limits,
                   tensorrt_version=f.str("tensorrt_version"), gpu=gpu.doc, plugin=plugin.doc,
                   stages=stages, build_seconds=doc.get("build_seconds"))
