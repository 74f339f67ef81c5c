"""Trainer (REFERENCE §10.3–10.4): smoke training, optimiser pieces, gradients, checkpoints/resume."""

import copy

import numpy as np
import pytest
import torch

from hieramamba.checkpoint import load_experiment
from hieramamba.config import packaged_config_path, parse_config, read_yaml
from hieramamba.data import make_synthetic
from hieramamba.errors import CheckpointError
from hieramamba.train import GroundingLoss, ModelEma, Trainer, WarmupMultiStepLR, param_groups


@pytest.fixture(autouse=True)
def one_thread():
    # small ops: one thread is faster and deterministic; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small_raw(**train):
    """The tiny config shrunk further: 16-d, 64-step training window (6 levels kept)."""
    raw = read_yaml(packaged_config_path("tiny"))
    raw["model"]["vid_net"].update(embd_dim=16, max_seq_len=64, mamba_headdim=16, mamba_dstate=8)
    raw["model"]["text_net"]["embd_dim"] = 16
    for key in ("ds_contrast", "gt_contrast"):
        raw["train"]["loss_aux"][key]["proj_outdim"] = 16
    raw["train"].update(batch_size=2, epochs=1, warmup_epochs=0, num_workers=0, max_num_text=None)
    raw["train"]["data"]["max_num_text"] = 3
    raw["train"].update(train)
    raw["seed"] = 7
    return raw


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("syn"), n_videos=6, min_len=40, max_len=64, seed=2,
                          n_scenes=5, max_scene_len=12, max_moment_len=16, queries_per_video=(2, 3))


def make_trainer(syn, path, resume=False, **kw):
    raw = kw.pop("raw", None) or small_raw()
    return Trainer(raw, path, data_paths=syn.paths(), device="cpu", resume=resume, progress=False,
                   quiet=True, **kw)


# ----------------------------------------------------------------------------------------------

def test_smoke_training_decreases_the_loss(syn, tmp_path):
    raw = small_raw()
    raw["train"]["optimizer"]["lr"] = 2e-3
    tr = make_trainer(syn, tmp_path / "exp", raw=raw)
    batch = tr.collate([tr.dataset[0], tr.dataset[1]])
    tr.model.eval()     # dropout / drop-path off for the measurement only
    losses = []
    for _ in range(12):
        rec = tr.step(batch)
        losses.append(rec["total"] * rec["norm"])        # undo the moving normaliser
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert tr.itr == 12


def test_warmup_then_constant_schedule():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.3)
    sched = WarmupMultiStepLR(opt, warmup_iters=4)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # lr_i = lr·i/(W−1) for i < W, then lr (REFERENCE §10.4)
    np.testing.assert_allclose(seen, [0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3], rtol=1e-12)
    state = sched.state_dict()
    sched2 = WarmupMultiStepLR(torch.optim.AdamW([p], lr=0.3), warmup_iters=4)
    sched2.load_state_dict(state)
    assert sched2.optimizer.param_groups[0]["lr"] == pytest.approx(0.3)
    assert WarmupMultiStepLR(torch.optim.AdamW([p], lr=0.3), 0).optimizer.param_groups[0]["lr"] == 0.3


def test_multistep_milestones_after_warmup_scale_by_gamma():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=0.4)
    sched = WarmupMultiStepLR(opt, warmup_iters=3, milestone_iters=(5, 7), gamma=0.5)
    seen = []
    for _ in range(9):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose(seen, [0.0, 0.2, 0.4, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1], rtol=1e-12)
    resumed = WarmupMultiStepLR(torch.optim.AdamW([p], lr=0.4), warmup_iters=3)
    resumed.load_state_dict(sched.state_dict())
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_model_ema_update_rule():
    m = torch.nn.Linear(3, 2)
    ema = ModelEma(m, beta=0.9)
    old = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.weight.add_(1.0)
        m.bias.mul_(-2.0)
    ema.update(m)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(ema.state[k], 0.9 * old[k] + 0.1 * v)


def test_weight_decay_split_follows_the_official_rule():
    opt = parse_config(small_raw(), is_training=True)
    from hieramamba.model import build_model
    model = build_model(opt)
    crit = GroundingLoss(opt)
    decay, no_decay = param_groups([model, crit], 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in list(model.named_parameters()) + [("loss." + n, p) for n, p in crit.named_parameters()]}
    d = {names[id(p)] for p in decay["params"]}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert not d & nd and len(d) + len(nd) == len(names)          # each parameter once
    for n in names.values():
        leaf = n.rsplit(".", 1)[-1]
        if leaf in ("bias", "dt_bias", "scale") or "norm" in n or ".ln" in n or n.startswith("ln"):
            assert n in nd, n
        if leaf in ("A_log", "D"):
            assert n in d, n
    for n in ("vid_net.branch.0.global_encoder.in_proj.weight", "vid_net.branch.0.global_encoder.conv1d.weight",
              "vid_net.branch.0.global_encoder.fc_D.weight", "vid_proj.conv.weight", "cls_head.cls_head.conv.weight",
              "vid_net.branch.0.gate1.0.weight", "loss.acc.projector.fc1.weight", "loss.spc.projector.fc2.weight"):
        assert n in d, n
    for n in ("vid_net.branch.0.global_encoder.norm.weight", "vid_net.branch.0.drop_path_global.scale",
              "reg_head.scales.0.scale", "fusion.ln_out.weight", "loss.acc.projector.ln1.weight",
              "loss.acc.projector.fc2.bias", "vid_net.embd_norms.0.weight"):
        assert n in nd, n


