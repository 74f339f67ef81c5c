"""Configurations: the four released YAMLs (package data) and any experiment ``opt.yaml``.

Loading follows the official rule (REFERENCE §2): defaults fill only keys that are missing, then
derived keys are added. One visible consequence: every config without ``use_abs_pe`` gets absolute
position encoding (MAD v1 does; MAD-v2 sets it False).
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

OFFICIAL_CONFIGS = ("ego4d", "tacos", "mad", "madv2")
# Packaged configs: the four released ones plus a tiny one for the synthetic set and quickstart.
PACKAGED_CONFIGS = OFFICIAL_CONFIGS + ("tiny",)

# Values of the official defaults table; merged only where a key is absent.
DEFAULTS: dict[str, Any] = {
    "seed": 1234567891,
    "model": {
        "text_net": {"name": "transformer", "in_dim": 300, "embd_dim": 128, "max_seq_len": 24},
        "vid_net": {
            "name": "transformer", "in_dim": 500, "embd_dim": 128, "n_heads": 4,
            "max_seq_len": 256, "stride": 1, "arch": (2, 0, 7), "mha_win_size": 0,
            "attn_pdrop": 0.0, "proj_pdrop": 0.1, "path_pdrop": 0.1, "use_abs_pe": True,
        },
        "fusion": {
            "name": "xattn", "n_layers": 2, "n_heads": 4, "attn_pdrop": 0.0,
            "proj_pdrop": 0.1, "path_pdrop": 0.1, "xattn_mode": "adaln",
        },
        "cls_head": {"name": "cls", "n_layers": 2, "prior_prob": 0.0},
        "reg_head": {"name": "reg", "n_layers": 2},
    },
    "pt_gen": {"regression_range": 4, "sigma": 0.5},
    "train": {
        "data": {"split": "train", "downsample_rate": 1, "trunc_thresh": 0.5, "crop_ratio": (0.9, 1.0)},
        "batch_size": 16, "num_workers": 4, "epochs": 5, "warmup_epochs": 5, "ema_beta": 0.999,
        "center_sampling": "radius", "center_sampling_radius": 1.5, "loss_norm": 160,
        "loss_norm_momentum": 0.9, "loss_weight": 1.0, "reg_loss": "diou",
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "clip_grad_norm": 1.0,
        "scheduler": {"name": "multistep", "steps": (-1,), "gamma": 0.1},
    },
    "eval": {
        "data": {"split": "test"},
        "ranks": (1, 5), "iou_threshs": (0.3, 0.5),
        "pre_nms_thresh": 0.001, "pre_nms_topk": 2000, "seg_len_thresh": 0.1,
        "nms": {
            "mode": "soft_nms", "iou_thresh": 0.1, "min_score": 0.001, "max_num_segs": 5,
            "sigma": 0.9, "voting_thresh": 0.95,
        },
    },
    "log": {"log_interval": 100, "checkpoint_epochs": (6, 7, 8, 9, 10)},
}


def _fill_missing(defaults: dict, target: dict) -> None:
    for key, value in defaults.items():
        if key not in target:
            target[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(target[key], dict):
            _fill_missing(value, target[key])


def _derive(opt: dict, is_training: bool) -> None:
    """Add the derived keys the official loader adds (``_update_opt``)."""
    model = opt["model"]
    max_text_len = model["max_text_len"] = model["text_net"]["max_seq_len"]
    max_vid_len = model["max_vid_len"] = model["vid_net"]["max_seq_len"]
    vid_stride = model["vid_stride"] = model["vid_net"]["stride"]
    num_levels = model["num_fpn_levels"] = model["vid_net"]["arch"][-1]
    model["mha_win_size"] = model["vid_net"]["mha_win_size"]

    train = opt["train"]
    train["data"]["max_text_len"] = max_text_len
    train["data"]["max_vid_len"] = vid_stride * max_vid_len
    train["scheduler"]["epochs"] = train["epochs"]
    train["scheduler"]["warmup_epochs"] = train["warmup_epochs"]
    if not is_training:
        eval_data = copy.deepcopy(train["data"])
        eval_data.update({k: v for k, v in opt["eval"]["data"].items() if k in ("name", "split")})
        eval_data.setdefault("name", train["data"].get("name"))
        opt["eval"]["data"] = eval_data

    text_dim, vid_dim = model["text_net"]["embd_dim"], model["vid_net"]["embd_dim"]
    model["fusion"]["text_dim"], model["fusion"]["vid_dim"] = text_dim, vid_dim
    for head in ("cls_head", "reg_head"):
        model[head]["embd_dim"], model[head]["text_embd_dim"] = vid_dim, text_dim
    model["reg_head"]["num_fpn_levels"] = num_levels

    # The evaluator buffers more points so that longer videos can be decoded.
    n = 1
    if not is_training:
        n = math.ceil(opt["eval"].get("max_vid_len", max_vid_len * 4) / max_vid_len)
    opt["pt_gen"]["num_fpn_levels"] = num_levels
    opt["pt_gen"]["max_seq_len"] = max_vid_len * n


def _check(opt: dict, source: str) -> None:
    for section in ("model", "eval"):
        if section not in opt:
            raise ConfigError(f"{source}: missing section '{section}'")
    for key in ("text_net", "vid_net"):
        if key not in opt["model"]:
            raise ConfigError(f"{source}: missing 'model.{key}'")
    name = opt.get("model_net", {}).get("name", "hieramamba")
    if name != "hieramamba":
        raise ConfigError(f"{source}: model_net.name is {name!r}; only 'hieramamba' is supported")
    vid = opt["model"]["vid_net"]
    if vid.get("name") != "hieramamba_backbone":
        raise ConfigError(
            f"{source}: model.vid_net.name is {vid.get('name')!r}; expected 'hieramamba_backbone'")
    text_name = opt["model"]["text_net"].get("name")
    if text_name not in ("identity", "transformer"):
        raise ConfigError(f"{source}: model.text_net.name {text_name!r} is not 'identity' or 'transformer'")
    unsupported = {
        "pool_method": ("mean",),
        "block_type": ("AnchorMambaPoolingBlockGated",),
        "local_encode": (True,),
        "local_encoder_type": ("transformer",),
    }
    for key, allowed in unsupported.items():
        if key in vid and vid[key] not in allowed:
            raise ConfigError(
                f"{source}: model.vid_net.{key}={vid[key]!r} is not supported (supported: {allowed}); "
                "the released checkpoints use these values")
    if vid.get("bidirectional", True) is not True:
        raise ConfigError(f"{source}: model.vid_net.bidirectional=False (Mamba2) is not supported")
    if opt["model"].get("use_mst", False):
        raise ConfigError(f"{source}: model.use_mst is not supported")
    mode = opt["model"].get("fusion", {}).get("xattn_mode", "adaln")
    if mode not in ("adaln", "affine"):
        raise ConfigError(f"{source}: fusion.xattn_mode {mode!r} is not 'adaln' or 'affine'")
    if opt["model"]["vid_net"].get("stride", 1) not in (1, 2):
        raise ConfigError(f"{source}: model.vid_net.stride must be 1 or 2")
    if opt["model"].get("early_fusion", True) and opt["model"]["text_net"]["embd_dim"] is None:
        raise ConfigError(f"{source}: text_net.embd_dim is required")


def parse_config(raw: dict, is_training: bool = False, source: str = "<dict>") -> dict:
    """Merge defaults into a raw config dict (a copy) and add derived keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    opt = copy.deepcopy(raw)
    _fill_missing(DEFAULTS, opt)
    _check(opt, source)
    _derive(opt, is_training)
    return opt


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    return raw


def packaged_config_path(name: str) -> Path:
    if name not in PACKAGED_CONFIGS:
        raise ConfigError(f"unknown packaged config {name!r}; choose one of {PACKAGED_CONFIGS}")
    return Path(str(resources.files("hieramamba") / "configs" / f"{name}.yaml"))


def load_config(name_or_path: str | Path, is_training: bool = False) -> dict:
    """Load a packaged config by name (``ego4d``, ``tacos``, ``mad``, ``madv2``, ``tiny``), an
    ``opt.yaml`` path, or an experiment folder containing ``opt.yaml``."""
    if isinstance(name_or_path, str) and "/" not in name_or_path and not name_or_path.endswith(
            (".yaml", ".yml")) and name_or_path not in PACKAGED_CONFIGS and not Path(name_or_path).exists():
        raise ConfigError(f"unknown packaged config {name_or_path!r}; choose one of {PACKAGED_CONFIGS} "
                          "or pass a path to an opt.yaml / experiment folder")
    if isinstance(name_or_path, str) and name_or_path in PACKAGED_CONFIGS:
        path = packaged_config_path(name_or_path)
    else:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "opt.yaml"
    return parse_config(read_yaml(path), is_training=is_training, source=str(path))
