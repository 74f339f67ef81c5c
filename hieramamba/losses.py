"""Training losses (REFERENCE §10.3).

* :func:`sigmoid_focal_loss` / :func:`cls_focal_loss` — classification, label smoothing 0.2
  (targets 0.9 / 0.1), gamma 2, alpha 0.5, ``p_t`` from the soft target (official
  ``libs/modeling/loss.py`` + ``TrainerOriginal._calc_focal_loss``).
* :func:`iou_loss` (config ``reg_loss: iou``; the official function is called ``ctr_giou_loss`` but
  has no enclosing-box term) and :func:`diou_loss` (``reg_loss: diou``), both on
  ``(left, right)`` offsets from the same point.
* :class:`LossNormalizer` — the EMA of the number of positives that divides every term.
* :class:`AnchorContrastiveLoss` (ACC; ``ds_contrast`` / ``contr_mp``) and
  :class:`SegmentPooledContrastiveLoss` (SPC; ``gt_contrast`` / ``point_gt_contr_pooled``), each with
  its own :class:`ContrastiveProjector`.

Divergences from the official code (all documented where they live):

1. The projector MLPs are ordinary trainable ``nn.Module`` parameters here. In the official trainer
   they are created *after* the optimizer is built from ``model.parameters()``, so they stay at their
   random initialisation for the whole run (and are never saved). To reproduce that exactly, call
   ``loss.requires_grad_(False)`` or keep the projectors out of the optimizer.
2. Contrastive similarities are computed in float32 whatever the feature dtype (the official code
   exponentiates ``sim / 0.07`` directly, which overflows fp16 at ``exp(14.3)``).
3. ACC negatives are sampled per batch row (the official builds one ``N × N`` matrix over the whole
   batch and masks other rows out; same distribution, far less memory). For an odd level length
   the last anchor's second positive does not exist; the official index arithmetic then reads the
   first token of the *next* batch row. Here it is simply absent. Released training lengths
   (2304 / 4096 steps) keep every level even, so this never differs in practice.
4. Random negative sampling takes an optional ``torch.Generator`` (the official uses the global RNG).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .errors import ConfigError, InputError

__all__ = [
    "sigmoid_focal_loss",
    "cls_focal_loss",
    "iou_loss",
    "diou_loss",
    "regression_loss",
    "LossNormalizer",
    "ContrastiveProjector",
    "sample_negatives",
    "anchor_contrastive_level",
    "AnchorContrastiveLoss",
    "SegmentPooledContrastiveLoss",
]


# --------------------------------------------------------------------------------------------
# classification / regression

def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum() * 0.0
    if reduction == "none":
        return loss
    raise InputError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.5, gamma: float = 2.0,
                       reduction: str = "sum") -> Tensor:
    """Focal loss with soft targets (RetinaNet form, official smoothing variant).

    ``ce = BCEWithLogits(x, t)``, ``p_t = p·t + (1-p)(1-t)`` with ``p = sigmoid(x)``,
    ``loss = alpha_t · ce · (1 - p_t)^gamma`` where ``alpha_t = alpha`` if ``t >= 0.5`` else
    ``1 - alpha`` (no weighting when ``alpha < 0``). Computed in float32.
    """
    x = logits.float()
    t = targets.float()
    p = torch.sigmoid(x)
    p_t = p * t + (1 - p) * (1 - t)
    loss = F.binary_cross_entropy_with_logits(x, t, reduction="none") * (1 - p_t).pow(gamma)
    if alpha >= 0:
        pos = (t >= 0.5).float()
        loss = (alpha * pos + (1 - alpha) * (1 - pos)) * loss
    return _reduce(loss, reduction)


def cls_focal_loss(logits: Tensor, labels: Tensor, smoothing: float = 0.2, alpha: float = 0.5,
                   gamma: float = 2.0, reduction: str = "sum") -> Tensor:
    """Classification loss of the trainer: binary labels smoothed to ``1 - s/2`` / ``s/2``
    (0.9 / 0.1 for ``s = 0.2``), then :func:`sigmoid_focal_loss`, summed."""
    t = labels.to(torch.float32) * (1.0 - smoothing) + smoothing / 2
    return sigmoid_focal_loss(logits, t, alpha=alpha, gamma=gamma, reduction=reduction)


def _check_offsets(pred: Tensor, gt: Tensor) -> None:
    if pred.shape != gt.shape or pred.dim() != 2 or pred.size(-1) != 2:
        raise InputError(
            f"offsets must both be (N, 2); got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if pred.numel() and bool((pred < 0).any()):
        raise InputError("predicted offsets must be non-negative")
    if gt.numel() and bool((gt < 0).any()):
        raise InputError("ground-truth offsets must be non-negative (use positives only)")


def _iou_terms(pred: Tensor, gt: Tensor, eps: float):
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = gt[:, 0], gt[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    return inter / union.clamp(min=eps), lp, rp, lg, rg


def iou_loss(pred_offsets: Tensor, gt_offsets: Tensor, reduction: str = "sum",
             eps: float = 1e-8, check: bool = True) -> Tensor:
    """``1 - IoU`` of two segments sharing a centre point, given as ``(left, right)`` offsets
    ``(N, 2)``. This is the official ``ctr_giou_loss`` (config ``reg_loss: iou``)."""
    pred, gt = pred_offsets.float(), gt_offsets.float()
    if check:
        _check_offsets(pred, gt)
    iou, *_ = _iou_terms(pred, gt, eps)
    return _reduce(1.0 - iou, reduction)


def diou_loss(pred_offsets: Tensor, gt_offsets: Tensor, reduction: str = "sum",
              eps: float = 1e-8, check: bool = True) -> Tensor:
    """Distance-IoU in offset space: ``1 - IoU + (rho / len_c)^2`` with
    ``rho = ((r_p - l_p) - (r_g - l_g)) / 2`` and ``len_c = max(l_p, l_g) + max(r_p, r_g)``."""
    pred, gt = pred_offsets.float(), gt_offsets.float()
    if check:
        _check_offsets(pred, gt)
    iou, lp, rp, lg, rg = _iou_terms(pred, gt, eps)
    len_c = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    rho = 0.5 * (rp - lp - rg + lg)
    return _reduce(1.0 - iou + torch.square(rho / len_c.clamp(min=eps)), reduction)


def regression_loss(name: str) -> Callable[..., Tensor]:
    """``'iou'`` → :func:`iou_loss`; ``'diou'`` → :func:`diou_loss` (config ``train.reg_loss``).
    The official trainer silently uses ``iou`` for any name other than ``'diou'``; here an unknown
    name is an error."""
    if name == "iou":
        return iou_loss
    if name == "diou":
        return diou_loss
    raise ConfigError(f"train.reg_loss must be 'iou' or 'diou', got {name!r}")


class LossNormalizer:
    """EMA of the number of positive points; every loss term is divided by :attr:`value`.

    Update rule (after each optimisation step, with ``num_pos`` summed over micro-batches and
    processes): ``value ← m·value + (1 - m)·max(num_pos, 1)``; initial value ``train.loss_norm``
    (10 Ego4D, 100 TACoS, 250 MAD), ``m = train.loss_norm_momentum`` (0.9).
    """

    def __init__(self, init: float, momentum: float = 0.9):
        if not init > 0:
            raise ConfigError(f"loss_norm must be > 0, got {init}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"loss_norm_momentum must be in [0, 1), got {momentum}")
        self.value = float(init)
        self.momentum = float(momentum)

    def update(self, num_pos) -> float:
        n = float(num_pos.item() if isinstance(num_pos, Tensor) else num_pos)
        self.value = self.momentum * self.value + (1.0 - self.momentum) * max(n, 1.0)
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.momentum = float(state.get("momentum", self.momentum))

    def __repr__(self) -> str:
        return f"LossNormalizer(value={self.value:.4f}, momentum={self.momentum})"


# --------------------------------------------------------------------------------------------
# contrastive losses

class ContrastiveProjector(nn.Module):
    """``P(v) = normalize(fc2(GELU(LN(fc1 v))))``; ``fc1: D → expand·D`` without bias, LayerNorm
    (eps 1e-5), exact GELU, ``fc2: expand·D → out_dim``. Input ``(..., D)``, output unit vectors
    ``(..., out_dim)``. (Official ``LNProjector`` with ``num_layers=2``, the released setting.)

    Unlike the official run, these parameters are meant to be trained (see module docstring).
    """

    def __init__(self, in_dim: int, out_dim: int = 256, expand: float = 1.0):
        super().__init__()
        hid = int(expand * in_dim)
        self.fc1 = nn.Linear(in_dim, hid, bias=False)
        self.ln1 = nn.LayerNorm(hid)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hid, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.fc2(self.act1(self.ln1(self.fc1(x)))), p=2, dim=-1)


def _projector_from_opt(opt: dict, in_dim: int) -> ContrastiveProjector:
    layers = opt.get("proj_num_layers", 2)
    if layers != 2:
        raise ConfigError(f"proj_num_layers={layers} is not supported (released configs use 2)")
    return ContrastiveProjector(in_dim, opt.get("proj_outdim", 256), opt.get("proj_expand", 1.0))


def _as_bool_rows(mask: Tensor, name: str) -> Tensor:
    if mask.dim() == 3:
        if mask.size(1) != 1:
            raise InputError(f"{name} must be (B, T) or (B, 1, T), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.dim() != 2:
        raise InputError(f"{name} must be (B, T) or (B, 1, T), got {tuple(mask.shape)}")
    return mask.bool()


def sample_negatives(candidates: Tensor, counts: Tensor, generator: Optional[torch.Generator] = None,
                     scores: Optional[Tensor] = None) -> Tensor:
    """Choose ``counts[i]`` of the True entries of row ``i`` of ``candidates`` ``(N, M)``.

    Without ``scores`` the choice is uniform at random (random keys + top-k, as the official);
    with ``scores`` the highest-scoring candidates are taken (``hard_neg``). ``counts`` must not
    exceed the number of candidates per row. Returns a bool ``(N, M)`` selection.
    """
    n, m = candidates.shape
    k = int(counts.max().item()) if counts.numel() else 0
    if k == 0 or m == 0:
        return torch.zeros_like(candidates, dtype=torch.bool)
    if scores is None:
        scores = torch.rand(n, m, generator=generator, device=candidates.device)
    keys = scores.float().masked_fill(~candidates, float("-inf"))
    top = torch.topk(keys, k=k, dim=1).indices
    keep = torch.arange(k, device=candidates.device)[None] < counts[:, None]
    return torch.zeros_like(candidates, dtype=torch.bool).scatter(1, top, keep)


def anchor_contrastive_level(seq: Tensor, seq_mask: Tensor, anchors: Tensor, anchor_mask: Tensor,
                             projector: nn.Module, temperature: float = 0.07, neg_ratio: float = 8,
                             gap_ratio: float = 0.2, radius: int = 0, hard_neg: bool = False,
                             generator: Optional[torch.Generator] = None) -> Tensor:
    """ACC loss of one level (official ``contrastive_subsample_negative_mp``).

    Args:
        seq: ``(B, C, T)`` level tokens (``fpn[l]``); seq_mask ``(B, 1, T)`` or ``(B, T)``.
        anchors: ``(B, C, nA)`` the level's anchors, ``nA = ceil(T / 2)``; anchor_mask likewise.

    Anchor ``k`` has positives ``2(k+o)`` and ``2(k+o)+1`` for ``|o| <= radius`` (valid tokens
    only) and is used iff it is valid and has a positive. Its negatives are other used anchors of
    the same row with ``|k - k'| > max(1, int(gap_ratio·nA))``; ``min(ceil(neg_ratio·#pos),
    #candidates)`` of them are sampled (at least 1 requested). Loss per anchor:
    ``-log(S_pos / (S_pos + S_neg + 1e-9))`` with ``S = Σ exp(a·x / τ)``; mean over used anchors.
    Returns a float32 scalar (0 without graph when no anchor is used).
    """
    if radius < 0:
        raise InputError(f"radius must be >= 0, got {radius}")
    bsz, dim, n_anc = anchors.shape
    if seq.dim() != 3 or seq.size(0) != bsz or seq.size(1) != dim:
        raise InputError(f"seq must be (B={bsz}, C={dim}, T), got {tuple(seq.shape)}")
    seq_len = seq.size(2)
    seq_m = _as_bool_rows(seq_mask, "seq_mask")
    anc_m = _as_bool_rows(anchor_mask, "anchor_mask")
    device = anchors.device

    z_seq = projector(seq.transpose(1, 2)).float()                 # (B, T, E)
    k = torch.arange(n_anc, device=device)
    pos_z, pos_m = [], []
    for off in range(-radius, radius + 1):
        t = k + off
        in_range = (t >= 0) & (t < n_anc)
        for j in (0, 1):
            idx = 2 * t + j
            ok = in_range & (idx >= 0) & (idx < seq_len)
            idx = idx.clamp(0, seq_len - 1)
            pos_z.append(z_seq[:, idx])                            # (B, nA, E)
            pos_m.append(ok[None] & seq_m[:, idx])                 # (B, nA)
    pos_z = torch.stack(pos_z, dim=2)                              # (B, nA, P, E)
    pos_m = torch.stack(pos_m, dim=2)                              # (B, nA, P)

    used = anc_m & pos_m.any(-1)                                   # (B, nA)
    if not bool(used.any()):
        return torch.zeros((), device=device)
    gap = max(1, int(gap_ratio * n_anc))

    losses = []
    anc_t = anchors.transpose(1, 2)                                # (B, nA, C)
    for b in range(bsz):
        sel = used[b].nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        z_a = projector(anc_t[b, sel]).float()                     # (N, E)
        zp, pm = pos_z[b, sel], pos_m[b, sel]
        s_pos = (torch.exp((z_a[:, None] * zp).sum(-1) / temperature) * pm.float()).sum(1)
        exp_all = torch.exp(z_a @ z_a.T / temperature)             # (N, N)
        cand = (sel[:, None] - sel[None]).abs() > gap              # excludes self too
        counts = torch.ceil(neg_ratio * pm.sum(1).float()).long().clamp(min=1)
        counts = torch.minimum(counts, cand.sum(1))
        chosen = sample_negatives(cand, counts, generator,
                                  scores=exp_all.detach() if hard_neg else None)
        s_neg = (exp_all * chosen.float()).sum(1)
        losses.append(-torch.log(s_pos / (s_pos + s_neg + 1e-9)))
    return torch.cat(losses).mean()


class AnchorContrastiveLoss(nn.Module):
    """ACC, summed over levels: ``forward(fpn, fpn_masks, anchor_fpn, anchor_masks)`` with
    per-level ``(B, C, T_l)``, ``(B, 1, T_l)``, ``(B, C, ceil(T_l/2))``, ``(B, 1, ceil(T_l/2))``.

    The trainer divides the result by the loss normaliser and multiplies by ``weight``
    (100 Ego4D, 10 TACoS); with late fusion (TACoS) the official also multiplies it by the mean
    number of queries per video. The projector is trainable (official: frozen by accident).
    """

    def __init__(self, embd_dim: int, temperature: float = 0.07, neg_ratio: float = 8,
                 gap_ratio: float = 0.2, radius: int = 0, hard_neg: bool = False,
                 proj_outdim: int = 256, proj_expand: float = 1.0):
        super().__init__()
        self.temperature, self.neg_ratio, self.gap_ratio = temperature, neg_ratio, gap_ratio
        self.radius, self.hard_neg = radius, hard_neg
        self.projector = ContrastiveProjector(embd_dim, proj_outdim, proj_expand)

    @classmethod
    def from_config(cls, opt: dict, embd_dim: int) -> "AnchorContrastiveLoss":
        """Build from ``train.loss_aux.ds_contrast`` (official defaults for missing keys)."""
        if opt.get("contr_type", "contr_mp") != "contr_mp":
            raise ConfigError(f"ds_contrast.contr_type {opt.get('contr_type')!r} is not 'contr_mp'")
        if opt.get("cross_video_neg", False):
            raise ConfigError("ds_contrast.cross_video_neg=True is not supported (released: False)")
        obj = cls(embd_dim, opt.get("temperature", 0.07), opt.get("neg_ratio", 0.20),
                  opt.get("gap_ratio", 0.30), opt.get("radius", 0), opt.get("hard_neg", False))
        obj.projector = _projector_from_opt(opt, embd_dim)
        return obj

    def forward(self, fpn: Sequence[Tensor], fpn_masks: Sequence[Tensor],
                anchor_fpn: Sequence[Tensor], anchor_masks: Sequence[Tensor],
                generator: Optional[torch.Generator] = None) -> Tensor:
        if not (len(fpn) == len(fpn_masks) == len(anchor_fpn) == len(anchor_masks)):
            raise InputError("fpn, fpn_masks, anchor_fpn and anchor_masks need one entry per level")
        total = torch.zeros((), device=fpn[0].device)
        for seq, seq_m, anc, anc_m in zip(fpn, fpn_masks, anchor_fpn, anchor_masks):
            total = total + anchor_contrastive_level(
                seq, seq_m, anc, anc_m, self.projector, self.temperature, self.neg_ratio,
                self.gap_ratio, self.radius, self.hard_neg, generator)
        return total


class SegmentPooledContrastiveLoss(nn.Module):
    """SPC, summed over levels (official ``MultiScaleMaskedGTPointContrastive``).

    ``forward(fpn, fpn_masks, pos_labels, span_masks)``, per level: features ``(B, C, T_l)`` (one row
    per query: early fusion = query-fused features; late fusion = video features repeated per
    query), valid mask ``(B, T_l)`` or ``(B, 1, T_l)``, the cls-positive labels of that level
    ``(B, T_l)`` (:func:`hieramamba.labels.annotate_points` split per level) and the GT span mask
    ``(B, T_l)`` (:func:`hieramamba.labels.gt_span_masks`).

    Per query row: embeddings ``z = normalize(P(x))`` of valid points; positives = positive points;
    negatives = valid points that are neither positive nor in the span, at most
    ``int(#pos·neg_ratio)`` chosen at random; prototype ``a = normalize(mean z_pos)``; loss
    ``logsumexp(a·z_{pos∪neg}/τ) - logsumexp(a·z_pos/τ)``. Mean over rows with ≥1 positive and ≥1
    negative (0 if none). The projector is trainable (official: frozen by accident).
    """

    def __init__(self, embd_dim: int, temperature: float = 0.07, neg_ratio: float = 1.0,
                 use_projector: bool = True, proj_outdim: int = 256, proj_expand: float = 1.0):
        super().__init__()
        self.temperature, self.neg_ratio = temperature, neg_ratio
        self.projector = (ContrastiveProjector(embd_dim, proj_outdim, proj_expand)
                          if use_projector else None)

    @classmethod
    def from_config(cls, opt: dict, embd_dim: int) -> "SegmentPooledContrastiveLoss":
        """Build from ``train.loss_aux.gt_contrast`` (official defaults for missing keys)."""
        ctype = opt.get("contr_type", "point_gt_contr_pooled")
        if ctype != "point_gt_contr_pooled":
            raise ConfigError(f"gt_contrast.contr_type {ctype!r} is not 'point_gt_contr_pooled'")
        if opt.get("span_contr_gt", False):
            raise ConfigError("gt_contrast.span_contr_gt=True is not supported (released: False)")
        use_proj = opt.get("use_projector", True)
        obj = cls(embd_dim, opt.get("temperature", 0.07), opt.get("neg_ratio", 1.0), use_proj)
        if use_proj:
            obj.projector = _projector_from_opt(opt, embd_dim)
        return obj

    def _embed(self, x: Tensor) -> Tensor:               # (B, C, T) -> (B, T, E) unit rows
        x = x.transpose(1, 2)
        z = self.projector(x) if self.projector is not None else x
        return F.normalize(z.float(), p=2, dim=-1)

    def level_loss(self, x: Tensor, mask: Tensor, pos: Tensor, span: Tensor,
                   generator: Optional[torch.Generator] = None) -> Tensor:
        if x.dim() != 3:
            raise InputError(f"features must be (B, C, T), got {tuple(x.shape)}")
        mask = _as_bool_rows(mask, "fpn_masks")
        pos, span = pos.bool(), span.bool()
        if not (mask.shape == pos.shape == span.shape == (x.size(0), x.size(2))):
            raise InputError(
                f"mask/labels/span must be (B, T) = {(x.size(0), x.size(2))}; got "
                f"{tuple(mask.shape)}, {tuple(pos.shape)}, {tuple(span.shape)}")
        z = self._embed(x)
        losses = []
        for b in range(x.size(0)):
            valid = mask[b]
            p_idx = (valid & pos[b]).nonzero(as_tuple=True)[0]
            n_idx = (valid & ~pos[b] & ~span[b]).nonzero(as_tuple=True)[0]
            if p_idx.numel() == 0 or n_idx.numel() == 0:
                continue
            k_neg = int(p_idx.numel() * self.neg_ratio)
            if n_idx.numel() > k_neg:
                perm = torch.randperm(n_idx.numel(), generator=generator, device=n_idx.device)
                n_idx = n_idx[perm[:k_neg]]
            if n_idx.numel() == 0:
                continue
            zp, zn = z[b, p_idx], z[b, n_idx]
            a = F.normalize(zp.mean(0), p=2, dim=0)
            s_pos = zp @ a / self.temperature
            s_all = torch.cat((s_pos, zn @ a / self.temperature))
            losses.append(torch.logsumexp(s_all, 0) - torch.logsumexp(s_pos, 0))
        if not losses:
            return torch.zeros((), device=x.device)
        return torch.stack(losses).mean()

    def forward(self, fpn: Sequence[Tensor], fpn_masks: Sequence[Tensor],
                pos_labels: Sequence[Tensor], span_masks: Sequence[Tensor],
                generator: Optional[torch.Generator] = None) -> Tensor:
        if not (len(fpn) == len(fpn_masks) == len(pos_labels) == len(span_masks)):
            raise InputError("fpn, fpn_masks, pos_labels and span_masks need one entry per level")
        total = torch.zeros((), device=fpn[0].device)
        for x, m, p, s in zip(fpn, fpn_masks, pos_labels, span_masks):
            total = total + self.level_loss(x, m, p, s, generator)
        return total
