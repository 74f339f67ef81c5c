"""A stand-in for the ``tensorrt`` package (the TensorRT 10 Python API subset the project
calls), for tests on machines without TensorRT. Installed as ``sys.modules["tensorrt"]``.

It behaves like TensorRT where our code could get it wrong, and checks as TensorRT does:
* the parser maps a ``HydraScan`` node to the registered plugin creator named by the node's op
  type and its ``plugin_version`` / ``plugin_namespace`` attributes (not its domain), as
  onnx-tensorrt does; with no such creator it falls back to the node's model-local function
  (TensorRT >= 10.7; the layers are then ordinary ones), and fails only when there is none.
  ``INLINE_FUNCTIONS`` makes it a TensorRT <= 10.6, which inlines local functions first.
  "Plugin libraries" are text files listing creators;
* networks must be strongly typed; ``add_optimization_profile`` returns -1 for a profile that
  is not valid on its own (a shape without min/opt/max of one rank, min ≤ opt ≤ max); a build
  fails (returns None) unless every dynamic input has a profile of the right rank with static
  dims equal to the graph's, and every shape-tensor input has value ranges;
* a timing cache remembers the GPU it was made on: ``set_timing_cache(..., ignore_mismatch=False)``
  returns False for another GPU's;
* inputs TensorRT keeps in host memory: those named in ``SHAPE_INPUTS`` are shape tensors
  (``is_shape_inference_io`` true, location HOST) and those in ``HOST_INPUTS`` execution tensors
  the network placed on the host (location HOST only); ``get_tensor_location`` is the API that
  says where a tensor must live;
* devices: engines and execution contexts belong to the device current when they are made
  (``cuda_device(i)`` sets it, as ``cudaSetDevice`` does); ``execute_async_v3`` fails for a
  context made on another device than its engine, or run with another device current. With
  device memory registered (``register_device_memory``), every device tensor must be bound to
  device memory of the engine's device and every host tensor to host memory;
* an execution context refuses input shapes outside the profile; output shapes are known
  only once every input's shape and address are set; ``execute_async_v3`` needs every
  address; engine I/O dtypes are the graph's, and buffers are read and written at the raw
  addresses given (host memory here), so a wrong dtype, shape or address gives wrong numbers.
The "engine" is a JSON blob naming the ONNX file; it runs in ONNX Runtime on the CPU.
"""

from __future__ import annotations

import ctypes
import enum
import json

import numpy as np

__version__ = "10.99.0"


class Logger:
    WARNING = 2

    def __init__(self, level=None):
        self.level = level


INLINE_FUNCTIONS = False  # tests set it to act as a TensorRT that inlines model-local functions
SHAPE_INPUTS: set = set()  # input names TensorRT makes host shape tensors (tests set them)
HOST_INPUTS: set = set()   # execution inputs the network placed in host memory (tests set them)
GPU = "fake-gpu-0"         # what a timing cache made here is tagged with

_current_device = 0
_device_memory: list = []  # (start, end, device) of memory registered as device memory


class cuda_device:
    """Make ``index`` the current device for a block (``cudaSetDevice``)."""

    def __init__(self, index: int):
        self.index, self.previous = int(index), None

    def __enter__(self):
        global _current_device
        self.previous, _current_device = _current_device, self.index
        return self

    def __exit__(self, *exc):
        global _current_device
        _current_device = self.previous
        return False


def register_device_memory(ptr: int, nbytes: int, device: int) -> None:
    """Mark ``[ptr, ptr + nbytes)`` as memory of ``device`` (tests allocate "device" buffers on the
    host and register them; the memory must stay allocated while registered)."""
    _device_memory.append((int(ptr), int(ptr) + int(nbytes), int(device)))


def reset_devices() -> None:
    global _current_device
    _current_device = 0
    _device_memory.clear()


def _memory_device(ptr: int):
    """The device whose registered memory holds ``ptr``, or None (host memory)."""
    for start, end, device in _device_memory:
        if start <= ptr < end:
            return device
    return None


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    INT64 = 5
    BF16 = 6


class TensorIOMode(enum.Enum):
    INPUT = 1
    OUTPUT = 2


class TensorLocation(enum.Enum):
    DEVICE = 0
    HOST = 1


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 5


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


