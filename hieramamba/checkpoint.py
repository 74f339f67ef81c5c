"""Experiment folders in the official format (REFERENCE §12.3, DESIGN §5).

``<exp>/opt.yaml`` (the config actually used), ``<exp>/models/<ckpt>.pth`` =
``{'model': state_dict, 'model_ema': state_dict}``, ``<exp>/states/<ckpt>.pth`` = optimizer /
scheduler / epoch / itr. Evaluation uses the EMA weights, loaded strictly, as the official
evaluator does. Our own checkpoints use the same format."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import yaml

from .config import parse_config, read_yaml
from .errors import CheckpointError, ConfigError
from .model import HieraMamba, build_model


def _load_pth(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated / foreign / pickled-code files
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt, truncated, or holding "
                              f"code, which is never run): {type(exc).__name__}: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict with 'model'/'model_ema', got {type(obj).__name__}")
    return obj


def check_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Strict key and shape comparison with a message that says what differs."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    not_tensors = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {', '.join(not_tensors[:5])}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        def head(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {head(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {head(mismatched)}")
        raise CheckpointError(f"{source} does not match the configuration: " + "; ".join(parts))
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite values in {', '.join(bad[:5])}")


def load_experiment_config(folder) -> dict:
    """The merged eval config (``opt``) of an experiment folder's ``opt.yaml``, without weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"experiment folder not found: {folder}")
    opt_path = folder / "opt.yaml"
    if not opt_path.is_file():
        raise CheckpointError(f"{folder} has no opt.yaml (an experiment folder holds opt.yaml and models/)")
    return parse_config(read_yaml(opt_path), is_training=False, source=str(opt_path))


def load_experiment(folder, ckpt: str = "last", use_ema: bool = True, mask_semantics: str = "official",
                    dtype: torch.dtype = torch.float32, device="cpu"):
    """Load an official (or our own) experiment folder. Returns ``(model, opt)`` with the model
    in eval mode; ``opt`` is the merged eval config."""
    folder = Path(folder)
    opt = load_experiment_config(folder)
    weights_path = folder / "models" / f"{ckpt}.pth"
    blob = _load_pth(weights_path)
    key = "model_ema" if use_ema else "model"
    if key not in blob:
        raise CheckpointError(f"{weights_path}: no '{key}' entry (has {sorted(blob)})")
    model = build_model(opt, mask_semantics=mask_semantics)
    check_state_dict(model, blob[key], f"{weights_path}['{key}']")
    model.load_state_dict(blob[key], strict=True)
    return model.to(device=device, dtype=dtype).eval(), opt


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_experiment(folder, model: HieraMamba, opt_raw: dict, ckpt: str = "last", ema_state: dict | None = None,
                    train_state: dict | None = None) -> Path:
    """Write ``opt.yaml``, ``models/<ckpt>.pth`` (``model`` and ``model_ema``; the EMA defaults to
    the model weights) and optionally ``states/<ckpt>.pth``. ``opt_raw`` is the config as
    written by the user (not the merged one) so the folder reloads like an official one."""
    folder = Path(folder)
    if not isinstance(opt_raw, dict) or "model" not in opt_raw:
        raise ConfigError("save_experiment needs the raw config dict with a 'model' section")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ema = {k: v.detach().cpu() for k, v in (ema_state or state).items()}
    _atomic_save({"model": state, "model_ema": ema}, folder / "models" / f"{ckpt}.pth")
    if train_state is not None:
        _atomic_save(train_state, folder / "states" / f"{ckpt}.pth")
    tmp = folder / "opt.yaml.tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(opt_raw, f, sort_keys=False)
    os.replace(tmp, folder / "opt.yaml")
    return folder


# --------------------------------------------------------------------------------------------
# the embedded default (package data)

DEFAULT_NAME = "tiny"


def default_experiment_dir(name: str = DEFAULT_NAME) -> Path:
    """Folder of an embedded experiment (``hieramamba/assets/<name>``: ``opt.yaml``,
    ``models/last.pth``, ``synthetic.json``)."""
    from importlib import resources

    folder = Path(str(resources.files("hieramamba") / "assets" / name))
    if not (folder / "opt.yaml").is_file():
        raise CheckpointError(f"embedded default {name!r} not found at {folder} (broken installation?); "
                              "scripts/train_tiny_default.sh recreates it")
    return folder


def load_default(name: str = DEFAULT_NAME, **kwargs):
    """The embedded trained default: ``(model, opt)`` in eval mode with its EMA weights — the tiny
    config trained by ``hieramamba train`` on the synthetic set (see
    ``scripts/train_tiny_default.sh``). ``kwargs`` go to :func:`load_experiment`."""
    return load_experiment(default_experiment_dir(name), **kwargs)


def default_synthetic_settings(name: str = DEFAULT_NAME) -> dict:
    """How the default's training data was generated (``synthetic.json``: the
    :func:`~hieramamba.data.make_synthetic` arguments and geometry), so callers can draw new videos
    from the same synthetic world."""
    import json

    path = default_experiment_dir(name) / "synthetic.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the embedded default has no synthetic settings")
    return json.loads(path.read_text())
