"""Exact chunked execution of the eval forward (DESIGN §4). NumPy only: never imports torch.

The scheduler walks the time axis in chunks through every pyramid level and calls a backend's
*stages* (the model's own modules in the torch backend, exported graphs in the ONNX Runtime
backend) on windows. Exactness comes from three devices:

* **Halos** for everything local in time: a stage runs on a window that extends ``halo``
  positions past the chunk on both sides and its output is cropped back to the chunk. Windows
  are clipped at the true ends of the sequence, where the modules' own zero padding is right.
  Halos (level-0 steps, interleaved slots, level tokens): front ``FRONT_HALO`` (early fusion
  q-convs ±2 at input rate, embedding convs), Hydra conv ±3 slots (one anchor pair),
  local encoder ±3 slots (q/k/v convs ±1 + 5-wide window ±2), heads ``HEAD_HALO`` (late
  fusion q-convs ±2 + head convs ±3).
* **Scan states**: per windowed level two passes over its chunks. Right→left, the backward
  state entering each chunk from its right neighbour is computed (and the neighbour's first
  ``C_b`` row). Left→right, each chunk's scan gets the carried forward state, the stored backward
  state and the boundary terms of the one-step shift (``hieramamba.ops.hydra_scan``), so the
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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hieramamba.profiling.nvtx import RUNTIME_STAGES, nvtx_range  # torch-free

FRONT_HALO = 4   # level-0 steps (8 input features at stride 2)
# Query rows × keys per block of a global attention (per batch row, head). 2^16: its fp32
# temporaries (~5 score-sized copies) stay ~1.3 MB per batch row and head; 2^20 was 41 MB and
# 2^18 10 MB of the 10 h peak RSS of the tiny fp16 bundle (1 query), for ~200 row-block calls
# per query batch on a 10 h Ego4D video. Any value is exact.
ATTN_SCORES_PER_BLOCK = 2 ** 16
HEAD_HALO = 6    # level tokens
SLOT_HALO = 3    # interleaved slots = one anchor pair


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class LevelGeometry:
    """Lengths of level ``l``: tokens ``length`` (padded) of which ``valid`` are real,
    ``pairs`` anchors/pairs, ``3·pairs`` interleaved slots."""
    length: int
    valid: int

    @property
    def pairs(self) -> int:
        return ceil_div(self.length, 2)

    @property
    def valid_pairs(self) -> int:
        return ceil_div(self.valid, 2)


def level_geometry(padded_len: int, valid_len: int, vid_stride: int, num_levels: int):
    """Per level token lengths for a video padded to ``padded_len`` input features."""
    length, valid = ceil_div(padded_len, vid_stride), ceil_div(valid_len, vid_stride)
    out = []
    for _ in range(num_levels):
        out.append(LevelGeometry(length, valid))
        length, valid = ceil_div(length, 2), ceil_div(valid, 2)
    return out


def token_mask(batch: int, lo: int, hi: int, valid: int) -> np.ndarray:
    """Bool mask ``(batch, 1, hi-lo)`` of positions ``lo…hi-1`` of a left-aligned sequence."""
    m = (np.arange(lo, hi) < valid)[None, None]
    return np.ascontiguousarray(np.broadcast_to(m, (batch, 1, hi - lo)))


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


class _StageRanges:
    """The backend with an NVTX range around each stage call (``runtime.<stage>[<level>]``,
    ``hieramamba.profiling.nvtx``): where a chunked run spends its time on any backend, in
    Nsight or in ``record`` mode. Off (the default) this costs a no-op context per stage call."""

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        attr = getattr(self._backend, name)
        if name not in RUNTIME_STAGES:
            return attr

        def stage(*args, **kwargs):
            label = f"runtime.{name}" if name in ("text", "front") else f"runtime.{name}[{args[0]}]"
            with nvtx_range(label):
                return attr(*args, **kwargs)

        return stage


class ChunkScheduler:
    """Runs one group of queries of one video through a backend, chunk by chunk.

    ``plan``: the static model description (see ``hieramamba.runtime.plan``); ``backend``: an
    object with the stage methods (see ``TorchBackend``) and the array helpers ``cat``,
    ``copy`` (a compact copy of a view), ``empty_like(a, shape)`` (uninitialized, a's dtype and device),
    ``zeros_state``, ``zeros_row``, ``to_numpy``, ``from_numpy``. ``chunk`` is in level tokens
    (rounded down to an even number, at least 2); ``attn_rows``: query rows per block of the
    global attention levels (default None: ``ATTN_SCORES_PER_BLOCK`` scores per block)."""

    def __init__(self, plan: dict, backend, chunk: int = 2048, progress=None, attn_rows=None):
        from hieramamba.errors import InputError

        if not isinstance(chunk, (int, np.integer)) or chunk < 2:
            raise InputError(f"chunk must be an int ≥ 2 (level tokens), got {chunk!r}")
        if attn_rows is not None and (not isinstance(attn_rows, (int, np.integer)) or attn_rows < 1):
            raise InputError(f"attn_rows must be a positive int or None, got {attn_rows!r}")
        self.plan, self.backend = plan, _StageRanges(backend)
        self.chunk = int(chunk) // 2 * 2
        self.attn_rows = None if attn_rows is None else int(attn_rows)
        self.progress = progress

    # -- one query group ------------------------------------------------------------------
    def run(self, video, valid_len: int, text: np.ndarray, text_mask: np.ndarray,
            official_batch: int):
        """``video (Dv, L_pad)`` float (a NumPy array or a ``PaddedClips``), ``valid_len`` real
        features, ``text (B, Dt, Tt)``, mask
        ``(B, 1, Tt)`` bool; ``official_batch``: the number of queries the official evaluator
        would run together (the batch-summed mask count, REFERENCE §13.1).
        Returns per level numpy logits ``(B, T_l)``, offsets ``(B, T_l, 2)``, masks ``(B, T_l)``."""
        plan, be = self.plan, self.backend
        nq = text.shape[0]
        t, tm = be.text(text, text_mask)
        geo = level_geometry(video.shape[-1], valid_len, plan["vid_stride"], plan["num_levels"])
        bb = nq if plan["early_fusion"] else 1           # backbone batch
        count_batch = official_batch if plan["early_fusion"] else 1
        source = _FrontSource(self, video, valid_len, geo[0], t, tm, bb)
        logits, offsets, masks = [], [], []
        for level, g in enumerate(geo):
            n_valid = count_batch * (g.valid + g.valid_pairs)
            heads = _HeadCollector(self, level, g, t, tm, bb)
            if plan["windowed"][level]:
                anchors = self._windowed_level(level, g, source, n_valid, bb, heads)
            else:
                anchors = self._global_level(level, g, source, n_valid, bb, heads)
            lo, of = heads.result()
            logits.append(lo)
            offsets.append(of)
            masks.append(np.broadcast_to(np.arange(g.length) < g.valid, lo.shape).copy())
            source = _ArraySource(anchors)
            if self.progress is not None:
                self.progress(level)
        return logits, offsets, masks

    # -- levels ---------------------------------------------------------------------------
    def _chunks(self, g: LevelGeometry):
        cp = self.chunk // 2
        return [(p, min(g.pairs, p + cp)) for p in range(0, g.pairs, cp)]

    def _pre(self, level, g, source, n_valid, bb, p0, p1):
        """Scan inputs etc. of slots ``3·p0 … 3·p1`` (window one pair wider each side)."""
        w0, w1 = max(0, p0 - 1), min(g.pairs, p1 + 1)
        t0, t1 = 2 * w0, min(g.length, 2 * w1)
        tok = source.get(t0, t1)
        mask = self.backend.from_numpy(token_mask(bb, t0, t1, g.valid))
        pre = self.backend.amp_pre(level, tok, mask, n_valid, 3 * w0)
        c0, c1 = 3 * (p0 - w0), 3 * (p1 - w0)
        return {"seq": pre["seq"][:, c0:c1], "seq_mask": pre["seq_mask"][:, c0:c1],
                "z": pre["z"][:, c0:c1], "scan": tuple(t[:, c0:c1] for t in pre["scan"])}

    def _hydra_pass(self, level, g, source, n_valid, bb, consume):
        """Interleave, Hydra (scan states carried both ways) and gate 1 of a level, chunk by
        chunk: ``consume(fused1, seq_mask)`` gets the slots of each chunk left to right."""
        be = self.backend
        chunks = self._chunks(g)
        zero_state, zero_row = be.zeros_state(level, bb), be.zeros_row(level, bb)
        # Pass 1, right → left: what each chunk needs from its right neighbour, written into
        # arrays allocated once (per-chunk pieces kept alive would fragment the heap).
        n = len(chunks)
        right_state = be.empty_like(zero_state, (n,) + tuple(zero_state.shape))
        right_row = be.empty_like(zero_row, (n,) + tuple(zero_row.shape))
        right_state[n - 1], right_row[n - 1] = zero_state, zero_row
        for k in range(n - 1, 0, -1):
            pre = self._pre(level, g, source, n_valid, bb, *chunks[k])
            _, _, right_state[k - 1] = be.scan(level, pre["scan"], zero_state, right_state[k], zero_row, zero_row)
            right_row[k - 1] = pre["scan"][6][:, 0]
        # Pass 2, left → right.
        state_f, c_f_prev = zero_state, zero_row
        for k, (p0, p1) in enumerate(chunks):
            pre = self._pre(level, g, source, n_valid, bb, p0, p1)
            y, state_f_new, _ = be.scan(level, pre["scan"], state_f, right_state[k], c_f_prev, right_row[k])
            state_f, c_f_prev = state_f_new, be.copy(pre["scan"][4][:, -1])
            consume(be.amp_post(level, pre, y), pre["seq_mask"])

    def _windowed_level(self, level, g, source, n_valid, bb, heads):
        """The local encoder (5-wide window) runs one chunk behind the Hydra pass."""
        be = self.backend
        anchors = []  # [the level's anchors], allocated once from the first chunk's

        def local(window, lo, c0, c1):
            a, tok = be.amp_local(level, window[0], window[1])
            a, tok = a[..., c0 // 3: c1 // 3], tok[..., 2 * c0 // 3: 2 * c1 // 3]
            if not anchors:
                anchors.append(be.empty_like(a, tuple(a.shape[:-1]) + (g.pairs,)))
            p0 = (lo + c0) // 3
            anchors[0][..., p0: p0 + a.shape[-1]] = a
            t0 = 2 * (lo + c0) // 3
            t1 = 2 * (lo + c1) // 3
            if t1 > g.length:
                tok = tok[..., : g.length - t0]
            heads.push(tok)

        stream = HaloStream(3 * g.pairs, SLOT_HALO, local, axes=(1, 1), cat=be.cat, align=3)
        self._hydra_pass(level, g, source, n_valid, bb, lambda f, m: stream.push((f, m)))
        stream.finish()
        heads.finish()
        return anchors[0]

    def _global_level(self, level, g, source, n_valid, bb, heads):
        """Global attention needs every slot: collect the level's ``fused1``, then attend in
        blocks of query rows."""
        be = self.backend
        parts = []
        self._hydra_pass(level, g, source, n_valid, bb, lambda f, m: parts.append((be.copy(f), be.copy(m))))
        fused1 = be.cat([f for f, _ in parts], 1)
        seq_mask = be.cat([m for _, m in parts], 1)
        del parts
        q, k, v = be.gattn_in(level, fused1, seq_mask)
        slots = q.shape[2]
        r = self.attn_rows or max(1, ATTN_SCORES_PER_BLOCK // slots)
        attn = be.empty_like(q, tuple(q.shape))  # filled block by block
        for i in range(0, slots, r):
            attn[:, :, i:i + r] = be.gattn_rows(level, q[:, :, i:i + r], k, v, seq_mask)
        del q, k, v
        anchors, tokens = be.gattn_out(level, fused1, seq_mask, attn)
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
        self.vs = sched.plan["vid_stride"]

    def get(self, t0, t1):
        be, vs = self.s.backend, self.vs
        w0, w1 = max(0, t0 - FRONT_HALO), min(self.g0.length, t1 + FRONT_HALO)
        i0, i1 = vs * w0, min(self.video.shape[-1], vs * w1)
        vid = be.from_numpy(np.ascontiguousarray(self.video[:, i0:i1])[None])
        mask = be.from_numpy(token_mask(1, i0, i1, self.valid_len))
        x = be.front(vid, mask, self.t, self.tm, w0, self.g0.length)
        return x[..., t0 - w0: t1 - w0]


class _ArraySource:
    def __init__(self, x):
        self.x = x

    def get(self, t0, t1):
        return self.x[..., t0:t1]


class _HeadCollector:
    """Late fusion + heads over a level's tokens as they arrive (halo ``HEAD_HALO``), written
    into the level's output arrays (allocated once: no per-chunk pieces left on the heap)."""

    def __init__(self, sched, level, g, t, tm, bb):
        self.be, self.level, self.g, self.t, self.tm, self.bb = sched.backend, level, g, t, tm, bb
        self.logits = self.offsets = None
        self.stream = HaloStream(g.length, HEAD_HALO, self._emit, axes=(2,), cat=self.be.cat)

    def _emit(self, window, lo, c0, c1):
        n = window[0].shape[-1]
        mask = self.be.from_numpy(token_mask(self.bb, lo, lo + n, self.g.valid))
        lg, of = self.be.heads(self.level, window[0], mask, self.t, self.tm)
        lg, of = self.be.to_numpy(lg), self.be.to_numpy(of)
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
