"""Torch backend of the chunked runtime: the stages are the model's own modules (no module
math is written here), run eagerly. Imported only when asked for (``backend="torch"``)."""

from __future__ import annotations

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - exercised without torch
    from hieramamba.errors import BackendUnavailableError
    raise BackendUnavailableError("the torch backend needs PyTorch installed") from exc

from hieramamba.device import resolve_device
from hieramamba.ops import hydra_scan, scan_boundary_term

from .cuda_graphs import ScalarInput


def add_boundary_terms(y, state_f0, c_f_prev, state_b0, c_b_next):
    """``y (B, L, H, P)`` plus the one-step-shift boundary terms of a chunk (DESIGN §2): the
    carried forward state read by the previous chunk's last ``C_f`` row at position 0, the
    backward state read by the next chunk's first ``C_b`` row at position L-1. Zero states
    (sequence ends) add exact zeros."""
    first = scan_boundary_term(state_f0, c_f_prev)
    last = scan_boundary_term(state_b0, c_b_next)
    n = y.shape[1]
    add = F.pad(first[:, None], (0, 0, 0, 0, 0, n - 1)) + F.pad(last[:, None], (0, 0, 0, 0, n - 1, 0))
    return (y.to(add.dtype) + add).to(y.dtype)


class TorchBackend:
    """Stages over a ``HieraMamba`` in eval mode. ``dtype`` float32 or float16/bfloat16.
    ``cuda_graphs`` (CUDA devices): each stage call replays a CUDA graph captured for its shapes
    (``runtime/cuda_graphs.py``; ``True`` or a ready ``StageGraphs``); the text encoder stays eager
    (once per query batch, a new length per query)."""

    name = "torch"

    def __init__(self, model, device="cpu", dtype=torch.float32, cuda_graphs=False):
        self.device, self.dtype = resolve_device(device), dtype
        self.graphs = None
        if cuda_graphs is True:
            from .cuda_graphs import StageGraphs

            self.graphs = StageGraphs(self.device)  # raises with the reason off CUDA
        elif cuda_graphs is not False and cuda_graphs is not None:
            self.graphs = cuda_graphs
        self.model = model.to(device=device, dtype=dtype).eval()
        self.blocks = self.model.vid_net.branch

    def _stage(self, name, fn, *args):
        """``fn(*args)``, through the stage graphs when they are on. Python ints among ``args``
        that vary between chunks are marked by the caller as ``ScalarInput``."""
        if self.graphs is None:
            return fn(*args)
        return self.graphs.run(name, fn, *args)

    # -- array helpers ---------------------------------------------------------------------
    def from_numpy(self, a):
        a = np.ascontiguousarray(a)
        t = torch.from_numpy(a if a.flags.writeable else a.copy()).to(self.device)
        return t if t.dtype == torch.bool else t.to(self.dtype)

    def to_numpy(self, t):
        return t.detach().to("cpu", torch.float64 if t.is_floating_point() else t.dtype).numpy()

    def cat(self, arrays, axis):
        return torch.cat(arrays, dim=axis)

    def copy(self, t):
        return t.clone(memory_format=torch.contiguous_format)

    def empty_like(self, t, shape):
        return t.new_empty(shape)

    def zeros_state(self, level, batch):
        h = self.blocks[level].global_encoder
        return torch.zeros(batch, h.nheads, h.headdim, h.d_state, device=self.device)

    def zeros_row(self, level, batch):
        h = self.blocks[level].global_encoder
        return torch.zeros(batch, h.ngroups, h.d_state, device=self.device, dtype=self.dtype)

    # -- stages ----------------------------------------------------------------------------
    @torch.no_grad()
    def text(self, text, text_mask):
        return self.model.encode_text(self.from_numpy(text), self.from_numpy(text_mask))

    @torch.no_grad()
    def front(self, vid, mask, text, text_mask, pe_start, pe_total):
        return self._stage("front", self._front, vid, mask, text, text_mask,
                           ScalarInput(pe_start), ScalarInput(pe_total))

    def _front(self, vid, mask, text, text_mask, pe_start, pe_total):
        vid, mask = self.model.fuse_early(vid, mask, text, text_mask)
        return self.model.vid_net.embed(vid, mask, pe_window=(pe_start, pe_total))[0]

    @torch.no_grad()
    def amp_pre(self, level, tokens, mask, n_valid, slot_offset):
        return self._stage("amp_pre", self._amp_pre, level, tokens, mask,
                           ScalarInput(n_valid), ScalarInput(slot_offset))

    def _amp_pre(self, level, tokens, mask, n_valid, slot_offset):
        blk = self.blocks[level]
        seq, seq_mask, _ = blk.interleave(tokens, mask, n_valid, slot_offset)
        parts = blk.global_encoder.scan_inputs(blk.norm_global(seq))
        return {"seq": seq, "seq_mask": seq_mask, "z": parts[0], "scan": tuple(parts[1:])}

    @torch.no_grad()
    def scan(self, level, scan, state_f0, state_b0, c_f_prev, c_b_next):
        return self._stage("scan", self._scan, level, scan, state_f0, state_b0, c_f_prev, c_b_next)

    def _scan(self, level, scan, state_f0, state_b0, c_f_prev, c_b_next):
        hyd = self.blocks[level].global_encoder
        x, dt_f, dt_b, b_f, c_f, b_b, c_b = scan
        y, sf, sb = hydra_scan(x, dt_f, dt_b, hyd.scan_A(), hyd.dt_bias, b_f, c_f, b_b, c_b,
                               state_f0, state_b0, chunk_size=hyd.chunk_size)
        return add_boundary_terms(y, state_f0, c_f_prev, state_b0, c_b_next), sf, sb

    @torch.no_grad()
    def amp_post(self, level, pre, y):
        # Only the tensors it reads: a graph's inputs are copied in on every replay.
        return self._stage("amp_post", self._amp_post, level, pre["seq"], pre["seq_mask"],
                           pre["scan"][0], pre["z"], y)

    def _amp_post(self, level, seq, seq_mask, x, z, y):
        blk = self.blocks[level]
        return blk.mix_global(seq, seq_mask, blk.global_encoder.scan_output(y, x, z))

    @torch.no_grad()
    def amp_local(self, level, fused1, seq_mask):
        return self._stage("amp_local", self._amp_local, level, fused1, seq_mask)

    def _amp_local(self, level, fused1, seq_mask):
        blk = self.blocks[level]
        nb = fused1.shape[1] // 3
        return blk.split(blk.mix_local(fused1, seq_mask), nb, 2 * nb)

    @torch.no_grad()
    def gattn_in(self, level, fused1, seq_mask):
        return self._stage("gattn_in", lambda lv, f, m: self.blocks[lv].global_attention_inputs(f, m),
                           level, fused1, seq_mask)

    @torch.no_grad()
    def gattn_rows(self, level, q_rows, k, v, seq_mask):
        return self._stage("gattn_rows", lambda lv, *a: self.blocks[lv].global_attention_rows(*a),
                           level, q_rows, k, v, seq_mask)

    @torch.no_grad()
    def gattn_out(self, level, fused1, seq_mask, attn):
        return self._stage("gattn_out", self._gattn_out, level, fused1, seq_mask, attn)

    def _gattn_out(self, level, fused1, seq_mask, attn):
        blk = self.blocks[level]
        nb = fused1.shape[1] // 3
        return blk.split(blk.mix_local_from_attention(fused1, seq_mask, attn), nb, 2 * nb)

    @torch.no_grad()
    def heads(self, level, tokens, mask, text, text_mask):
        return self._stage("heads", self._heads, level, tokens, mask, text, text_mask)

    def _heads(self, level, tokens, mask, text, text_mask):
        m = self.model
        x, xm = m.fusion(tokens, mask, text, text_mask)
        return m.cls_head(x, xm), m.reg_head(x, xm, level)