_FROM_ONNX = {1: DataType.FLOAT, 10: DataType.HALF, 7: DataType.INT64, 6: DataType.INT32,
              9: DataType.BOOL, 16: DataType.BF16}
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT64: np.int64,
       DataType.INT32: np.int32, DataType.BOOL: np.bool_}


class _Registry:
    def __init__(self):
        self.creators = set()

    def load_library(self, path):
        try:
            lines = open(path).read().split("\n")
        except (OSError, UnicodeDecodeError):
            return None
        found = {tuple(line.split()) for line in lines if line.strip()}
        if found and found <= self.creators:
            # Pessimistic stand-in: a registry may refuse to register the same creators twice
            # (not checked on a real TensorRT); the runtime loads each file once per process.
            return None
        self.creators |= found
        return object()

    def get_creator(self, name, version, namespace=""):
        return (name, version, namespace) if (name, version, namespace) in self.creators else None


_registry = _Registry()


def get_plugin_registry():
    return _registry


def _graph_io(path):
    import onnx

    g = onnx.load(path, load_external_data=False).graph

    def info(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": _FROM_ONNX[t.elem_type].name,
                "shape": [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]}

    return [info(v) for v in g.input], [info(v) for v in g.output], g


class _Input:
    def __init__(self, d, mode=None):
        self.name, self.shape, self.dtype = d["name"], tuple(d["shape"]), DataType[d["dtype"]]
        # The bundles' 0-d int64 inputs (n_valid, slot_offset, pe_start, pe_total) feed values
        # only (masks, position encoding), never a shape operand, so TensorRT makes them device
        # execution tensors unless a test says otherwise (SHAPE_INPUTS, HOST_INPUTS).
        is_input = mode in (None, TensorIOMode.INPUT)
        self.is_shape_tensor = is_input and self.name in SHAPE_INPUTS
        host = is_input and (self.name in SHAPE_INPUTS or self.name in HOST_INPUTS)
        self.location = TensorLocation.HOST if host else TensorLocation.DEVICE


class LayerType(enum.Enum):  # the members the project looks at
    PLUGIN_V3 = "PLUGIN_V3"
    OTHER = "OTHER"


class _Layer:
    def __init__(self, kind):
        self.type = kind


class _Network:
    def __init__(self, flags):
        self.flags, self.inputs, self.path, self.layers = flags, [], None, []

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, i):
        return self.layers[i]

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, i):
        return self.inputs[i]


class OnnxParser:
    def __init__(self, network, logger):
        self.network, self.errors = network, []

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]

    def parse_from_file(self, path):
        import onnx

        ins, _, g = _graph_io(path)
        functions = {(f.domain, f.name) for f in onnx.load(str(path), load_external_data=False).functions}
        layers = []
        for node in g.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
            local = (node.domain, node.op_type) in functions
            if node.domain in ("", "ai.onnx"):
                layers.append(_Layer(LayerType.OTHER))
            elif local and INLINE_FUNCTIONS:  # TensorRT <= 10.6: the function first
                layers.append(_Layer(LayerType.OTHER))
            elif "plugin_namespace" in attrs and _registry.get_creator(
                    node.op_type, str(attrs.get("plugin_version", "1")), attrs["plugin_namespace"]) is not None:
                layers.append(_Layer(LayerType.PLUGIN_V3))
            elif local:  # no matching creator: the model-local function (TensorRT >= 10.7)
                layers.append(_Layer(LayerType.OTHER))
            else:
                self.errors.append(f"no importer for {node.domain}::{node.op_type}: plugin "
                                   f"{node.op_type} version {attrs.get('plugin_version')} namespace "
                                   f"{attrs.get('plugin_namespace')} not registered and no local function")
                return False
        self.network.inputs = [_Input(d) for d in ins]
        self.network.path = str(path)
        self.network.layers = layers
        return True


class _Profile:
    def __init__(self):
        self.shapes, self.values = {}, {}

    def set_shape(self, name, mn, opt, mx):
        self.shapes[name] = [tuple(mn), tuple(opt), tuple(mx)]

    def set_shape_input(self, name, mn, opt, mx):
        self.values[name] = [list(mn), list(opt), list(mx)]

    def is_valid(self):
        """The partial check TensorRT makes without the network: one rank per shape and
        0 <= min <= opt <= max per dimension."""
        for s in self.shapes.values():
            if len({len(x) for x in s}) != 1 or any(not 0 <= a <= b <= c for a, b, c in zip(*s)):
                return False
        return all(v[0][i] <= v[1][i] <= v[2][i] for v in self.values.values() for i in range(len(v[0])))


