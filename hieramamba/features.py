"""Checks of user-supplied features shared by every grounding entry point (the eager ``Grounder``
and the torch-free runtime). Torch-free: only shapes are inspected here; each caller checks
values (NaN/Inf) with its own array library."""

from __future__ import annotations

import os

import numpy as np

from .errors import InputError

TEXT_OVERFLOW = ("error", "truncate")


def check_video_shape(shape, vid_dim: int) -> None:
    """``shape`` of video features, expected ``(num_clips, vid_dim)`` with ``num_clips ≥ 1``."""
    if len(shape) != 2:
        raise InputError(f"video features must be 2-D (num_clips, {vid_dim}), got shape {tuple(shape)}")
    if shape[1] != vid_dim:
        hint = " (it looks transposed: pass time-major (num_clips, dim))" if shape[0] == vid_dim else ""
        raise InputError(f"video feature dim is {shape[1]}, the model expects {vid_dim}{hint}")
    if shape[0] == 0:
        raise InputError("video has zero clips: nothing to ground")


def query_tokens_to_keep(index: int, shape, text_dim: int, max_text_len: int, batchify: bool,
                         text_overflow: str) -> int:
    """Validate query ``index`` of ``shape`` ``(num_tokens, text_dim)``; return how many tokens to
    keep. Batched queries are padded to ``eval.max_text_len``: a longer one raises (the official
    evaluator would crash) unless ``text_overflow == "truncate"``."""
    if len(shape) != 2 or shape[1] != text_dim:
        raise InputError(f"query {index}: expected shape (num_tokens, {text_dim}), got {tuple(shape)}")
    if shape[0] == 0:
        raise InputError(f"query {index} has zero tokens")
    if batchify and shape[0] > max_text_len:
        if text_overflow == "error":
            raise InputError(
                f"query {index} has {shape[0]} tokens, more than eval.max_text_len={max_text_len}; "
                "pass text_overflow='truncate' (--text-overflow truncate) to keep the first tokens")
        return max_text_len
    return shape[0]


class NpyRows:
    """The rows of a 2-D ``.npy`` file, read when sliced (``rows[i:j]`` → an ndarray): what the
    chunked runtime reads window by window, so that an hour-long video's features never sit in
    memory whole. No pickle (object dtypes are refused) and no memory map (whose pages would stay
    in the process's resident memory). ``open_npy_rows`` makes one."""

    def __init__(self, path, fd, shape, dtype, offset):
        self.path, self.shape, self.dtype, self.offset = str(path), shape, dtype, offset
        self.ndim = 2
        self._fd = fd  # the descriptor the header was read from: the same file throughout

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if not isinstance(key, slice):
            raise TypeError("NpyRows supports row slices only (rows[i:j])")
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise TypeError("NpyRows supports contiguous row slices only")
        n = max(0, stop - start)
        row_bytes = self.shape[1] * self.dtype.itemsize
        out = np.empty((n, self.shape[1]), self.dtype)
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < len(view):  # pread may return fewer bytes than asked
            got = os.preadv(self._fd, [view[done:]], self.offset + start * row_bytes + done)
            if got <= 0:
                raise InputError(f"{self.path}: the file ended early (truncated while reading)")
            done += got
        return out if self.dtype.isnative else out.astype(self.dtype.newbyteorder("="))

    def __array__(self, dtype=None, copy=None):
        a = self[:]
        return a if dtype is None else a.astype(dtype)

    def close(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        self.close()


def open_npy_rows(path):
    """``NpyRows`` of a 2-D C-order ``.npy`` file of floats, or None when the file is a kind it
    does not read in place (another version of the format, Fortran order, not 2-D) or the platform
    has no ``pread``: the caller then loads it whole. A file that is not a readable ``.npy``
    raises ``InputError``."""
    from numpy.lib import format as npy

    if not hasattr(os, "preadv"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None
    try:
        with open(fd, "rb", closefd=False) as f:
            version = npy.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                os.close(fd)
                return None
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        size = os.fstat(fd).st_size
    except (OSError, ValueError) as exc:
        os.close(fd)
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    problem = None
    if dtype.hasobject:
        problem = "holds Python objects (a pickle); expected float features"
    elif not fortran and len(shape) == 2 and not np.issubdtype(dtype, np.floating):
        problem = f"expected floating-point features, got dtype {dtype}"
    elif not fortran and len(shape) == 2 and size < offset + int(np.prod(shape)) * dtype.itemsize:
        problem = f"truncated ({size} bytes, the header promises {offset + int(np.prod(shape)) * dtype.itemsize})"
    if problem is not None or fortran or len(shape) != 2:
        os.close(fd)
        if problem is not None:
            raise InputError(f"{path}: {problem}")
        return None
    return NpyRows(path, fd, tuple(int(d) for d in shape), dtype, offset)
