"""Array helpers of the chunk scheduler, one namespace per array kind: NumPy arrays (ONNX
Runtime) and torch tensors (the torch and TensorRT backends). Importing this module does not
import torch; ``TorchArrays`` imports it when created.

Each namespace makes host values into backend arrays by port kind (``hieramamba.stage_table``):
``from_numpy`` (float features in the backend's dtype, bool masks), ``index`` (a 0-d int64 input),
``scale`` (a 0-d fp32 input), ``zeros(shape, kind)`` (``"state"``: fp32 scan states, ``"float"``:
the backend's dtype); and it handles the arrays stages return: ``to_numpy`` (float64 on the host),
``cat``, ``copy`` (a compact copy of a view), ``empty_like(a, shape)`` (uninitialized, a's dtype
and device), ``dense`` (contiguous, for graph inputs).
"""

from __future__ import annotations

import numpy as np


class ScalarInput(int):
    """A Python int a stage receives that changes between calls (the torch backend's CUDA graphs
    make it a 0-d int64 input tensor updated in place, instead of part of the graph's key)."""


class NumpyArrays:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def from_numpy(self, a):
        a = np.asarray(a)
        return np.ascontiguousarray(a if a.dtype == bool else a.astype(self.dtype, copy=False))

    @staticmethod
    def index(v):
        return np.asarray(v, np.int64)

    @staticmethod
    def scale(v):
        return np.asarray(v, np.float32)

    def zeros(self, shape, kind):
        return np.zeros(shape, np.float32 if kind == "state" else self.dtype)

    @staticmethod
    def to_numpy(a):
        return np.asarray(a, dtype=np.float64)

    @staticmethod
    def cat(arrays, axis):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def copy(a):
        return np.array(a, copy=True, order="C")

    @staticmethod
    def empty_like(a, shape):
        return np.empty(shape, a.dtype)

    @staticmethod
    def dense(a):
        a = np.asarray(a)
        return a if a.ndim == 0 or a.flags.c_contiguous else np.ascontiguousarray(a)  # 0-d stays 0-d


class TorchArrays:
    def __init__(self, device, dtype):
        import torch

        self.torch, self.device, self.dtype = torch, torch.device(device), dtype

    def from_numpy(self, a):
        a = np.ascontiguousarray(a)
        t = self.torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        return t if t.dtype == self.torch.bool else t.to(self.dtype)

    @staticmethod
    def index(v):
        return ScalarInput(int(v))

    def scale(self, v):
        return self.torch.tensor(float(v), dtype=self.torch.float32, device=self.device)

    def zeros(self, shape, kind):
        return self.torch.zeros(shape, device=self.device,
                                dtype=self.torch.float32 if kind == "state" else self.dtype)

    def to_numpy(self, t):
        t = t.detach().to("cpu")
        return t.to(self.torch.float64).numpy() if t.is_floating_point() else t.numpy()

    def cat(self, arrays, axis):
        return self.torch.cat(arrays, dim=axis)

    def copy(self, t):
        return t.clone(memory_format=self.torch.contiguous_format)

    @staticmethod
    def empty_like(t, shape):
        return t.new_empty(shape)

    @staticmethod
    def dense(t):
        return t.contiguous() if hasattr(t, "contiguous") else t  # index inputs stay ints
