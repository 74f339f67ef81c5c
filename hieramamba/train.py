"""Training (REFERENCE §10): the official ``TrainerAuxiliary`` recipe on the official data layouts.

    dataset (``video_centric``) → :func:`~hieramamba.data.collate_train` → :class:`HieraMamba`
    → :class:`GroundingLoss` (focal cls + IoU/DIoU reg + ACC + SPC, each ÷ the EMA normaliser)
    → AdamW (official weight-decay split) with per-iteration linear warm-up then a constant rate,
    global-norm clipping, model EMA (β per iteration) → ``<exp>/models/last.pth`` +
    ``<exp>/states/last.pth`` + ``opt.yaml`` + ``log.txt``.

What follows the official code (REFERENCE §10.3, §10.4):

* AdamW β=(0.9, 0.999); weight decay on Linear/Conv weights and on Hydra ``A_log``/``D``, none on
  biases (``dt_bias`` included), norms, layer scales, ``Scale``, ``bkgd_token``.
* Learning rate ``lr·i/(W−1)`` for iteration ``i < W = warmup_epochs·iters_per_epoch``, then
  constant, times ``gamma`` for every multistep milestone ``s ≥ 0`` passed (``train.scheduler.steps``,
  in epochs after the warm-up: from iteration ``(warmup_epochs + s)·iters_per_epoch``). The official
  configs' milestone ``-1`` never fires. Training runs ``epochs + warmup_epochs`` epochs.
* Model EMA with β = ``train.ema_beta`` after every optimiser step, on every floating-point entry
  of the state dict (buffers too); evaluation and the exported default use the EMA weights.
* Loss terms divided by the normaliser ``N̄``; ``N̄ ← 0.9·N̄ + 0.1·max(#pos, 1)`` after each step.
  With late fusion (TACoS) the ACC term is also multiplied by the mean number of queries per video.

Divergences (deliberate, documented):

* **The contrastive projectors are trained.** The official trainer builds them after the optimiser,
  so they stay at their random initialisation and are never saved (REFERENCE §10.3). Here they are
  in the optimiser (same weight-decay rule) and saved in ``states/<ckpt>.pth`` under
  ``loss_modules`` so that a resumed run continues exactly; ``models/<ckpt>.pth`` keeps only the
  network, so experiment folders still load strictly like official ones. Set
  ``train.train_projectors: false`` to reproduce the official frozen projectors.
* ``states/<ckpt>.pth`` also stores the normaliser and the RNG states (the official stores
  optimizer / scheduler / epoch / itr only), so ``resume`` reproduces an uninterrupted run.
* Checkpoints are written at the end of every epoch (the official writes ``last.pth`` only at the end
  of configured epochs, which are negative and never match, plus the final one).
* Data loading uses the dataset's per-(epoch, item) seeded crops and a per-epoch seeded shuffle.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .checkpoint import _load_pth, check_state_dict, save_experiment
from .config import parse_config, read_yaml
from .data import collate_train, make_dataset, trivial_collate
from .device import resolve_device
from .errors import CheckpointError, ConfigError, InputError
from .labels import annotate_points, gt_span_masks, make_points, split_levels
from .losses import (AnchorContrastiveLoss, LossNormalizer, SegmentPooledContrastiveLoss,
                     cls_focal_loss, regression_loss)
from .model import ModelOutput, build_model
from .modules.hydra import Hydra

__all__ = ["param_groups", "ModelEma", "WarmupMultiStepLR", "GroundingLoss", "Trainer", "train"]


# --------------------------------------------------------------------------------------------
# optimiser pieces

def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    """The official weight-decay split over the parameters of ``modules`` (REFERENCE §10.4).

    Decay: ``weight`` of ``nn.Linear`` / ``nn.Conv1d`` and Hydra's ``A_log`` / ``D``. No decay:
    everything else that is trainable — biases (Hydra ``dt_bias`` included), norm weights, layer
    scales, ``Scale``, ``bkgd_token``. Every trainable parameter lands in exactly one group."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(mod, (nn.Linear, nn.Conv1d)) and name == "weight":
                    decay.append(p)
                elif isinstance(mod, Hydra) and name in ("A_log", "D"):
                    decay.append(p)
                else:
                    # biases, dt_bias, norms, LayerScale/Scale, bkgd_token
                    no_decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def no_decay_names(model: nn.Module) -> list[str]:
    """Names of the parameters :func:`param_groups` leaves without weight decay (for tests/logs)."""
    ids = {id(p) for p in param_groups([model], 0.0)[1]["params"]}
    return [n for n, p in model.named_parameters() if id(p) in ids]


