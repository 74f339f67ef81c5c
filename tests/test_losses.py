"""Losses against direct float64 formulas written out with Python loops (REFERENCE §10.3)."""

import copy
import math

import pytest
import torch

from hieramamba.errors import ConfigError, InputError
from hieramamba.losses import (
    AnchorContrastiveLoss, ContrastiveProjector, LossNormalizer, SegmentPooledContrastiveLoss,
    anchor_contrastive_level, cls_focal_loss, diou_loss, iou_loss, regression_loss,
    sample_negatives, sigmoid_focal_loss,
)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_focal_loss_matches_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, generator=g) * 3
    labels = torch.rand(64, generator=g) > 0.7
    ref = 0.0
    for x, y in zip(logits.double().tolist(), labels.tolist()):
        t = 0.9 if y else 0.1
        p = _sig(x)
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        ref += 0.5 * ce * (1 - p_t) ** 2
    got = cls_focal_loss(logits, labels)
    assert got.dtype == torch.float32
    assert abs(got.item() - ref) < 1e-5 * max(1.0, ref)
    # alpha weighting for alpha != 0.5 (positive = target >= 0.5)
    soft = torch.where(labels, 0.9, 0.1)
    ref2 = 0.0
    for x, t in zip(logits.double().tolist(), soft.double().tolist()):
        p = _sig(x)
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        a = 0.25 if t >= 0.5 else 0.75
        ref2 += a * ce * (1 - (p * t + (1 - p) * (1 - t))) ** 2
    assert abs(sigmoid_focal_loss(logits, soft, alpha=0.25).item() - ref2) < 1e-5 * max(1.0, ref2)
    assert sigmoid_focal_loss(logits[:0], soft[:0]).item() == 0.0


def _iou_ref(p, g):
    lp, rp = p
    lg, rg = g
    inter = min(lp, lg) + min(rp, rg)
    union = lp + rp + lg + rg - inter
    return inter / union


def test_iou_and_diou_match_formula():
    g = torch.Generator().manual_seed(1)
    pred = torch.rand(40, 2, generator=g) * 5
    gt = torch.rand(40, 2, generator=g) * 5 + 0.01
    ref_iou = ref_diou = 0.0
    for p, t in zip(pred.double().tolist(), gt.double().tolist()):
        iou = _iou_ref(p, t)
        ref_iou += 1 - iou
        # explicit segments around the point 0: [-l, r]
        ps, pe, gs, ge = -p[0], p[1], -t[0], t[1]
        enclose = max(pe, ge) - min(ps, gs)
        centre_dist = (ps + pe) / 2 - (gs + ge) / 2
        ref_diou += 1 - iou + (centre_dist / enclose) ** 2
    assert abs(iou_loss(pred, gt).item() - ref_iou) < 1e-4
    assert abs(diou_loss(pred, gt).item() - ref_diou) < 1e-4
    assert iou_loss(gt, gt).abs().item() < 1e-5 and diou_loss(gt, gt).abs().item() < 1e-5
    assert regression_loss("iou") is iou_loss and regression_loss("diou") is diou_loss
    with pytest.raises(ConfigError):
        regression_loss("giou")
    with pytest.raises(InputError):
        iou_loss(-pred, gt)


def test_loss_normalizer_update_rule():
    n = LossNormalizer(10, momentum=0.9)
    assert n.update(0) == pytest.approx(0.9 * 10 + 0.1 * 1)          # max(#pos, 1)
    assert n.update(torch.tensor(20)) == pytest.approx(0.9 * 9.1 + 0.1 * 20)
    state = n.state_dict()
    m = LossNormalizer(1.0)
    m.load_state_dict(state)
    assert m.value == pytest.approx(10.19)
    with pytest.raises(ConfigError):
        LossNormalizer(0)


def _proj64(proj):
    return copy.deepcopy(proj).double()


