"""Exact chunked execution of the eval forward (DESIGN §4). NumPy only: never imports torch.

The scheduler walks the time axis in chunks through every pyramid level and calls a backend's
stages (``hieramamba.stage_table``: the model's own modules in the torch backend, exported graphs
in the ONNX Runtime and TensorRT backends) on windows. Exactness comes from three devices:

* **Halos** for everything local in time: a stage runs on a window that extends ``halo``
  positions past the chunk on both sides and its output is cropped back to the chunk. Windows
  are clipped at the true ends of the sequence, where the modules' own zero padding is right.
  Halos (level-0 steps, interleaved slots, level tokens): front ``FRONT_HALO`` (early fusion
  q-convs ±2 at input rate, embedding convs), Hydra conv ±3 slots (one anchor pair),
  local encoder ±3 slots (q/k/v convs ±1 + 5-wide window ±2), heads ``HEAD_HALO`` (late
  fusion q-convs ±2 + head convs ±3).
* **Scan states**: per level two passes over its chunks. Right→left, the backward state
  entering each chunk from its right neighbour is computed (and the neighbour's first ``C_b``
  row). Left→right, each chunk's scan gets the carried forward state, the stored backward state
  and the boundary terms of the one-step shift (``hieramamba.ops.add_boundary_terms``), so the
  scan output equals the whole-sequence one.
* **Global counts**: positions, masks, the official batch-summed slot count and the resampled
  position encoding depend only on the total length, known up front.

Lagged consumers (``HaloStream``): the local encoder needs Hydra outputs of the next chunk, and
the heads need level tokens of the next chunk, so both run one chunk behind the scan.

Levels whose local encoder is global attention (level ≥ 5, 32× shorter than level 0) run their
Hydra part in chunks like the others, keep the level's ``fused1`` whole (O(T_l) like the level's
anchors), and run the attention in blocks of query rows over all keys (``gattn_in`` →
``gattn_rows`` per block → ``gattn_out``): by default ``ATTN_SCORES_PER_BLOCK // T_l`` rows, so
the score matrix of a block has a fixed size whatever the video length (not O(T_l²)).
Memory: per chunk O(batch × chunk) activations; the anchors that feed the next level and the
head outputs are kept whole (a level's input/output, DESIGN §4 "per-level outputs excepted").
On host arrays (ONNX Runtime) a level's anchors larger than ``spill_mb`` go to an unlinked
temporary file instead (``_SpilledLevel``: written once per chunk, read back per window), so
that peak memory stays flat in video length for hour-long videos; values are unchanged.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from hieramamba.errors import InputError
from hieramamba.nvtx import nvtx_range
from hieramamba.stage_table import (ATTN_SCORES_PER_BLOCK, FRONT_HALO, HEAD_HALO, SLOT_HALO,  # noqa: F401
                                    SCAN_INPUTS, LevelGeometry, level_geometry, nvtx_name)


# Level tokens per chunk of a long video. 1024, not 2048: a lower peak (bf16 bundles: MAD 10 h × 1
# 593 vs 670 MB, Ego4D 1 h × 8 1228 vs 2098 MB), which keeps a long video's peak near a short
# one's, for ~3–4 % more time on MAD (Ego4D × 8: 3 % less) (docs/performance.md).
DEFAULT_CHUNK = 1024
# Videos up to this many level-0 tokens run each level as one chunk (``auto_chunk``).
WHOLE_LEVEL_TOKENS = 4096
# A level's anchors larger than this (MB) are kept in a temporary file on host backends: beyond
# it their O(T) size, not the O(chunk) activations, would set the peak (MAD at 10 h: 184 MB).
DEFAULT_SPILL_MB = 16.0
# Spilling reads and writes at offsets (pread/pwrite: POSIX); elsewhere levels stay in memory.
POSITIONAL_IO = hasattr(os, "pwrite") and hasattr(os, "preadv")


def token_mask(batch: int, lo: int, hi: int, valid: int) -> np.ndarray:
    """Bool mask ``(batch, 1, hi-lo)`` of positions ``lo…hi-1`` of a left-aligned sequence."""
    m = (np.arange(lo, hi) < valid)[None, None]
    return np.ascontiguousarray(np.broadcast_to(m, (batch, 1, hi - lo)))


def check_spill(spill_mb, spill_dir) -> tuple:
    """``(bytes or None, directory or None)``: ``spill_mb`` a number ≥ 0 or None (never spill),
    ``spill_dir`` an existing directory or None (the system's temporary directory)."""
    if spill_mb is not None and (isinstance(spill_mb, bool) or not isinstance(spill_mb, (int, float, np.number))
                                 or not np.isfinite(spill_mb) or spill_mb < 0):
        raise InputError(f"spill_mb must be a number ≥ 0 (MB) or None (never spill), got {spill_mb!r}")
    if spill_dir is not None and not os.path.isdir(spill_dir):
        raise InputError(f"spill_dir is not a directory: {spill_dir}")
    return (None if spill_mb is None else int(spill_mb * 2**20)), (None if spill_dir is None else str(spill_dir))


def check_chunking(chunk, attn_rows) -> tuple:
    """``(chunk, attn_rows)`` as the scheduler uses them, or ``InputError``: ``chunk`` an int ≥ 2
    in level tokens (rounded down to even), ``attn_rows`` a positive int or None."""
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 2:
        raise InputError(f"chunk must be an int ≥ 2 (level tokens), got {chunk!r}")
    if attn_rows is not None and (isinstance(attn_rows, bool) or not isinstance(attn_rows, (int, np.integer))
                                  or attn_rows < 1):
        raise InputError(f"attn_rows must be a positive int or None, got {attn_rows!r}")
    return int(chunk) // 2 * 2, (None if attn_rows is None else int(attn_rows))


class HaloStream:
    """Feeds a windowed function with chunks that arrive left to right.

    ``push(arrays)`` appends a chunk (a tuple of arrays sharing a time axis, given per array in
    ``axes``); as soon as ``halo`` positions of look-ahead exist, ``emit(window, lo, crop0, crop1)``
    is called for the not yet emitted positions, where ``window`` covers global positions
    ``lo…`` and ``[crop0, crop1)`` (window-relative) are the positions to keep. Emitted ranges
    start and stop on multiples of ``align`` except at the end."""

    def __init__(self, total, halo, emit, axes, cat, align=1):
        self.total, self.halo, self.align = total, halo, align
        self.emit, self.axes, self.cat = emit, axes, cat
        self.buf, self.lo, self.hi, self.done = None, 0, 0, 0

    def push(self, arrays):
        n = arrays[0].shape[self.axes[0]]
        if self.buf is None:
            self.buf = tuple(arrays)
        else:
            self.buf = tuple(self.cat([b, a], ax) for b, a, ax in zip(self.buf, arrays, self.axes))
        self.hi += n
        if self.hi >= self.total:
            self._emit(self.total)
        else:
            stop = (self.hi - self.halo) // self.align * self.align
            if stop > self.done:
                self._emit(stop)

    def finish(self):
        if self.hi != self.total:
            raise RuntimeError(f"HaloStream: got {self.hi} of {self.total} positions")
        if self.done < self.total:
            self._emit(self.total)

    def _take(self, a, ax, i, j):
        idx = [slice(None)] * a.ndim
        idx[ax] = slice(i, j)
        return a[tuple(idx)]

    def _emit(self, stop):
        w0 = max(0, self.done - self.halo)
        w1 = min(self.total, stop + self.halo)
        window = tuple(self._take(b, ax, w0 - self.lo, w1 - self.lo) for b, ax in zip(self.buf, self.axes))
        self.emit(window, w0, self.done - w0, stop - w0)
        self.done = stop
        keep = max(0, self.done - self.halo)
        if keep > self.lo:
            self.buf = tuple(self._take(b, ax, keep - self.lo, None) for b, ax in zip(self.buf, self.axes))
            self.lo = keep


class ChunkScheduler:
    """Runs one group of queries of one video through a backend, chunk by chunk.

    ``plan``: the static model description (``hieramamba.artifacts.Plan``); ``backend``: a
    ``hieramamba.runtime.backends.StageBackend`` (``call`` + ``arrays``). ``chunk`` is in level
    tokens (rounded down to an even number, at least 2); ``attn_rows``: query rows per block of the
    global-attention levels (default None: ``ATTN_SCORES_PER_BLOCK`` scores per block).
    Every stage call runs in an NVTX range ``runtime.<stage>[<level>]`` (``hieramamba.nvtx``):
    where a chunked run spends its time on any backend, in Nsight or in ``record`` mode."""

    def __init__(self, plan, backend, chunk: int = DEFAULT_CHUNK, progress=None, attn_rows=None,
                 spill_mb=DEFAULT_SPILL_MB, spill_dir=None):
        self.chunk, self.attn_rows = check_chunking(chunk, attn_rows)
        self.plan, self.backend, self.arrays = plan, backend, backend.arrays
        self.progress = progress
        self.spill_bytes, self.spill_dir = check_spill(spill_mb, spill_dir)

    def call(self, stage: str, level, **inputs):
        with nvtx_range(nvtx_name(stage, level)):
            return self.backend.call(stage, level, inputs)

    # -- one query group ------------------------------------------------------------------
    def run(self, video, valid_len: int, text: np.ndarray, text_mask: np.ndarray, official_batch: int):
        """``video (Dv, L_pad)`` float (a NumPy array or a ``PaddedClips``), ``valid_len`` real
        features, ``text (B, Dt, Tt)``, mask ``(B, 1, Tt)`` bool; ``official_batch``: the number of
        queries the official evaluator would run together (the batch-summed mask count, REFERENCE
        §13.1). Returns per level numpy logits ``(B, T_l)``, offsets ``(B, T_l, 2)``, masks ``(B, T_l)``."""
        plan, ar = self.plan, self.arrays
        nq = text.shape[0]
        t, tm = self.call("text", None, text=ar.from_numpy(text), text_mask=ar.from_numpy(text_mask))
        geo = level_geometry(video.shape[-1], valid_len, plan.vid_stride, plan.num_levels)
        bb = nq if plan.early_fusion else 1           # backbone batch
        count_batch = official_batch if plan.early_fusion else 1
        source = _FrontSource(self, video, valid_len, geo[0], t, tm, bb)
        logits, offsets, masks = [], [], []
        try:
            for level, g in enumerate(geo):
                n_valid = count_batch * (g.valid + g.valid_pairs)
                heads = _HeadCollector(self, level, g, t, tm, bb)
                if plan.windowed[level]:
                    anchors = self._windowed_level(level, g, source, n_valid, bb, heads)
                else:
                    anchors = _ArraySource(self._global_level(level, g, source, n_valid, bb, heads))
                source.close()
                source = anchors  # closed by the next level, or below
                lo, of = heads.result()
                logits.append(lo)
                offsets.append(of)
                masks.append(np.broadcast_to(np.arange(g.length) < g.valid, lo.shape).copy())
                if self.progress is not None:
                    self.progress(level)
        finally:
            source.close()
        return logits, offsets, masks

    # -- levels ---------------------------------------------------------------------------
    def _chunks(self, g: LevelGeometry):
        cp = self.chunk // 2
        return [(p, min(g.pairs, p + cp)) for p in range(0, g.pairs, cp)]

    def _pre(self, level, g, source, n_valid, bb, p0, p1):
        """``pre`` outputs (by name) of slots ``3·p0 … 3·p1`` (window one pair wider each side)."""
        ar = self.arrays
        w0, w1 = max(0, p0 - 1), min(g.pairs, p1 + 1)
        t0, t1 = 2 * w0, min(g.length, 2 * w1)
        tok = source.get(t0, t1)
        mask = ar.from_numpy(token_mask(bb, t0, t1, g.valid))
        out = self.call("pre", level, tokens=tok, mask=mask, n_valid=ar.index(n_valid),
                        slot_offset=ar.index(3 * w0))
        c0, c1 = 3 * (p0 - w0), 3 * (p1 - w0)
        names = ("seq", "seq_mask", "z") + SCAN_INPUTS
        return {n: a[:, c0:c1] for n, a in zip(names, out)}

    def _hydra_pass(self, level, g, source, n_valid, bb, consume):
        """Interleave, Hydra (scan states carried both ways) and gate 1 of a level, chunk by
        chunk: ``consume(fused1, seq_mask)`` gets the slots of each chunk left to right."""
        ar = self.arrays
        s = self.plan.scan[level]
        chunks = self._chunks(g)
        zero_state = ar.zeros((bb, s.H, s.P, s.N), "state")
        zero_row = ar.zeros((bb, s.G, s.N), "float")
        # Pass 1, right → left: what each chunk needs from its right neighbour, written into
        # arrays allocated once (per-chunk pieces kept alive would fragment the heap).
        n = len(chunks)
        right_state = ar.empty_like(zero_state, (n,) + tuple(zero_state.shape))
        right_row = ar.empty_like(zero_row, (n,) + tuple(zero_row.shape))
        right_state[n - 1], right_row[n - 1] = zero_state, zero_row
        for k in range(n - 1, 0, -1):
            pre = self._pre(level, g, source, n_valid, bb, *chunks[k])
            _, _, right_state[k - 1] = self.call("scan", level, **{i: pre[i] for i in SCAN_INPUTS},
                                                 state_f0=zero_state, state_b0=right_state[k],
                                                 c_f_prev=zero_row, c_b_next=zero_row)
            right_row[k - 1] = pre["C_b"][:, 0]
        # Pass 2, left → right.
        state_f, c_f_prev = zero_state, zero_row
        for k, (p0, p1) in enumerate(chunks):
            pre = self._pre(level, g, source, n_valid, bb, p0, p1)
            y, state_f_new, _ = self.call("scan", level, **{i: pre[i] for i in SCAN_INPUTS},
                                          state_f0=state_f, state_b0=right_state[k],
                                          c_f_prev=c_f_prev, c_b_next=right_row[k])
            state_f, c_f_prev = state_f_new, ar.copy(pre["C_f"][:, -1])
            fused1, = self.call("post", level, seq=pre["seq"], seq_mask=pre["seq_mask"], y=y, x=pre["x"],
                                z=pre["z"])
            consume(fused1, pre["seq_mask"])

    def _windowed_level(self, level, g, source, n_valid, bb, heads):
        """The local encoder (5-wide window) runs one chunk behind the Hydra pass. Returns the
        level's anchors as the next level's source (in memory, or spilled to a file when large)."""
        ar = self.arrays
        anchors = []  # [the level's anchors], made once from the first chunk's

        def local(window, lo, c0, c1):
            a, tok = self.call("local", level, fused1=window[0], seq_mask=window[1])
            a, tok = a[..., c0 // 3: c1 // 3], tok[..., 2 * c0 // 3: 2 * c1 // 3]
            if not anchors:
                anchors.append(self._level_store(a, g.pairs))
            anchors[0].put((lo + c0) // 3, a)
            t0 = 2 * (lo + c0) // 3
            t1 = 2 * (lo + c1) // 3
            if t1 > g.length:
                tok = tok[..., : g.length - t0]
            heads.push(tok)

        stream = HaloStream(3 * g.pairs, SLOT_HALO, local, axes=(1, 1), cat=ar.cat, align=3)
        try:
            self._hydra_pass(level, g, source, n_valid, bb, lambda f, m: stream.push((f, m)))
            stream.finish()
            heads.finish()
        except BaseException:
            for store in anchors:
                store.close()
            raise
        return anchors[0]

    def _level_store(self, first, length):
        """Where a level's anchors ``(batch, C, length)`` go: a file when they are host arrays
        larger than the spill threshold, else one array."""
        shape = tuple(first.shape[:-1]) + (length,)
        nbytes = int(np.prod(shape)) * first.dtype.itemsize
        if (isinstance(first, np.ndarray) and POSITIONAL_IO and self.spill_bytes is not None
                and nbytes > self.spill_bytes):
            return _SpilledLevel(shape, first.dtype, self.spill_dir)
        return _ArraySource(self.arrays.empty_like(first, shape))

    def _global_level(self, level, g, source, n_valid, bb, heads):
        """Global attention needs every slot: collect the level's ``fused1``, then attend in
        blocks of query rows."""
        ar = self.arrays
        parts = []
        self._hydra_pass(level, g, source, n_valid, bb, lambda f, m: parts.append((ar.copy(f), ar.copy(m))))
        fused1 = ar.cat([f for f, _ in parts], 1)
        seq_mask = ar.cat([m for _, m in parts], 1)
        del parts
        q, k, v = self.call("gattn_in", level, fused1=fused1, seq_mask=seq_mask)
        slots = q.shape[2]
        r = self.attn_rows or max(1, ATTN_SCORES_PER_BLOCK // slots)
        attn = ar.empty_like(q, tuple(q.shape))  # filled block by block
        for i in range(0, slots, r):
            attn[:, :, i:i + r], = self.call("gattn_rows", level, q=q[:, :, i:i + r], k=k, v=v, seq_mask=seq_mask)
        del q, k, v
        anchors, tokens = self.call("gattn_out", level, fused1=fused1, seq_mask=seq_mask, attn=attn)
        heads.push(tokens[..., : g.length])
        heads.finish()
        return anchors


class PaddedClips:
    """Clip-major features ``(T, Dv)`` seen as the zero-padded channel-major ``(Dv, padded)``
    array that ``ChunkScheduler.run`` reads, one window at a time: no padded copy of the whole
    video is made (only ``[:, i0:i1]`` slicing is supported)."""

    def __init__(self, clips: np.ndarray, padded: int):
        self.clips = clips
        self.shape = (clips.shape[1], padded)

    def __getitem__(self, index):
        _, cols = index
        i0, i1, _ = cols.indices(self.shape[1])
        out = np.zeros((self.shape[0], i1 - i0), np.float32)
        n = max(0, min(i1, self.clips.shape[0]) - i0)
        out[:, :n] = self.clips[i0:i0 + n].T
        return out


class _FrontSource:
    """Level-0 input on demand: early fusion + embedding + PE of a window, from the video."""

    def __init__(self, sched, video, valid_len, g0, t, tm, bb):
        self.s, self.video, self.valid_len, self.g0 = sched, video, valid_len, g0
        self.t, self.tm, self.bb = t, tm, bb
        self.vs = sched.plan.vid_stride

    def get(self, t0, t1):
        ar, vs = self.s.arrays, self.vs
        w0, w1 = max(0, t0 - FRONT_HALO), min(self.g0.length, t1 + FRONT_HALO)
        i0, i1 = vs * w0, min(self.video.shape[-1], vs * w1)
        vid = ar.from_numpy(np.ascontiguousarray(self.video[:, i0:i1])[None])
        mask = ar.from_numpy(token_mask(1, i0, i1, self.valid_len))
        x, = self.s.call("front", None, video=vid, video_mask=mask, text_enc=self.t, text_enc_mask=self.tm,
                         pe_start=ar.index(w0), pe_total=ar.index(self.g0.length))
        return x[..., t0 - w0: t1 - w0]

    def close(self):
        pass


class _ArraySource:
    """A level's anchors in one array (``put`` a chunk, ``get`` a window of positions)."""

    def __init__(self, x):
        self.x = x

    def put(self, p0, a):
        self.x[..., p0: p0 + a.shape[-1]] = a

    def get(self, t0, t1):
        return self.x[..., t0:t1]

    def close(self):
        self.x = None


class _SpilledLevel:
    """A level's anchors ``(batch, C, T)`` in an unlinked temporary file, position-major (one
    ``(batch, C)`` block per position: a window is one contiguous read). The file has no name
    on disk and disappears when closed or when the process ends, whatever the way."""

    def __init__(self, shape, dtype, directory):
        self.shape, self.dtype = shape, np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[:-1])) * self.dtype.itemsize
        self.directory = directory or tempfile.gettempdir()
        try:
            self.file = tempfile.TemporaryFile(dir=self.directory)
        except OSError as exc:
            raise InputError(f"cannot create a spill file in {self.directory} ({exc.strerror or exc}); "
                             "pass another spill_dir, or spill_mb=None to keep levels in memory") from None

    def put(self, p0, a):
        block = np.ascontiguousarray(np.moveaxis(np.asarray(a, self.dtype), -1, 0))
        self._io(os.pwrite, memoryview(block.reshape(-1).view(np.uint8)), p0 * self.row_bytes, "write")

    def get(self, t0, t1):
        block = np.empty((t1 - t0,) + self.shape[:-1], self.dtype)
        self._io(lambda fd, view, at: os.preadv(fd, [view], at), memoryview(block.reshape(-1).view(np.uint8)),
                 t0 * self.row_bytes, "read")
        return np.ascontiguousarray(np.moveaxis(block, 0, -1))

    def _io(self, op, view, offset, what):
        done = 0
        while done < len(view):  # pread/pwrite may move fewer bytes than asked
            try:
                n = op(self.file.fileno(), view[done:], offset + done)
            except OSError as exc:
                raise InputError(f"spill file {what} in {self.directory} failed ({exc.strerror or exc}); free "
                                 "disk space there, pass another spill_dir, or spill_mb=None to keep levels "
                                 "in memory") from None
            if n <= 0:
                raise InputError(f"spill file {what} failed: the file ended early")
            done += n

    def close(self):
        self.file.close()


class _HeadCollector:
    """Late fusion + heads over a level's tokens as they arrive (halo ``HEAD_HALO``), written
    into the level's output arrays (allocated once: no per-chunk pieces left on the heap)."""

    def __init__(self, sched, level, g, t, tm, bb):
        self.s, self.level, self.g, self.t, self.tm, self.bb = sched, level, g, t, tm, bb
        self.scale = sched.arrays.scale(sched.plan.head_scales[level])
        self.logits = self.offsets = None
        self.stream = HaloStream(g.length, HEAD_HALO, self._emit, axes=(2,), cat=sched.arrays.cat)

    def _emit(self, window, lo, c0, c1):
        ar = self.s.arrays
        n = window[0].shape[-1]
        mask = ar.from_numpy(token_mask(self.bb, lo, lo + n, self.g.valid))
        lg, of = self.s.call("heads", self.level, tokens=window[0], mask=mask, text_enc=self.t,
                             text_enc_mask=self.tm, level_scale=self.scale)
        lg, of = ar.to_numpy(lg), ar.to_numpy(of)
        if self.logits is None:
            self.logits = np.empty((lg.shape[0], self.g.length), lg.dtype)
            self.offsets = np.empty((of.shape[0], self.g.length) + of.shape[2:], of.dtype)
        self.logits[:, lo + c0: lo + c1] = lg[:, c0:c1]
        self.offsets[:, lo + c0: lo + c1] = of[:, c0:c1]

    def push(self, tokens):
        self.stream.push((tokens,))

    def finish(self):
        self.stream.finish()

    def result(self):
        return self.logits, self.offsets
