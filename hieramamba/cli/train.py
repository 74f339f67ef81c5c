"""``hieramamba train``, ``hieramamba eval`` and ``hieramamba make-synthetic``."""

from __future__ import annotations

import json
import sys
import time

from .common import (add_dataset_files, add_device, add_experiment, add_mask_semantics, add_scan_kernel,
                     add_text_overflow, add_threads, apply_threads, positive_int)


def _data_paths(args) -> dict:
    out = {}
    for key in ("anno_file", "vid_feat_dir", "text_feat_dir", "glove_path"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def cmd_train(args) -> int:
    from hieramamba.artifacts import check_output_folder
    from hieramamba.config import PACKAGED_CONFIGS, packaged_config_path, read_yaml
    from hieramamba.train import Trainer

    apply_threads(args)
    check_output_folder(args.output, "--output")
    path = packaged_config_path(args.config) if args.config in PACKAGED_CONFIGS else args.config
    raw = read_yaml(path)
    paths = _data_paths(args)
    if args.data:       # a synthetic / official-layout folder: annotations.json, video/, text/
        import os

        paths.setdefault("anno_file", os.path.join(args.data, "annotations.json"))
        paths.setdefault("vid_feat_dir", os.path.join(args.data, "video"))
        paths.setdefault("text_feat_dir", os.path.join(args.data, "text"))
    if args.seed is not None:
        raw["seed"] = args.seed
    for key in ("epochs", "warmup_epochs", "batch_size"):
        if getattr(args, key) is not None:
            raw.setdefault("train", {})[key] = getattr(args, key)
    if args.lr is not None:
        raw.setdefault("train", {}).setdefault("optimizer", {})["lr"] = args.lr
    data_folder = _data_folder(args, paths)
    if not args.no_resume:  # continuing an experiment on another world's data is worth a word
        warn_if_another_world(data_folder, args.output)
    t0 = time.perf_counter()
    trainer = Trainer(raw, args.output, root=args.root, data_paths=paths, device=args.device,
                      num_workers=args.num_workers, resume=not args.no_resume,
                      max_iters=args.max_iters, progress=not args.no_progress)
    record_world(data_folder, args.output)
    trainer.fit()
    print(f"trained {trainer.itr} iterations in {time.perf_counter() - t0:.1f} s → {args.output}",
          file=sys.stderr)
    return 0


def _bundle_runtime(args):
    """The chunked runtime on ``--bundle`` (``--backend``, and on ONNX Runtime ``--threads`` and
    ``--scan-kernel``), or None without a bundle."""
    if not args.bundle:
        return None
    from hieramamba.runtime import GroundingRuntime

    opts = {"threads": args.threads, "scan_kernel": args.scan_kernel} if args.backend == "onnxruntime" else {}
    return GroundingRuntime.load(args.bundle, backend=args.backend, text_overflow=args.text_overflow, **opts)


def cmd_eval(args) -> int:
    from hieramamba.artifacts import check_output_folder
    from hieramamba.evaluate import evaluate_experiment, format_metrics

    apply_threads(args)
    check_output_folder(args.out_dir or args.experiment, "--out-dir" if args.out_dir else "--experiment (results go there)")
    paths = _data_paths(args)
    if args.data:
        import os

        paths.setdefault("anno_file", os.path.join(args.data, "annotations.json"))
        paths.setdefault("vid_feat_dir", os.path.join(args.data, "video"))
        paths.setdefault("text_feat_dir", os.path.join(args.data, "text"))
    warn_if_another_world(_data_folder(args, paths), args.experiment)
    result = evaluate_experiment(
        args.experiment, args.ckpt, out_dir=args.out_dir, root=args.root, data_paths=paths,
        split=args.split, device=args.device, use_ema=not args.no_ema,
        mask_semantics=args.mask_semantics, text_overflow=args.text_overflow,
        progress=not args.no_progress, max_videos=args.max_videos, pipeline=_bundle_runtime(args),
        pipeline_source=str(args.bundle), outside_moments=args.outside_moments)
    print(format_metrics(result["summary"]), end="")
    return 0


# make-synthetic flag -> make_synthetic argument; unset flags take the embedded default's values
SYNTHETIC_FLAGS = {"videos": "n_videos", "min_len": "min_len", "max_len": "max_len", "seed": "seed",
                   "scenes": "n_scenes", "min_scene_len": "min_scene_len", "max_scene_len": "max_scene_len",
                   "max_moment_len": "max_moment_len", "noise": "noise", "drift": "drift",
                   "occurrence_jitter": "occurrence_jitter", "text_noise": "text_noise"}


def cmd_make_synthetic(args) -> int:
    from hieramamba.artifacts import check_output_folder
    from hieramamba.checkpoint import default_synthetic_settings
    from hieramamba.data import make_synthetic

    check_output_folder(args.out, "--out")
    settings = dict(default_synthetic_settings()["make_synthetic"])  # the default's world and recipe
    for flag, key in SYNTHETIC_FLAGS.items():
        if getattr(args, flag) is not None:
            settings[key] = getattr(args, flag)
    lo, hi = settings.pop("queries_per_video", (2, 8))
    settings["queries_per_video"] = (args.min_queries or lo, args.max_queries or hi)
    syn = make_synthetic(args.out, args.config, write_glove=args.glove, overwrite=args.overwrite, **settings)
    counts = {k: len(v) for k, v in syn.splits.items()}
    print(json.dumps({"root": syn.root, "anno_file": syn.anno_file, "splits": counts}, indent=1))
    return 0


def _data_folder(args, paths):
    """The dataset folder (``--data``, or the annotation file's folder), where a synthetic set keeps
    its ``meta.json``."""
    import os

    if args.data:
        return args.data
    anno = paths.get("anno_file")
    return os.path.dirname(anno) if anno else None


def warn_if_another_world(data_folder, exp_folder) -> None:
    """One warning line when ``data_folder`` is a synthetic set made with another world than the
    one ``exp_folder``'s model was trained on (its ``synthetic.json``): its scores mean little."""
    from pathlib import Path

    from hieramamba.data.synthetic import read_world, world_differences, world_of

    if data_folder is None or not (Path(exp_folder) / "synthetic.json").is_file():
        return
    data_world = read_world(data_folder)
    if data_world is None:
        return
    try:
        trained = world_of(json.loads((Path(exp_folder) / "synthetic.json").read_text()))
    except (OSError, ValueError):
        return
    diff = world_differences(data_world, trained)
    if diff:
        print(f"warning: {data_folder} is another synthetic world than {exp_folder} was trained on "
              f"({'; '.join(diff[:4])}{'; …' if len(diff) > 4 else ''}): scores there mean little; make the "
              "set with the experiment's settings (`hieramamba make-synthetic` defaults are the embedded "
              "default's)", file=sys.stderr)


def record_world(data_folder, exp_folder) -> None:
    """Keep the synthetic world a model is trained on in its experiment folder (``synthetic.json``,
    the embedded default's format) for ``warn_if_another_world`` to compare with later."""
    from pathlib import Path

    from hieramamba.artifacts import write_atomic

    if data_folder is None or not (Path(data_folder) / "meta.json").is_file():
        return
    try:
        meta = json.loads((Path(data_folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return
    if meta.get("generator") != "hieramamba.data.synthetic":
        return
    record = {"make_synthetic": {k: meta.get(k) for k in ("seed", "n_scenes", "min_scene_len", "max_scene_len",
                                                          "max_moment_len", "noise", "drift", "occurrence_jitter",
                                                          "text_noise")},
              "geometry": meta.get("geometry"), "data": str(Path(data_folder).resolve())}
    Path(exp_folder).mkdir(parents=True, exist_ok=True)
    write_atomic(Path(exp_folder) / "synthetic.json", (json.dumps(record, indent=1) + "\n").encode())


def _data_args(p) -> None:
    add_dataset_files(p)
    p.add_argument("--root", help="folder the config's relative data paths resolve against (default: cwd)")
    p.add_argument("--glove-path", dest="glove_path", help="glove.6B.300d.txt (TACoS)")
    add_device(p)
    add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a config on an official-layout dataset (experiment folder out)")
    p.add_argument("--config", required=True, help="packaged name (ego4d, tacos, mad, madv2, tiny) or YAML")
    p.add_argument("--output", required=True, help="experiment folder (opt.yaml, models/, states/, log.txt)")
    _data_args(p)
    p.add_argument("--num-workers", type=int, help="DataLoader workers (default: train.num_workers)")
    p.add_argument("--no-resume", action="store_true", help="start over even if states/last.pth exists")
    p.add_argument("--max-iters", type=positive_int, help="stop after this many iterations")
    p.add_argument("--epochs", type=positive_int, help="override train.epochs")
    p.add_argument("--warmup-epochs", dest="warmup_epochs", type=int, help="override train.warmup_epochs")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, help="override train.batch_size")
    p.add_argument("--lr", type=float, help="override train.optimizer.lr")
    p.add_argument("--seed", type=int, help="override the config seed")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="R@k × IoU of an experiment folder; writes eval_<ckpt>.txt and predictions_<ckpt>.json")
    add_experiment(p, required=True)
    _data_args(p)
    p.add_argument("--split", help="override eval.data.split")
    p.add_argument("--out-dir", dest="out_dir", help="where to write the results (default: the experiment folder)")
    p.add_argument("--no-ema", action="store_true", help="evaluate 'model' instead of 'model_ema'")
    add_mask_semantics(p)
    add_text_overflow(p)
    p.add_argument("--max-videos", type=positive_int, help="evaluate only the first N videos")
    p.add_argument("--outside-moments", default="error", choices=["error", "drop"],
                   help="an annotated moment outside [0, duration]: refuse the dataset (error) or skip it (drop)")
    p.add_argument("--bundle", help="evaluate this export bundle (chunked runtime) instead of the weights; "
                   "writes eval_bundle.txt / predictions_bundle.json")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="--bundle: runtime backend")
    add_scan_kernel(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("make-synthetic", help="write the synthetic long-video grounding dataset (official layout)")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default="tiny", help="geometry: 'tiny' or a config name / opt.yaml")
    # Every setting defaults to the embedded default's (hieramamba/assets/tiny/synthetic.json): its
    # world (seed, scenes, noise...) and its recipe (videos, lengths), so the default model can be
    # evaluated on a freshly made set.
    p.add_argument("--videos", type=positive_int, help="number of videos (default: the embedded default's)")
    p.add_argument("--min-len", type=positive_int, help="shortest video in feature rows")
    p.add_argument("--max-len", type=positive_int, help="longest video in feature rows")
    p.add_argument("--seed", type=int, help="world seed (scene prototypes, text map; and each video's stream)")
    p.add_argument("--scenes", type=positive_int)
    p.add_argument("--min-queries", type=positive_int)
    p.add_argument("--max-queries", type=positive_int)
    p.add_argument("--min-scene-len", type=positive_int, help="shortest scene occurrence in rows")
    p.add_argument("--max-scene-len", type=positive_int)
    p.add_argument("--max-moment-len", type=positive_int)
    p.add_argument("--noise", type=float)
    p.add_argument("--drift", type=float)
    p.add_argument("--occurrence-jitter", type=float)
    p.add_argument("--text-noise", type=float)
    p.add_argument("--glove", action="store_true", help="also write glove.txt for the sentences")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_synthetic)