_CACHE_MAGIC = b"fake timing cache for "


class _TimingCache:
    def __init__(self, blob):
        self.blob = bytes(blob)
        self.gpu = self.blob[len(_CACHE_MAGIC):].decode(errors="replace") if self.blob.startswith(_CACHE_MAGIC) \
            else (GPU if not self.blob else None)

    def serialize(self):
        return _CACHE_MAGIC + (self.gpu or "unknown").encode()


class _Config:
    def __init__(self):
        self.profiles, self.cache = [], None

    def set_memory_pool_limit(self, pool, size):
        assert pool == MemoryPoolType.WORKSPACE and size > 0

    def add_optimization_profile(self, profile):
        if not profile.is_valid():
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob):
        return _TimingCache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.gpu != GPU and not ignore_mismatch:  # another GPU's (or not a cache at all)
            return False
        self.cache = cache
        return True


class Builder:
    def __init__(self, logger):
        self.logger, self.errors = logger, []

    def create_network(self, flags):
        return _Network(flags)

    def create_builder_config(self):
        return _Config()

    def create_optimization_profile(self):
        return _Profile()

    def build_serialized_network(self, network, config):
        self.errors = []
        if not network.flags & (1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)):
            self.errors.append("network is not strongly typed")
        if len(config.profiles) != 1:
            self.errors.append(f"expected one profile, got {len(config.profiles)}")
            return None
        prof = config.profiles[0]
        for inp in network.inputs:
            if inp.is_shape_tensor:
                v = prof.values.get(inp.name)
                if v is None or not all(len(x) == 1 for x in v) or not v[0][0] <= v[1][0] <= v[2][0]:
                    self.errors.append(f"shape tensor {inp.name}: bad or missing value range {v}")
                continue
            if all(d >= 0 for d in inp.shape):
                continue
            s = prof.shapes.get(inp.name)
            if s is None:
                self.errors.append(f"dynamic input {inp.name} has no profile")
                continue
            for shape in s:
                if len(shape) != len(inp.shape) or any(d >= 0 and d != x for d, x in zip(inp.shape, shape)):
                    self.errors.append(f"{inp.name}: profile shape {shape} does not fit {inp.shape}")
            if any(not (a <= b <= c and a >= 0) for a, b, c in zip(*s)):
                self.errors.append(f"{inp.name}: need 0 <= min <= opt <= max, got {s}")
        if self.errors:
            return None
        blob = {"fake_tensorrt": __version__, "onnx": network.path,
                "profile": {k: [list(x) for x in v] for k, v in prof.shapes.items()},
                "shape_inputs": sorted(SHAPE_INPUTS), "host_inputs": sorted(HOST_INPUTS)}
        return json.dumps(blob).encode()


class Runtime:
    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, blob):
        try:
            d = json.loads(bytes(blob).decode())
            assert d["fake_tensorrt"] == __version__
        except (ValueError, KeyError, AssertionError, UnicodeDecodeError):
            return None
        return _Engine(d)


class _Engine:
    def __init__(self, d):
        import onnxruntime as ort

        global SHAPE_INPUTS, HOST_INPUTS
        self.device = _current_device  # deserialized onto the current device
        self.profile = {k: [tuple(x) for x in v] for k, v in d["profile"].items()}
        ins, outs, _ = _graph_io(d["onnx"])
        saved = SHAPE_INPUTS, HOST_INPUTS
        SHAPE_INPUTS, HOST_INPUTS = set(d.get("shape_inputs", ())), set(d.get("host_inputs", ()))
        try:  # the placement decided at build time
            self.io = [(_Input(i, TensorIOMode.INPUT), TensorIOMode.INPUT) for i in ins] + \
                      [(_Input(o, TensorIOMode.OUTPUT), TensorIOMode.OUTPUT) for o in outs]
        finally:
            SHAPE_INPUTS, HOST_INPUTS = saved
        self.by_name = {t.name: (t, mode) for t, mode in self.io}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(d["onnx"], opts, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self):
        return len(self.io)

    def get_tensor_name(self, i):
        return self.io[i][0].name

    def get_tensor_mode(self, name):
        return self.by_name[name][1]

    def get_tensor_dtype(self, name):
        return self.by_name[name][0].dtype

    def is_shape_inference_io(self, name):
        t, mode = self.by_name[name]
        return mode == TensorIOMode.INPUT and t.is_shape_tensor

    def get_tensor_location(self, name):
        return self.by_name[name][0].location

    def get_tensor_profile_shape(self, name, profile_index):
        # Strict: only inputs with dynamic dims are in the profile (what TensorRT returns for
        # the others is not documented, so the runtime must not ask).
        assert profile_index == 0 and name in self.profile, name
        return self.profile[name]

    def get_tensor_shape(self, name):
        return self.by_name[name][0].shape

    def create_execution_context(self):
        return _Context(self)


