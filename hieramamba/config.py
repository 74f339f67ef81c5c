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
    for key in ("text_net", "vid_net", "fusion", "cls_head", "reg_head"):
        if key in ("text_net", "vid_net") and key not in opt["model"]:
            raise ConfigError(f"{source}: missing 'model.{key}'")
        if not isinstance(opt["model"].get(key, {}), dict):
            raise ConfigError(f"{source}: model.{key} must be a mapping, got {opt['model'][key]!r}")
    for section, key in (("train", "data"), ("eval", "nms"), ("eval", "data")):
        if not isinstance(opt.get(section, {}).get(key, {}), dict):
            raise ConfigError(f"{source}: {section}.{key} must be a mapping")
    if not isinstance(opt.get("model_net", {}), dict):
        raise ConfigError(f"{source}: model_net must be a mapping")
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


# The types of the keys the model, decoding and clip geometry read ("int", "num", "bool", "ints",
# None allowed where the value may be null). Checked before anything is built, so a string or a
# float where an int belongs is one line naming the key, not a failure deep inside a module.
INT, NUM, BOOL, INTS, STR = "an int", "a number", "true or false", "a list of ints", "a string"
TYPES = {
    "model.early_fusion": BOOL,
    "model.text_net.in_dim": INT, "model.text_net.embd_dim": (INT, None), "model.text_net.n_heads": INT,
    "model.text_net.max_seq_len": INT, "model.text_net.use_abs_pe": BOOL, "model.text_net.use_bkgd_token": BOOL,
    "model.vid_net.in_dim": INT, "model.vid_net.embd_dim": INT, "model.vid_net.max_seq_len": INT,
    "model.vid_net.arch": INTS, "model.vid_net.stride": INT, "model.vid_net.use_abs_pe": BOOL,
    "model.vid_net.local_window_size": INT, "model.vid_net.local_encode_num_layers": INT,
    "model.vid_net.mamba_headdim": INT, "model.vid_net.mamba_dstate": INT, "model.vid_net.mamba_expand": INT,
    "model.vid_net.mamba_dconv": INT, "model.vid_net.n_heads": INT,
    "model.fusion.n_layers": INT, "model.fusion.n_heads": INT, "model.fusion.name": STR,
    "model.cls_head.n_layers": INT, "model.cls_head.prior_prob": NUM, "model.reg_head.n_layers": INT,
    "pt_gen.regression_range": NUM, "pt_gen.sigma": NUM,
    "train.data.clip_size": NUM, "train.data.clip_stride": NUM, "train.data.downsample_rate": INT,
    "train.batch_size": INT, "train.epochs": INT, "train.warmup_epochs": INT,
    "eval.max_text_len": INT, "eval.pre_nms_thresh": NUM, "eval.pre_nms_topk": INT, "eval.seg_len_thresh": NUM,
    "eval.batchify_text_queries": BOOL, "eval.nms.iou_thresh": NUM, "eval.nms.min_score": NUM,
    "eval.nms.max_num_segs": INT, "eval.nms.sigma": NUM, "eval.nms.voting_thresh": NUM, "eval.nms.mode": STR,
}
POSITIVE = {"model.text_net.in_dim", "model.vid_net.in_dim", "model.vid_net.embd_dim", "model.vid_net.max_seq_len",
            "model.text_net.max_seq_len", "model.vid_net.mamba_headdim", "model.vid_net.mamba_dstate",
            "model.vid_net.mamba_expand", "model.text_net.n_heads", "model.fusion.n_heads",
            "eval.max_text_len", "eval.pre_nms_topk", "eval.nms.max_num_segs", "train.data.clip_stride",
            "train.data.downsample_rate"}


def _type_ok(value, kind) -> bool:
    if isinstance(kind, tuple):
        return any(value is None if k is None else _type_ok(value, k) for k in kind)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    return isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def _check_types(opt: dict, source: str) -> None:
    for dotted, kind in TYPES.items():
        node, parts = opt, dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue  # absent: a default or the module's own default applies
        value = node[parts[-1]]
        if not _type_ok(value, kind):
            want = kind if not isinstance(kind, tuple) else " or ".join("null" if k is None else k for k in kind)
            raise ConfigError(f"{source}: {dotted} must be {want}, got {value!r}")
        if dotted in POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"{source}: {dotted} must be positive, got {value!r}")
    arch = opt["model"]["vid_net"].get("arch")
    if arch is not None and (len(arch) != 3 or min(arch) < 0 or arch[2] < 1):
        raise ConfigError(f"{source}: model.vid_net.arch must be [stem convs, 0, levels ≥ 1], got {arch!r}")


def parse_config(raw: dict, is_training: bool = False, source: str = "<dict>") -> dict:
    """Merge defaults into a raw config dict (a copy) and add derived keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    opt = copy.deepcopy(raw)
    for section in ("model", "train", "eval", "pt_gen"):
        if section in opt and not isinstance(opt[section], dict):
            raise ConfigError(f"{source}: {section} must be a mapping, got {type(opt[section]).__name__}")
    _fill_missing(DEFAULTS, opt)
    _check(opt, source)
    _check_types(opt, source)
    _derive(opt, is_training)
    return opt


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
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
