"""The HieraMamba grounding network (REFERENCE §4).

``HieraMamba.forward`` is the official training/eval forward (packed text, several videos).
``HieraMamba.forward_levels`` is the export-shaped eval forward for one video and any number
of queries: no host syncs, no data-dependent Python ints, no in-place writes, so
``torch.export`` traces it with dynamic time and query axes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from hieramamba.nvtx import nvtx_range

from .errors import ConfigError
from .modules.backbone import HieraMambaBackbone, check_mask_semantics
from .modules.fusion import make_fusion
from .modules.heads import ClsHead, RegHead
from .modules.primitives import MaskedConv1D
from .modules.text_net import make_text_net


class ModelOutput(NamedTuple):
    """Per pyramid level ``l``: ``logits[l] (Nq, T_l)``, ``offsets[l] (Nq, T_l, 2)``,
    ``masks[l] (Nq, T_l)``; backbone features ``fpn[l] (B, D, T_l)`` (query-fused for early
    fusion), ``fpn_masks[l] (B, 1, T_l)``, ``anchors[l]``, ``anchor_masks[l]``."""
    logits: tuple
    offsets: tuple
    masks: tuple
    fpn: tuple
    fpn_masks: tuple
    anchors: tuple
    anchor_masks: tuple


def _as_mask3(mask):
    return mask.unsqueeze(1) if mask.ndim == 2 else mask


class HieraMamba(nn.Module):
    def __init__(self, model_cfg: dict, mask_semantics: str = "official"):
        super().__init__()
        try:
            text_cfg, vid_cfg = dict(model_cfg["text_net"]), dict(model_cfg["vid_net"])
            fusion_cfg = dict(model_cfg["fusion"])
            cls_cfg, reg_cfg = dict(model_cfg["cls_head"]), dict(model_cfg["reg_head"])
        except KeyError as exc:
            raise ConfigError(f"model config lacks {exc}; load it with hieramamba.config.load_config") from exc
        self.mask_semantics = check_mask_semantics(mask_semantics)
        self.early_fusion = bool(model_cfg.get("early_fusion", True))
        self.num_levels = vid_cfg["arch"][-1]
        self.vid_stride = vid_cfg.get("stride", 1)
        self.vid_in_dim = vid_cfg["in_dim"]
        self.text_in_dim = text_cfg["in_dim"]

        self.text_net = make_text_net(text_cfg)
        vid_cfg.pop("name", None)
        if self.early_fusion:
            self.vid_proj = MaskedConv1D(vid_cfg["in_dim"], vid_cfg["embd_dim"], 1)
            vid_cfg["in_dim"] = vid_cfg["embd_dim"]
        self.vid_net = HieraMambaBackbone(**vid_cfg, mask_semantics=mask_semantics)
        self.fusion = make_fusion(fusion_cfg)
        cls_cfg.pop("name", None)
        reg_cfg.pop("name", None)
        self.cls_head = ClsHead(**cls_cfg)
        self.reg_head = RegHead(**reg_cfg)

    # -- pieces -------------------------------------------------------------------------
    def encode_text(self, text, text_mask):
        """``(Nq, Dt, Tt)``, mask ``(Nq, Tt)`` or ``(Nq, 1, Tt)`` → ``(Nq, C, Tt+1)``, mask."""
        with nvtx_range("text_encode"):
            return self.text_net(text, _as_mask3(text_mask))

    def heads(self, fpn, fpn_masks, text, text_mask, text_size=None):
        """Late fusion of every level with the text, then the shared heads."""
        logits, offsets, masks = [], [], []
        for level, (x, m) in enumerate(zip(fpn, fpn_masks)):
            with nvtx_range(f"fusion_late[{level}]"):
                x, m = self.fusion(x, m, text, text_mask, text_size)
            with nvtx_range("heads"):
                logits.append(self.cls_head(x, m))
                offsets.append(self.reg_head(x, m, level))
                masks.append(m[:, 0])
        return logits, offsets, masks

    def fuse_early(self, vid, vid_mask, text, text_mask, text_size=None):
        """Early-fusion models: ``vid_proj`` then the fusion module, one video copy per query.
        Late-fusion models (TACoS): the video unchanged."""
        if self.early_fusion:
            with nvtx_range("vid_proj"):
                vid, vid_mask = self.vid_proj(vid, vid_mask)
            with nvtx_range("fusion_early"):
                vid, vid_mask = self.fusion(vid, vid_mask, text, text_mask, text_size)
        return vid, vid_mask

    def _video_pipeline(self, vid, vid_mask, text, text_mask, text_size):
        vid, vid_mask = self.fuse_early(vid, vid_mask, text, text_mask, text_size)
        fpn, fpn_masks, anchors, anchor_masks = self.vid_net(vid, vid_mask)
        logits, offsets, masks = self.heads(fpn, fpn_masks, text, text_mask, text_size)
        return ModelOutput(tuple(logits), tuple(offsets), tuple(masks), tuple(fpn), tuple(fpn_masks),
                           tuple(anchors), tuple(anchor_masks))

    # -- entry points ---------------------------------------------------------------------
    def forward(self, vid, vid_masks, text, text_masks, text_size=None) -> ModelOutput:
        """Official forward. ``vid (B, Dv, T)``, ``vid_masks (B, T)``; text either packed
        ``(Nq, Dt, Tt)`` or per video ``(B, n_max, Dt, Tt)`` with ``text_size (B,)`` queries per
        video (unpacked here with a host sync, as the official trainer does)."""
        if text.ndim == 4:
            sizes = [int(k) for k in text_size]
            text = torch.cat([t[:k] for t, k in zip(text, sizes)])
            text_masks = torch.cat([t[:k] for t, k in zip(text_masks, sizes)])
        text, text_mask = self.encode_text(text, text_masks)
        return self._video_pipeline(vid, _as_mask3(vid_masks), text, text_mask, text_size)

    def forward_levels(self, vid, vid_mask, text, text_mask):
        """Export-shaped eval forward for ONE video ``(1, Dv, T)`` with mask ``(1, 1, T)`` and
        ``Nq`` queries ``(Nq, Dt, Tt)`` with mask ``(Nq, 1, Tt)``. Returns three tuples of
        per-level tensors: logits ``(Nq, T_l)``, offsets ``(Nq, T_l, 2)``, masks ``(Nq, T_l)``."""
        text, text_mask = self.encode_text(text, text_mask)
        out = self._video_pipeline(vid, _as_mask3(vid_mask), text, text_mask, None)
        return out.logits, out.offsets, out.masks


def build_model(opt: dict, mask_semantics: str = "official") -> HieraMamba:
    """Build the network from a full config (``load_config``) or its ``model`` section. A config
    the modules cannot be built from (sizes that do not divide, ...) is a ``ConfigError``."""
    try:
        return HieraMamba(opt["model"] if "model" in opt else opt, mask_semantics=mask_semantics)
    except (TypeError, ValueError, KeyError, AssertionError, ZeroDivisionError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"the model cannot be built from this config: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


@torch.no_grad()
def widen_layer_scales(model: HieraMamba, low: float = 0.3, high: float = 1.0) -> HieraMamba:
    """For random-weight comparisons (tests, benchmarks): draw every LayerScale from
    ``U(low, high)``. At their 1e-4 init they hide most of each block, so a comparison of two
    implementations on a fresh model would check little more than the residual path. The heads'
    per-level ``scales`` are left alone. Uses the global torch RNG; returns the model."""
    for name, p in model.named_parameters():
        if name.endswith(".scale") and "scales." not in name:
            p.uniform_(low, high)
    return model

