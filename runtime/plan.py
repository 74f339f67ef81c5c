"""The static description of a model that the runtime needs (no weights), torch-free.

It is the ``"plan"`` section of a bundle manifest and what ``ChunkScheduler`` reads."""

from __future__ import annotations

PLAN_KEYS = ("num_levels", "vid_stride", "windowed", "early_fusion", "mask_semantics", "vid_in_dim",
             "text_in_dim", "scan", "pad_multiple", "max_text_len", "batchify", "eval",
             "clip_size", "clip_stride", "head_scales")


def plan_from_model(model, opt: dict) -> dict:
    """Build the plan of a torch ``HieraMamba`` (imports nothing; reads attributes)."""
    blocks = model.vid_net.branch
    scan = []
    for b in blocks:
        h = b.global_encoder
        scan.append({"H": h.nheads, "P": h.headdim, "N": h.d_state, "G": h.ngroups})
    ev = opt["eval"]
    data = opt["train"]["data"]
    return {
        "num_levels": int(model.num_levels),
        "vid_stride": int(model.vid_stride),
        "windowed": [b.local_encoder.attn.attn.window_size > 0 for b in blocks],
        "early_fusion": bool(model.early_fusion),
        "mask_semantics": model.mask_semantics,
        "vid_in_dim": int(model.vid_in_dim),
        "text_in_dim": int(model.text_in_dim),
        "scan": scan,
        "pad_multiple": int(2 ** (model.num_levels - 1) * model.vid_stride),
        "max_text_len": int(ev.get("max_text_len", 24)),
        "batchify": bool(ev.get("batchify_text_queries", True)),
        "eval": {k: ev[k] for k in ("pre_nms_thresh", "pre_nms_topk", "seg_len_thresh", "nms")},
        "clip_size": data.get("clip_size", 1),
        "clip_stride": data.get("clip_stride", 1) * data.get("downsample_rate", 1),
        # The regression head's per-level scales (fp32 values): the one heads graph takes them as input.
        "head_scales": [float(s.scale.detach().float()) for s in model.reg_head.scales],
    }