def test_gradients_reach_every_trainable_parameter(syn, tmp_path):
    """One training loss backward: every parameter of the network and of both projectors gets a
    non-zero gradient, except — by construction — the regression scale ``reg_head.scales.l`` of a
    pyramid level ``l`` without any positive point in the batch whose offsets ``ReLU(scale·y)`` are
    active (the regression loss only sees positives; a ReLU at zero passes no gradient; with short
    synthetic moments the top levels have no positives). Nothing else is exempt: the ACC loss reaches the last level's anchors, the SPC loss
    the level features."""
    from hieramamba.labels import annotate_points, split_levels

    tr = make_trainer(syn, tmp_path / "exp")
    tr.model.train()
    batch = tr._to_device(tr.collate([tr.dataset[i] for i in range(min(3, len(tr.dataset)))]))
    out = tr.model(batch.vid, batch.vid_masks, batch.text, batch.text_masks, batch.text_size)
    losses = tr.criterion(out, batch.targets, batch.text_size)
    assert int(losses["num_pos"]) > 0 and float(losses["acc"].detach()) > 0 and float(losses["spc"].detach()) > 0
    losses["total"].backward()
    params = list(tr.model.named_parameters()) + [("loss." + n, p) for n, p in tr.criterion.named_parameters()]
    none = [n for n, p in params if p.grad is None]
    zero = {n for n, p in params if p.grad is not None and not bool(p.grad.abs().sum() > 0)}

    lengths = [l.size(1) for l in out.logits]
    pts = [p[:n] for p, n in zip(tr.criterion.points("cpu"), lengths)]
    labels, _ = annotate_points(pts, batch.targets)
    valid = torch.cat(out.masks, dim=1)
    active = [(lab[..., None] & (off > 0)).any() for lab, off in
              zip(split_levels(labels & valid, lengths), out.offsets)]
    empty = {f"reg_head.scales.{l}.scale" for l, a in enumerate(active) if not a}
    assert none == [] and zero == empty, (none, zero, empty)
    assert len(empty) < len(lengths)


def test_checkpoint_and_resume_reproduce_an_uninterrupted_run(syn, tmp_path):
    raw = small_raw(epochs=1, warmup_epochs=1)      # 2 epochs, warm-up crossing the resume point
    straight = make_trainer(syn, tmp_path / "a", raw=copy.deepcopy(raw))
    straight.fit()
    first = make_trainer(syn, tmp_path / "b", raw=copy.deepcopy(raw), max_iters=straight.iters_per_epoch)
    first.fit()
    assert first.epoch == 1 and (tmp_path / "b" / "states" / "last.pth").is_file()
    resumed = make_trainer(syn, tmp_path / "b", raw=copy.deepcopy(raw), resume=True)
    assert resumed.epoch == 1 and resumed.itr == straight.iters_per_epoch
    resumed.fit()
    assert resumed.itr == straight.itr and resumed.epoch == 2
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
        torch.testing.assert_close(resumed.ema.state[k], straight.ema.state[k], rtol=0, atol=0, msg=k)
    for k, v in straight.criterion.state_dict().items():           # trained projectors too
        torch.testing.assert_close(resumed.criterion.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert resumed.criterion.normalizer.value == straight.criterion.normalizer.value
    # the folder loads strictly as an official experiment, with the EMA weights
    model, opt = load_experiment(tmp_path / "a")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, straight.ema.state[k], rtol=0, atol=0)
    blob = torch.load(tmp_path / "a" / "models" / "last.pth", weights_only=True)
    assert set(blob) == {"model", "model_ema"}
    assert any(not torch.equal(blob["model"][k], blob["model_ema"][k]) for k in blob["model"])
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "epoch 2/2 done" in log


def test_resume_from_a_corrupt_state_is_a_clear_error(syn, tmp_path):
    tr = make_trainer(syn, tmp_path / "exp", max_iters=1)
    tr.fit()
    states = tmp_path / "exp" / "states" / "last.pth"
    states.write_bytes(states.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"states.last\.pth"):
        make_trainer(syn, tmp_path / "exp", resume=True)
