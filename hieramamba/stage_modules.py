"""The stages of ``hieramamba.stage_table`` as torch modules over a ``HieraMamba``: thin slices
that call the model's own methods, no module math written here. The exporter traces them into a
bundle's stage graphs; the runtime's torch backend runs them eagerly (or as CUDA graphs). Their
``forward`` takes the table's inputs in the table's order and returns its outputs.

``plan_from_model`` builds the ``Plan`` of a model (the contract the chunked runtime reads).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .artifacts import Plan, ScanDims
from .stage_table import stage


class TextStage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, text, text_mask):
        return self.model.encode_text(text, text_mask)


class FrontStage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, video, video_mask, text_enc, text_enc_mask, pe_start, pe_total):
        vid, mask = self.model.fuse_early(video, video_mask, text_enc, text_enc_mask)
        return self.model.vid_net.embed(vid, mask, pe_window=(pe_start, pe_total))[0]


class PreStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, tokens, mask, n_valid, slot_offset):
        seq, seq_mask, _ = self.block.interleave(tokens, mask, n_valid, slot_offset)
        parts = self.block.global_encoder.scan_inputs(self.block.norm_global(seq))
        return (seq, seq_mask) + tuple(parts)


class ScanStage(nn.Module):
    def __init__(self, hydra):
        super().__init__()
        self.hydra = hydra

    def forward(self, x, dt_f, dt_b, B_f, C_f, B_b, C_b, state_f0, state_b0, c_f_prev, c_b_next):
        from .ops import add_boundary_terms, hydra_scan

        h = self.hydra
        y, sf, sb = hydra_scan(x, dt_f, dt_b, h.scan_A(), h.dt_bias, B_f, C_f, B_b, C_b, state_f0, state_b0,
                               chunk_size=h.chunk_size)
        return add_boundary_terms(y, state_f0, c_f_prev, state_b0, c_b_next), sf, sb


class PostStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, seq, seq_mask, y, x, z):
        return self.block.mix_global(seq, seq_mask, self.block.global_encoder.scan_output(y, x, z))


class LocalStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask):
        nb = fused1.shape[1] // 3
        return self.block.split(self.block.mix_local(fused1, seq_mask), nb, 2 * nb)


class GattnInStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask):
        return self.block.global_attention_inputs(fused1, seq_mask)


class GattnRowsStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, q, k, v, seq_mask):
        return self.block.global_attention_rows(q, k, v, seq_mask)


class GattnOutStage(nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, fused1, seq_mask, attn):
        nb = fused1.shape[1] // 3
        return self.block.split(self.block.mix_local_from_attention(fused1, seq_mask, attn), nb, 2 * nb)


class HeadsStage(nn.Module):
    """Late fusion + heads, for every level: the level enters only through its regression
    scale, an input (``level_scale``: ``plan.head_scales[l]``, the same fp32 value as the
    level's ``Scale`` parameter), so a bundle holds these weights once instead of once per level."""

    def __init__(self, model):
        super().__init__()
        self.fusion, self.cls_head = model.fusion, model.cls_head
        # The regression tower without the per-level scales (a shallow copy sharing the conv/norm
        # submodules): the scales are inputs, not weights, of this stage.
        self.reg_tower = copy.copy(model.reg_head)
        self.reg_tower._modules = {k: v for k, v in model.reg_head._modules.items() if k != "scales"}

    def forward(self, tokens, mask, text_enc, text_enc_mask, level_scale):
        x, xm = self.fusion(tokens, mask, text_enc, text_enc_mask)
        return self.cls_head(x, xm), self.reg_tower.with_scale(x, xm, level_scale)


_MODULES = {"text": TextStage, "front": FrontStage, "pre": PreStage, "scan": ScanStage, "post": PostStage,
            "local": LocalStage, "gattn_in": GattnInStage, "gattn_rows": GattnRowsStage,
            "gattn_out": GattnOutStage, "heads": HeadsStage}


def stage_module(model, stage_name: str, level=None) -> nn.Module:
    """The module of one stage instance of ``model`` (per-level stages slice block ``level``)."""
    if not stage(stage_name).per_level:
        return _MODULES[stage_name](model)
    block = model.vid_net.branch[level]
    return _MODULES[stage_name](block.global_encoder if stage_name == "scan" else block)


@torch.no_grad()
def plan_from_model(model, opt: dict) -> Plan:
    """The ``Plan`` of a ``HieraMamba`` and its config (reads attributes; the encoded text
    width and added tokens from one tiny text-encoder call)."""
    blocks = model.vid_net.branch
    ev, data = opt["eval"], opt["train"]["data"]
    p = next(model.parameters())
    enc, _ = model.encode_text(torch.zeros(1, model.text_in_dim, 2, dtype=p.dtype, device=p.device),
                               torch.ones(1, 1, 2, dtype=torch.bool, device=p.device))
    return Plan(
        num_levels=int(model.num_levels),
        vid_stride=int(model.vid_stride),
        windowed=tuple(b.local_encoder.attn.attn.window_size > 0 for b in blocks),
        early_fusion=bool(model.early_fusion),
        mask_semantics=model.mask_semantics,
        vid_in_dim=int(model.vid_in_dim),
        text_in_dim=int(model.text_in_dim),
        embd_dim=int(model.vid_net.embd_fc.conv.out_channels),
        text_enc_dim=int(enc.shape[1]),
        text_extra_tokens=int(enc.shape[2] - 2),
        attn_heads=int(blocks[0].local_encoder.attn.attn.n_heads),
        scan=tuple(ScanDims(int(b.global_encoder.nheads), int(b.global_encoder.headdim),
                            int(b.global_encoder.d_state), int(b.global_encoder.ngroups)) for b in blocks),
        pad_multiple=int(2 ** (model.num_levels - 1) * model.vid_stride),
        max_text_len=int(ev.get("max_text_len", 24)),
        batchify=bool(ev.get("batchify_text_queries", True)),
        decode={k: copy.deepcopy(ev[k]) for k in ("pre_nms_thresh", "pre_nms_topk", "seg_len_thresh", "nms")},
        clip_size=float(data.get("clip_size", 1)),
        clip_stride=float(data.get("clip_stride", 1) * data.get("downsample_rate", 1)),
        # The regression head's per-level scales (fp32 values): the one heads graph takes them as input.
        head_scales=tuple(float(s.scale.detach().float()) for s in model.reg_head.scales),
    )
