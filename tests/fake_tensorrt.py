"""A stand-in for the ``tensorrt`` package (the TensorRT 10 Python API subset the project
calls), for tests on machines without TensorRT. Installed as ``sys.modules["tensorrt"]``.

It behaves like TensorRT where our code could get it wrong, and checks as TensorRT does:
* the parser needs the ``HydraScan`` plugin creator (name, version, namespace) in the registry
  for graphs that hold the node; "plugin libraries" are text files listing creators;
* networks must be strongly typed; a build fails (returns None) unless every dynamic input has
  a profile of the right rank with static dims equal to the graph's and min ≤ opt ≤ max, and
  every shape-tensor input (0-d int64 here) has value ranges;
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
    def __init__(self, d):
        self.name, self.shape, self.dtype = d["name"], tuple(d["shape"]), DataType[d["dtype"]]
        # The bundles' 0-d int64 inputs (n_valid, slot_offset, pe_start, pe_total) feed values
        # only (masks, position encoding), never a shape operand, so TensorRT makes them device
        # execution tensors, not host shape tensors.
        self.is_shape_tensor = False


class LayerType(enum.Enum):  # the members the project looks at
    PLUGIN_V3 = "PLUGIN_V3"
    OTHER = "OTHER"


class _Layer:
    def __init__(self, node, inline_plugins):
        plugin = node.op_type == "HydraScan" and not inline_plugins
        self.type = LayerType.PLUGIN_V3 if plugin else LayerType.OTHER


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
        ins, _, g = _graph_io(path)
        for node in g.node:
            if node.op_type == "HydraScan" and _registry.get_creator("HydraScan", "1", node.domain) is None:
                self.errors.append(f"plugin HydraScan version 1 namespace {node.domain} not registered")
                return False
        self.network.inputs = [_Input(d) for d in ins]
        self.network.path = str(path)
        # INLINE_FUNCTIONS=1: parse as a TensorRT that prefers the node's ONNX function (<= 10.6).
        self.network.layers = [_Layer(n, INLINE_FUNCTIONS) for n in g.node]
        return True


class _Profile:
    def __init__(self):
        self.shapes, self.values = {}, {}

    def set_shape(self, name, mn, opt, mx):
        self.shapes[name] = [tuple(mn), tuple(opt), tuple(mx)]

    def set_shape_input(self, name, mn, opt, mx):
        self.values[name] = [list(mn), list(opt), list(mx)]


class _TimingCache:
    def __init__(self, blob):
        self.blob = bytes(blob)

    def serialize(self):
        return b"fake timing cache"


class _Config:
    def __init__(self):
        self.profiles, self.cache = [], None

    def set_memory_pool_limit(self, pool, size):
        assert pool == MemoryPoolType.WORKSPACE and size > 0

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob):
        return _TimingCache(blob)

    def set_timing_cache(self, cache, ignore_mismatch):
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
                "profile": {k: [list(x) for x in v] for k, v in prof.shapes.items()}}
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

        self.profile = {k: [tuple(x) for x in v] for k, v in d["profile"].items()}
        ins, outs, _ = _graph_io(d["onnx"])
        self.io = [(_Input(i), TensorIOMode.INPUT) for i in ins] + [(_Input(o), TensorIOMode.OUTPUT) for o in outs]
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

    def execute_async_v3(self, stream_handle):
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