def _read(ptr, shape, dtype):
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if n == 0:
        return np.zeros(shape, dtype)
    buf = (ctypes.c_uint8 * n).from_address(ptr)
    return np.frombuffer(buf, np.uint8).view(dtype).reshape(shape).copy()


class _Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.outputs = engine, {}, {}, None
        self.device = _current_device  # its activation memory lives on the current device
        self.error = None

    def set_input_shape(self, name, shape):
        t = self.engine.by_name[name][0]
        lo, _, hi = self.engine.profile.get(name, [t.shape] * 3)  # static: exactly its shape
        shape = tuple(int(s) for s in shape)
        if len(shape) != len(t.shape) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name], self.outputs = shape, None
        return True

    def set_tensor_address(self, name, ptr):
        if int(ptr) % 256:  # "The pointer must have at least 256-byte alignment" (TensorRT 10)
            return False
        self.addresses[name] = int(ptr)
        if self.engine.by_name[name][1] == TensorIOMode.INPUT:
            self.outputs = None
        return True

    def _inputs(self):
        feeds = {}
        for t, mode in self.engine.io:
            if mode != TensorIOMode.INPUT:
                continue
            if t.name not in self.shapes and any(d < 0 for d in t.shape) or t.name not in self.addresses:
                return None
            shape = self.shapes.get(t.name, t.shape)
            feeds[t.name] = _read(self.addresses[t.name], shape, _NP[t.dtype])
        return feeds

    def get_tensor_shape(self, name):
        t, mode = self.engine.by_name[name]
        if mode == TensorIOMode.INPUT:
            return self.shapes.get(name, t.shape)
        if self.outputs is None:
            feeds = self._inputs()
            if feeds is None:
                return tuple(-1 if d < 0 else d for d in t.shape)
            wanted = [o.name for o, m in self.engine.io if m == TensorIOMode.OUTPUT]
            self.outputs = dict(zip(wanted, self.engine.session.run(wanted, feeds)))
        return self.outputs[name].shape

    def _placement_error(self):
        if self.device != self.engine.device or _current_device != self.engine.device:
            return (f"engine on device {self.engine.device}, execution context made on device {self.device}, "
                    f"run with device {_current_device} current")
        if not _device_memory:
            return None
        for t, _ in self.engine.io:
            ptr = self.addresses.get(t.name)
            if ptr is None:
                continue
            where = _memory_device(ptr)
            if t.location == TensorLocation.HOST and where is not None:
                return f"{t.name} must be in host memory, bound to memory of device {where}"
            if t.location == TensorLocation.DEVICE and where != self.engine.device:
                return (f"{t.name} must be in memory of device {self.engine.device}, bound to "
                        + ("host memory" if where is None else f"memory of device {where}"))
        return None

    def execute_async_v3(self, stream_handle):
        self.error = self._placement_error()
        if self.error:
            return False
        feeds = self._inputs()
        if feeds is None:
            return False
        wanted = [o.name for o, m in self.engine.io if m == TensorIOMode.OUTPUT]
        if any(n not in self.addresses for n in wanted):
            return False
        for n, arr in zip(wanted, self.engine.session.run(wanted, feeds)):
            want_dtype = _NP[self.engine.by_name[n][0].dtype]
            arr = np.ascontiguousarray(arr.astype(want_dtype, copy=False))
            if arr.nbytes:
                ctypes.memmove(self.addresses[n], arr.ctypes.data, arr.nbytes)
        return True