class ModelEma:
    """``ema ← β·ema + (1−β)·model`` on every floating-point state-dict entry, after each step;
    integer entries are copied. Holds a plain state dict (no second module)."""

    def __init__(self, model: nn.Module, beta: float = 0.999):
        if not 0 <= beta < 1:
            raise ConfigError(f"train.ema_beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            e = self.state[k]
            if torch.is_floating_point(e):
                e.mul_(self.beta).add_(v.detach(), alpha=1.0 - self.beta)
            else:
                e.copy_(v)

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)


class WarmupMultiStepLR:
    """Per-iteration linear warm-up from 0 over ``warmup_iters`` iterations
    (``lr_i = lr·i/(W−1)``), then the base rate (REFERENCE §10.4) times ``gamma`` per milestone
    iteration passed (none for the official configs, whose milestone ``-1`` never fires). Call
    :meth:`step` after every optimiser step; iteration 0 runs at the rate set at construction."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iters: int,
                 milestone_iters: tuple = (), gamma: float = 0.1):
        self.optimizer = optimizer
        self.warmup_iters = int(warmup_iters)
        self.milestone_iters = tuple(sorted(int(m) for m in milestone_iters))
        self.gamma = float(gamma)
        self.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.last_iter = 0
        self._apply()

    def factor(self, it: int) -> float:
        w = self.warmup_iters
        if w > 1 and it < w:
            return it / (w - 1)
        return self.gamma ** sum(it >= m for m in self.milestone_iters)

    def _apply(self) -> None:
        f = self.factor(self.last_iter)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * f

    def step(self) -> None:
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"warmup_iters": self.warmup_iters, "last_iter": self.last_iter, "base_lrs": self.base_lrs,
                "milestone_iters": list(self.milestone_iters), "gamma": self.gamma}

    def load_state_dict(self, state: dict) -> None:
        self.warmup_iters = int(state["warmup_iters"])
        # states written before milestones existed keep the constructed schedule
        self.milestone_iters = tuple(int(m) for m in state.get("milestone_iters", self.milestone_iters))
        self.gamma = float(state.get("gamma", self.gamma))
        self.last_iter = int(state["last_iter"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()


# --------------------------------------------------------------------------------------------
# the loss

class GroundingLoss(nn.Module):
    """All training terms of one batch (REFERENCE §10.2, §10.3) from a :class:`ModelOutput`.

    ``forward(out, targets, text_size)`` → dict with ``cls``, ``reg``, ``acc``, ``spc`` (each
    already divided by the normaliser and weighted), ``total`` and ``num_pos`` (an int tensor).
    ``targets`` ``(Nq, 2)`` level-0 grid units, one row per query in model batch order. The
    normaliser is updated by the caller (:meth:`update_normalizer`) after the optimiser step."""

    def __init__(self, opt: dict):
        super().__init__()
        model, train = opt["model"], opt["train"]
        self.num_levels = model["num_fpn_levels"]
        self.max_seq_len = model["max_vid_len"]
        self.early_fusion = bool(model.get("early_fusion", True))
        pt = opt["pt_gen"]
        self.regression_range, self.sigma = pt.get("regression_range", 4), pt.get("sigma", 0.5)
        self.center_sampling = train.get("center_sampling", "radius")
        self.radius = float(train.get("center_sampling_radius", 1.5))
        self.reg_loss = regression_loss(train.get("reg_loss", "diou"))
        self.reg_weight = float(train.get("loss_weight", 1.0))
        self.normalizer = LossNormalizer(train.get("loss_norm", 160), train.get("loss_norm_momentum", 0.9))
        embd = model["vid_net"]["embd_dim"]
        aux = train.get("loss_aux", {}) or {}
        acc_cfg, spc_cfg = aux.get("ds_contrast", {}) or {}, aux.get("gt_contrast", {}) or {}
        self.acc = AnchorContrastiveLoss.from_config(acc_cfg, embd) if acc_cfg.get("enable") else None
        self.spc = SegmentPooledContrastiveLoss.from_config(spc_cfg, embd) if spc_cfg.get("enable") else None
        self.acc_weight = float(acc_cfg.get("weight", 0.0))
        self.spc_weight = float(spc_cfg.get("weight", 0.0))
        self._points: dict = {}

    def points(self, device) -> list[Tensor]:
        key = str(device)
        if key not in self._points:
            self._points[key] = make_points(self.max_seq_len, self.num_levels, self.regression_range,
                                            self.sigma, device=device)
        return self._points[key]

    def forward(self, out: ModelOutput, targets: Tensor, text_size: Tensor) -> dict:
        lengths = [l.size(1) for l in out.logits]
        pts = [p[:n] for p, n in zip(self.points(targets.device), lengths)]
        if any(p.size(0) != n for p, n in zip(pts, lengths)):
            raise InputError(f"level lengths {lengths} exceed the point buffer of max_seq_len "
                             f"{self.max_seq_len}; pad training videos to vid_net.max_seq_len")
        logits = torch.cat(out.logits, dim=1)                      # (Nq, P)
        offsets = torch.cat(out.offsets, dim=1)                    # (Nq, P, 2)
        valid = torch.cat(out.masks, dim=1).bool()                 # (Nq, P)
        if targets.size(0) != logits.size(0):
            raise InputError(f"{targets.size(0)} targets for {logits.size(0)} query rows")
        labels, gt_off = annotate_points(pts, targets.float(), self.center_sampling, self.radius)
        pos = labels & valid
        num_pos = pos.sum()
        norm = self.normalizer.value

        cls = cls_focal_loss(logits[valid], labels[valid]) / norm
        reg = self.reg_loss(offsets[pos], gt_off[pos], check=False) / norm * self.reg_weight
        zero = logits.new_zeros(())
        acc = spc = zero
        if self.acc is not None and self.acc_weight:
            acc = self.acc(out.fpn, out.fpn_masks, out.anchors, out.anchor_masks)
            if not self.early_fusion:
                acc = acc * text_size.float().mean()
            acc = acc / norm * self.acc_weight
        if self.spc is not None and self.spc_weight:
            fpn, fpn_masks = out.fpn, out.fpn_masks
            if fpn[0].size(0) != logits.size(0):           # late fusion: video rows → query rows
                reps = text_size.to(fpn[0].device)
                fpn = [f.repeat_interleave(reps, dim=0) for f in fpn]
                fpn_masks = [m.repeat_interleave(reps, dim=0) for m in fpn_masks]
            pos_levels = split_levels(labels, lengths)
            span_levels = split_levels(gt_span_masks(targets.float(), lengths), lengths)
            spc = self.spc(fpn, fpn_masks, pos_levels, span_levels) / norm * self.spc_weight
        total = cls + reg + acc + spc
        return {"total": total, "cls": cls, "reg": reg, "acc": acc, "spc": spc, "num_pos": num_pos}

    def update_normalizer(self, num_pos) -> float:
        return self.normalizer.update(num_pos)


# --------------------------------------------------------------------------------------------
# the trainer

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _make_logger(path: Path, quiet: bool) -> logging.Logger:
    log = logging.getLogger(f"hieramamba.train.{path}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    fh = logging.FileHandler(path, mode="a", encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


# What a training state holds beyond tensors and plain Python values: numpy's RNG state (an
# array) — the only globals ``torch.load(weights_only=True)`` is allowed to build.
# numpy 2 names the module numpy._core.multiarray, numpy 1 numpy.core.multiarray (numpy 1.26 has a
# numpy._core without it).
_NP_MULTIARRAY = importlib.import_module("numpy._core.multiarray" if int(np.__version__.split(".")[0]) >= 2
                                         else "numpy.core.multiarray")
_STATE_GLOBALS = [_NP_MULTIARRAY._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


class Trainer:
    """Train one experiment folder.

    Args:
        opt_raw: the config as written (dict or a path/packaged name for :func:`read_yaml`); it is
            saved unchanged as ``<exp>/opt.yaml`` (plus ``overrides``).
        exp_dir: experiment folder (created). With ``resume=True`` and an existing
            ``states/last.pth`` training continues after the last finished epoch.
        root / data_paths: where the data lives (relative config paths resolve against ``root``;
            ``data_paths`` = keyword overrides for :func:`make_dataset`, e.g. ``anno_file``).
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'`` or ``'auto'``.
        num_workers: DataLoader workers (default: ``train.num_workers``).
        max_iters: stop after this many iterations in total (smoke tests, benchmarks).
        progress: tqdm bars; quiet: no log lines on stderr (the log file is always written).
    """

    def __init__(self, opt_raw: dict, exp_dir, *, root=None, data_paths: Optional[dict] = None,
                 device="auto", num_workers: Optional[int] = None, resume: bool = True,
                 max_iters: Optional[int] = None, progress: bool = True, quiet: bool = False,
                 mask_semantics: str = "official"):
        if not isinstance(opt_raw, dict):
            raise ConfigError(f"opt_raw must be a config dict, got {type(opt_raw).__name__}")
        self.opt_raw = copy.deepcopy(opt_raw)
        self.opt = parse_config(self.opt_raw, is_training=True, source=str(exp_dir))
        self.exp_dir = Path(exp_dir)
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        self.log = _make_logger(self.exp_dir / "log.txt", quiet)
        self.device = resolve_device(device)
        self.progress, self.max_iters = progress, max_iters
        train = self.opt["train"]

        self.seed = int(self.opt.get("seed", 1234567891))
        _seed_everything(self.seed)
        self.dataset = make_dataset(self.opt, True, root=root, **(data_paths or {}))
        self.batch_size = int(train["batch_size"])
        self.num_workers = int(train.get("num_workers", 0) if num_workers is None else num_workers)
        self.model = build_model(self.opt, mask_semantics=mask_semantics).to(self.device)
        self.criterion = GroundingLoss(self.opt).to(self.device)
        self.train_projectors = bool(train.get("train_projectors", True))
        if not self.train_projectors:                      # official: frozen random projectors
            self.criterion.requires_grad_(False)
        opt_cfg = train["optimizer"]
        if opt_cfg.get("name", "adamw").lower() != "adamw":
            raise ConfigError(f"train.optimizer.name {opt_cfg.get('name')!r} is not supported (adamw)")
        self.optimizer = torch.optim.AdamW(
            param_groups([self.model, self.criterion], opt_cfg.get("weight_decay", 0.05)),
            lr=float(opt_cfg["lr"]), betas=tuple(opt_cfg.get("betas", (0.9, 0.999))))
        self.iters_per_epoch = math.ceil(len(self.dataset) / self.batch_size)
        self.epochs = int(train["epochs"]) + int(train.get("warmup_epochs", 0))
        warmup_epochs = int(train.get("warmup_epochs", 0))
        sched = train.get("scheduler") or {}
        if sched.get("name", "multistep").lower() != "multistep":
            raise ConfigError(f"train.scheduler.name {sched.get('name')!r} is not supported (multistep)")
        milestones = [(warmup_epochs + int(s)) * self.iters_per_epoch
                      for s in sched.get("steps", ()) if int(s) >= 0]
        self.scheduler = WarmupMultiStepLR(self.optimizer, warmup_epochs * self.iters_per_epoch,
                                           milestones, sched.get("gamma", 0.1))
        self.ema = ModelEma(self.model, train.get("ema_beta", 0.999))
        self.clip_grad = train.get("clip_grad_norm", 1.0)
        self.vid_len = self.opt["train"]["data"]["max_vid_len"]
        self.max_text_len = self.opt["train"]["data"]["max_text_len"]
        self.vid_stride = self.opt["model"]["vid_stride"]
        self.log_interval = int(self.opt.get("log", {}).get("log_interval", 100))
        self.epoch, self.itr = 0, 0
        self.history: list[dict] = []
        if resume and (self.exp_dir / "states" / "last.pth").is_file():
            self._resume()

    # -- checkpoints ----------------------------------------------------------------------
    def save(self, ckpt: str = "last") -> Path:
        state = {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch, "itr": self.itr, "loss_norm": self.criterion.normalizer.state_dict(),
            "loss_modules": {k: v.detach().cpu() for k, v in self.criterion.state_dict().items()},
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                    "python": random.getstate()},
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return save_experiment(self.exp_dir, self.model, self.opt_raw, ckpt, self.ema.state_dict(), state)

    def _resume(self) -> None:
        weights = self.exp_dir / "models" / "last.pth"
        states = self.exp_dir / "states" / "last.pth"
        blob = _load_pth(weights)
        for key in ("model", "model_ema"):
            if key not in blob:
                raise CheckpointError(f"{weights}: no '{key}' entry to resume from")
            check_state_dict(self.model, blob[key], f"{weights}['{key}']")
        self.model.load_state_dict(blob["model"])
        self.ema.load_state_dict(blob["model_ema"])
        try:  # weights_only: a planted pickle is refused, not run; numpy arrays hold the RNG state
            with torch.serialization.safe_globals(_STATE_GLOBALS):
                state = torch.load(states, map_location="cpu", weights_only=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{states}: not a readable training state ({first}); remove the folder's "
                                  "states/ to start over, or pass --no-resume") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{states}: expected a dict of training state, got {type(state).__name__}")
        for key in ("optimizer", "scheduler", "epoch", "itr"):
            if key not in state:
                raise CheckpointError(f"{states}: no '{key}' entry to resume from")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.itr = int(state["epoch"]), int(state["itr"])
        if "loss_norm" in state:
            self.criterion.normalizer.load_state_dict(state["loss_norm"])
        if "loss_modules" in state:
            self.criterion.load_state_dict(state["loss_modules"])
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "numpy" in rng:
            np.random.set_state(rng["numpy"])
        if "python" in rng:
            random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.log.info(f"resumed {self.exp_dir} after epoch {self.epoch} (iteration {self.itr})")

    # -- one step -------------------------------------------------------------------------
    def _to_device(self, batch):
        return batch._replace(**{k: getattr(batch, k).to(self.device, non_blocking=True)
                                 for k in batch._fields if getattr(batch, k) is not None})

    def step(self, batch) -> dict:
        """One optimisation step on a collated :class:`~hieramamba.data.Batch`."""
        self.model.train()
        self.criterion.train()
        b = self._to_device(batch)
        norm = self.criterion.normalizer.value
        out = self.model(b.vid, b.vid_masks, b.text, b.text_masks, b.text_size)
        losses = self.criterion(out, b.targets, b.text_size)
        if not torch.isfinite(losses["total"]):
            raise InputError(f"non-finite training loss at iteration {self.itr}: "
                             + ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items()))
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = None
        if self.clip_grad and self.clip_grad > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.clip_grad))
        lr = self.optimizer.param_groups[0]["lr"]          # the rate this step used
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        self.criterion.update_normalizer(losses["num_pos"])
        self.itr += 1
        rec = {k: float(v.detach()) for k, v in losses.items()}
        # ``norm``: the normaliser this step divided by (total·norm is the un-normalised loss)
        rec.update(itr=self.itr, lr=lr, grad_norm=grad_norm, norm=norm)
        return rec

    def loader(self, epoch: int):
        self.dataset.set_epoch(epoch)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.batch_size, shuffle=True, generator=g,
            num_workers=self.num_workers, collate_fn=trivial_collate, drop_last=False,
            persistent_workers=False)

    def collate(self, samples):
        return collate_train(samples, self.vid_len, self.max_text_len, self.vid_stride)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        """Train until ``epochs + warmup_epochs`` epochs (or ``max_iters``) are done; a checkpoint
        at the end of every epoch and when stopping early. Returns the per-step records."""
        from tqdm.auto import tqdm

        n_params = sum(p.numel() for p in self.model.parameters())
        self.log.info(f"training {self.exp_dir}: {len(self.dataset)} samples/epoch, "
                      f"{self.iters_per_epoch} iters/epoch, {self.epochs} epochs, {n_params:,} params, "
                      f"device {self.device}")
        t0 = time.perf_counter()
        while self.epoch < self.epochs:
            if self.max_iters is not None and self.itr >= self.max_iters:
                break
            epoch = self.epoch
            bar = tqdm(total=self.iters_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}",
                       disable=not self.progress, leave=False, dynamic_ncols=True)
            run = {}
            stopped = False
            loader = self.loader(epoch)
            for samples in loader:
                rec = self.step(self.collate(samples))
                rec["epoch"] = epoch
                self.history.append(rec)
                for k in ("total", "cls", "reg", "acc", "spc"):
                    run[k] = run.get(k, 0.0) + rec[k]
                run["n"] = run.get("n", 0) + 1
                bar.update(1)
                bar.set_postfix(loss=f"{rec['total']:.3f}", lr=f"{rec['lr']:.2e}")
                if self.itr % self.log_interval == 0:
                    self.log.info(self._fmt(rec))
                if self.max_iters is not None and self.itr >= self.max_iters:
                    stopped = run["n"] < len(loader)          # stopped inside the epoch
                    break
            bar.close()
            if not stopped:
                self.epoch += 1
            n = max(run.get("n", 0), 1)
            self.log.info(f"epoch {epoch + 1}/{self.epochs} done: " + ", ".join(
                f"{k} {run.get(k, 0.0) / n:.4f}" for k in ("total", "cls", "reg", "acc", "spc"))
                + f", {time.perf_counter() - t0:.1f} s")
            self.save()
            if stopped or (self.max_iters is not None and self.itr >= self.max_iters):
                break
        self.log.info(f"finished after {self.itr} iterations; checkpoint {self.exp_dir / 'models' / 'last.pth'}")
        return self.history

    @staticmethod
    def _fmt(rec: dict) -> str:
        return (f"[epoch {rec['epoch'] + 1} itr {rec['itr']}] loss {rec['total']:.4f} "
                f"(cls {rec['cls']:.4f} reg {rec['reg']:.4f} acc {rec['acc']:.4f} spc {rec['spc']:.4f}) "
                f"#pos {int(rec['num_pos'])} lr {rec['lr']:.3e}")


def train(config, exp_dir, **kwargs) -> Trainer:
    """Train from a packaged config name, a YAML path or a raw dict; returns the finished Trainer."""
    if isinstance(config, (str, os.PathLike)):
        from .config import PACKAGED_CONFIGS, packaged_config_path
        path = packaged_config_path(config) if config in PACKAGED_CONFIGS else Path(config)
        if path.is_dir():
            path = path / "opt.yaml"
        config = read_yaml(path)
    trainer = Trainer(config, exp_dir, **kwargs)
    trainer.fit()
    return trainer
