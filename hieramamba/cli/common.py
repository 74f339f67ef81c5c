"""What the verbs of the ``hieramamba`` command line share: option declarations (each declared
once, with one set of choices and one default), argument types that refuse bad values with the
flag's name, loading a model from the options, and reading feature files."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hieramamba.artifacts import MASK_SEMANTICS
from hieramamba.errors import InputError
from hieramamba.ort_options import DEFAULT_SCAN_KERNEL, SCAN_KERNEL_CHOICES


# -- argument types (argparse prints "argument --flag: ..." and exits 2) --------------------------
def _int_at_least(text: str, low: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer ≥ 0")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text}")
    return value


# -- shared options -----------------------------------------------------------------------------
def add_experiment(p, required: bool = False, help_text: str = "experiment folder (opt.yaml + models/<ckpt>.pth)"):
    p.add_argument("--experiment", required=required, help=help_text)
    p.add_argument("--ckpt", default="last", help="checkpoint name in models/ (default last)")


def add_model_source(p):
    """--experiment/--ckpt, or --config (random weights, --seed), and --mask-semantics."""
    add_experiment(p)
    p.add_argument("--config", help="packaged config name (ego4d, tacos, mad, madv2, tiny) or YAML; random weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights with --config")
    add_mask_semantics(p)


def add_mask_semantics(p):
    p.add_argument("--mask-semantics", default="official", choices=MASK_SEMANTICS,
                   help="official (reproduces the released numbers) or per_sample (REFERENCE §13.1)")


def add_scan_kernel(p):
    p.add_argument("--scan-kernel", default=DEFAULT_SCAN_KERNEL, choices=SCAN_KERNEL_CHOICES,
                   help="how ONNX Runtime runs HydraScan nodes: the C++ kernel of the plugin library (native), "
                        "their ONNX function body (graph), or native when the library is built (auto)")


def add_threads(p):
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads of torch / ONNX Runtime (default: theirs; on a busy machine 1 is often fastest)")


def add_dataset_files(p):
    """A dataset in the official layout: its folder, or its three parts."""
    p.add_argument("--data", help="dataset folder in the official layout (annotations.json, video/, text/)")
    p.add_argument("--anno-file", dest="anno_file")
    p.add_argument("--vid-feat-dir", dest="vid_feat_dir")
    p.add_argument("--text-feat-dir", dest="text_feat_dir")


def add_device(p):
    p.add_argument("--device", default="auto", help="torch device: cpu, cuda, cuda:N or auto (CUDA when available)")


def add_text_overflow(p):
    p.add_argument("--text-overflow", default="error", choices=["error", "truncate"],
                   help="a query longer than eval.max_text_len: refuse it (error) or keep its first tokens")


def apply_threads(args) -> None:
    """Set torch's intra-op threads from ``--threads`` (only when torch is loaded or needed)."""
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


def load_model_from_args(args):
    """``(model, opt, source)`` from ``--experiment`` (weights) or ``--config`` (random weights,
    ``--seed``); ``source`` says which, for manifests."""
    if bool(getattr(args, "experiment", None)) == bool(getattr(args, "config", None)):
        raise InputError("give exactly one of --experiment (official/our experiment folder) or "
                         "--config (packaged config name or YAML, random weights)")
    import torch

    if args.experiment:
        from hieramamba.checkpoint import load_experiment

        model, opt = load_experiment(args.experiment, args.ckpt, mask_semantics=args.mask_semantics)
        return model, opt, {"experiment": str(Path(args.experiment).resolve()), "ckpt": args.ckpt}
    from hieramamba.config import load_config
    from hieramamba.model import build_model

    torch.manual_seed(args.seed)
    opt = load_config(args.config)
    return (build_model(opt, mask_semantics=args.mask_semantics).eval(), opt,
            {"config": args.config, "random_weights_seed": args.seed})


def load_features(path: str, rows_on_demand: bool = False):
    """A ``(rows, dim)`` feature array from ``.npy`` (no pickles) or ``.pt`` (tensors only).
    ``rows_on_demand``: a 2-D ``.npy`` comes back as ``hieramamba.features.NpyRows``, read
    window by window by the chunked runtime (memory flat in video length)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InputError(f"feature file not found: {p}")
    if rows_on_demand and p.suffix != ".pt":
        from hieramamba.features import open_npy_rows

        rows = open_npy_rows(p)
        if rows is not None:
            return rows
    if p.suffix == ".pt":
        import torch

        try:  # weights_only: a pickle that would run code is refused, not run
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for foreign or corrupt files
            first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{p}: not a readable tensor file ({first})") from None
        if not isinstance(obj, torch.Tensor):
            raise InputError(f"{p}: holds a {type(obj).__name__}, expected one (rows, dim) tensor")
        return obj
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"{p}: not a readable .npy file ({exc})") from None