def _acc_ref(seq, seq_mask, anc, anc_mask, proj, tau, gap_ratio):
    """All candidate negatives taken (neg_ratio large); Python loops in float64."""
    p64 = _proj64(proj)
    B, C, T = seq.shape
    nA = anc.shape[2]
    gap = max(1, int(gap_ratio * nA))
    with torch.no_grad():
        zs = p64(seq.double().transpose(1, 2))
        za = p64(anc.double().transpose(1, 2))
    losses = []
    for b in range(B):
        used = []
        for k in range(nA):
            pos = [i for i in (2 * k, 2 * k + 1) if i < T and seq_mask[b, 0, i]]
            if anc_mask[b, 0, k] and pos:
                used.append((k, pos))
        for k, pos in used:
            s_pos = sum(math.exp(float(za[b, k] @ zs[b, i]) / tau) for i in pos)
            s_neg = sum(math.exp(float(za[b, k] @ za[b, k2]) / tau) for k2, _ in used if abs(k - k2) > gap)
            losses.append(-math.log(s_pos / (s_pos + s_neg + 1e-9)))
    return sum(losses) / len(losses)


def _acc_inputs(seed, B=2, C=16, T=12):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(B, C, T, generator=g)
    anc = torch.randn(B, C, (T + 1) // 2, generator=g)
    seq_mask = torch.ones(B, 1, T, dtype=torch.bool)
    anc_mask = torch.ones(B, 1, (T + 1) // 2, dtype=torch.bool)
    anc_mask[0, 0, 2] = False
    if B > 1:                       # second row: padded tail (7 tokens, 4 anchors)
        seq_mask[1, 0, 7:] = False
        anc_mask[1, 0, 4:] = False
    return seq, seq_mask, anc, anc_mask


def test_acc_matches_formula_and_grads_flow():
    torch.manual_seed(0)
    loss_fn = AnchorContrastiveLoss(16, temperature=0.07, neg_ratio=100, gap_ratio=0.2, proj_outdim=8)
    levels = [_acc_inputs(1), _acc_inputs(2, T=6)]
    ref = sum(_acc_ref(*lv, loss_fn.projector, 0.07, 0.2) for lv in levels)
    seqs = [lv[0].requires_grad_() for lv in levels]
    got = loss_fn(seqs, [lv[1] for lv in levels], [lv[2] for lv in levels], [lv[3] for lv in levels])
    assert abs(got.item() - ref) < 1e-4 * max(1.0, abs(ref))
    got.backward()
    for name, p in loss_fn.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert seqs[0].grad.abs().sum() > 0


def test_acc_odd_length_and_empty():
    proj = ContrastiveProjector(16, 8)
    seq, seq_mask, anc, anc_mask = _acc_inputs(3, B=1, T=7)          # last anchor has one positive
    got = anchor_contrastive_level(seq, seq_mask, anc, anc_mask, proj, neg_ratio=100, gap_ratio=0.2)
    ref = _acc_ref(seq, seq_mask, anc, anc_mask, proj, 0.07, 0.2)
    assert abs(got.item() - ref) < 1e-4 * max(1.0, ref)
    zero = anchor_contrastive_level(seq, seq_mask, anc, torch.zeros_like(anc_mask), proj)
    assert zero.item() == 0.0


def test_negative_sampling_counts_and_reproducibility():
    g = torch.Generator().manual_seed(0)
    cand = torch.rand(50, 30, generator=g) > 0.4
    counts = torch.minimum(torch.randint(0, 12, (50,), generator=g), cand.sum(1))
    sel = sample_negatives(cand, counts, torch.Generator().manual_seed(5))
    assert torch.equal(sel.sum(1), counts)
    assert not (sel & ~cand).any()
    assert torch.equal(sel, sample_negatives(cand, counts, torch.Generator().manual_seed(5)))
    assert not torch.equal(sel, sample_negatives(cand, counts, torch.Generator().manual_seed(6)))
    # hard negatives: the highest scores win
    scores = torch.arange(30.0).expand(50, 30)
    hard = sample_negatives(cand, counts, scores=scores)
    for i in range(50):
        k = int(counts[i])
        top = cand[i].nonzero().flatten().tolist()[-k:] if k > 0 else []
        assert hard[i].nonzero().flatten().tolist() == top
    # ACC with subsampling: same generator seed -> same loss
    loss_fn = AnchorContrastiveLoss(16, neg_ratio=1, gap_ratio=0.1, proj_outdim=8)
    lv = _acc_inputs(4, T=40)
    a = loss_fn([lv[0]], [lv[1]], [lv[2]], [lv[3]], generator=torch.Generator().manual_seed(1))
    b = loss_fn([lv[0]], [lv[1]], [lv[2]], [lv[3]], generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def _spc_ref(x, mask, pos, span, proj, tau):
    p64 = _proj64(proj)
    with torch.no_grad():
        z = p64(x.double().transpose(1, 2))
        z = z / z.norm(dim=-1, keepdim=True)
    losses = []
    for b in range(x.shape[0]):
        P = [t for t in range(x.shape[2]) if mask[b, t] and pos[b, t]]
        N = [t for t in range(x.shape[2]) if mask[b, t] and not pos[b, t] and not span[b, t]]
        if not P or not N:
            continue
        a = sum(z[b, t] for t in P) / len(P)
        a = a / a.norm()
        sp = sum(math.exp(float(a @ z[b, t]) / tau) for t in P)
        sn = sum(math.exp(float(a @ z[b, t]) / tau) for t in N)
        losses.append(-math.log(sp / (sp + sn)))
    return sum(losses) / len(losses) if losses else 0.0


def _spc_inputs(seed, B=3, C=16, T=20):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, T, generator=g)
    mask = torch.ones(B, 1, T, dtype=torch.bool)
    mask[2, 0, 12:] = False
    pos = torch.zeros(B, T, dtype=torch.bool)
    span = torch.zeros(B, T, dtype=torch.bool)
    pos[0, 4:7] = True
    span[0, 2:9] = True
    pos[1, 10:12] = True
    span[1, 9:13] = True
    pos[2, 14:16] = True            # only on padded points -> row skipped
    return x, mask, pos, span


def test_spc_matches_formula_and_grads_flow():
    torch.manual_seed(0)
    loss_fn = SegmentPooledContrastiveLoss(16, temperature=0.07, neg_ratio=100.0, proj_outdim=8)
    levels = [_spc_inputs(1), _spc_inputs(2, T=10)]
    ref = sum(_spc_ref(x, m[:, 0], p, s, loss_fn.projector, 0.07) for x, m, p, s in levels)
    xs = [lv[0].requires_grad_() for lv in levels]
    got = loss_fn(xs, [lv[1] for lv in levels], [lv[2] for lv in levels], [lv[3] for lv in levels])
    assert abs(got.item() - ref) < 1e-4 * max(1.0, ref)
    got.backward()
    for name, p in loss_fn.named_parameters():
        assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    assert xs[0].grad.abs().sum() > 0


def test_spc_negative_subsampling():
    loss_fn = SegmentPooledContrastiveLoss(16, neg_ratio=1.0, proj_outdim=8)
    x, m, p, s = _spc_inputs(3, T=60)
    a = loss_fn.level_loss(x, m, p, s, torch.Generator().manual_seed(0))
    b = loss_fn.level_loss(x, m, p, s, torch.Generator().manual_seed(0))
    assert a.item() == b.item()
    # with a negative budget of 0 (neg_ratio 0) no row qualifies
    loss0 = SegmentPooledContrastiveLoss(16, neg_ratio=0.0, proj_outdim=8)
    assert loss0.level_loss(x, m, p, s).item() == 0.0
    # without a projector the features are only normalised
    plain = SegmentPooledContrastiveLoss(16, neg_ratio=100.0, use_projector=False)
    ident = torch.nn.Identity()
    assert abs(plain.level_loss(x, m, p, s).item() - _spc_ref(x, m[:, 0], p, s, ident, 0.07)) < 1e-4


def test_from_config():
    from hieramamba.config import load_config
    opt = load_config("ego4d", is_training=True)
    aux = opt["train"]["loss_aux"]
    acc = AnchorContrastiveLoss.from_config(aux["ds_contrast"], 384)
    spc = SegmentPooledContrastiveLoss.from_config(aux["gt_contrast"], 384)
    assert (acc.neg_ratio, acc.gap_ratio, acc.temperature) == (8, 0.2, 0.07)
    assert acc.projector.fc1.weight.shape == (384, 384) and acc.projector.fc1.bias is None
    assert acc.projector.fc2.weight.shape == (256, 384)
    assert spc.neg_ratio == 1.0 and spc.projector is not None
    with pytest.raises(ConfigError):
        AnchorContrastiveLoss.from_config({**aux["ds_contrast"], "cross_video_neg": True}, 384)
