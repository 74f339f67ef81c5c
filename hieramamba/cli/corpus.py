"""``hieramamba ground-corpus``: ground a whole dataset split or manifest with a bundle on local
worker processes or Ray actors, resumable (docs/corpus.md). Exit codes: 0 every video done,
2 a user error (one line), 3 a partial run (some videos failed; see OUT/status.jsonl)."""

from __future__ import annotations

import os
import sys

from hieramamba.errors import InputError

from .common import add_dataset_files, add_scan_kernel, add_text_overflow, non_negative_int, positive_int
from .train import _data_paths

PARTIAL_EXIT = 3


def experiment_settings(folder, bundle_dir, text_overflow: str):
    """``(DataSettings, ranks, iou_threshs)`` from the experiment the bundle was exported from:
    how its dataset reads features (as ``hieramamba eval --bundle`` does) and its eval ranks.
    Refused when the bundle was exported from another config."""
    from hieramamba.artifacts import BundleManifest
    from hieramamba.checkpoint import load_experiment_config
    from hieramamba.corpus import DataSettings
    from hieramamba.evaluate import check_plan_matches_config

    opt = load_experiment_config(folder)
    data, ev = opt["train"]["data"], opt["eval"]
    if data.get("tokenizer") is not None or data.get("normalize_vid") or data.get("normalize_text"):
        raise InputError(f"--experiment {folder}: its dataset tokenizes sentences or normalizes features; "
                         "ground-corpus reads per-query feature files as they are (write them, or use `hieramamba eval`)")
    rate = int(data.get("downsample_rate", 1))
    check_plan_matches_config(BundleManifest.read(bundle_dir).plan, opt, f"--bundle {bundle_dir}",
                              f"pass the experiment the bundle came from (--experiment {folder} is another)")
    settings = DataSettings(downsample_rate=rate, clip_size=data["clip_size"],
                            clip_stride=data["clip_stride"] * rate, text_overflow=text_overflow)
    return settings, tuple(ev.get("ranks", (1, 5))), tuple(ev.get("iou_threshs", (0.3, 0.5)))


def corpus_tasks(args) -> list:
    """The tasks of ``--manifest``, or of ``--split`` of the dataset ``--data`` (or
    ``--anno-file``/``--vid-feat-dir``/``--text-feat-dir``) names."""
    from hieramamba.corpus import manifest_from_dataset, read_manifest

    paths = _data_paths(args)
    if args.data:  # the official layout as `hieramamba eval --data` reads it
        paths.setdefault("anno_file", os.path.join(args.data, "annotations.json"))
        paths.setdefault("vid_feat_dir", os.path.join(args.data, "video"))
        paths.setdefault("text_feat_dir", os.path.join(args.data, "text"))
    if bool(args.manifest) == bool(paths):
        raise InputError("ground-corpus: pass exactly one of --manifest (JSONL/parquet) or a dataset "
                         "(--data, or --anno-file with --vid-feat-dir and --text-feat-dir)")
    if args.manifest:
        return read_manifest(args.manifest)
    missing = [f"--{k.replace('_', '-')}" for k in ("anno_file", "vid_feat_dir", "text_feat_dir") if k not in paths]
    if missing:
        raise InputError(f"ground-corpus: the dataset also needs {', '.join(missing)}")
    return manifest_from_dataset(paths["anno_file"], paths["vid_feat_dir"], paths["text_feat_dir"], args.split,
                                 args.outside_moments)


def cmd_ground_corpus(args) -> int:
    from hieramamba.artifacts import BundleManifest, check_output_folder
    from hieramamba.corpus import DataSettings, RunOptions, WorkerConfig, run_corpus

    check_output_folder(args.out, "--out")
    BundleManifest.read(args.bundle)  # a bad bundle is one clear error before the dataset is read
    if args.experiment:
        settings, ranks, threshs = experiment_settings(args.experiment, args.bundle, args.text_overflow)
    else:
        settings, ranks, threshs = DataSettings(text_overflow=args.text_overflow), (1, 5), (0.3, 0.5)
    options = RunOptions(engine=args.engine, workers=args.workers, threads=args.threads, address=args.address,
                         max_retries=args.max_retries, progress=not args.no_progress and sys.stderr.isatty(),
                         ranks=ranks, iou_threshs=threshs)  # checked here, before the dataset is read
    tasks = corpus_tasks(args)
    config = WorkerConfig(bundle=args.bundle, backend=args.backend, scan_kernel=args.scan_kernel,
                          engines=args.engines, plugin=args.plugin, settings=settings)
    summary = run_corpus(tasks, args.out, config, options)
    if summary.metrics is not None:
        from hieramamba.evaluate import format_metrics

        print(format_metrics(summary.metrics), end="")
    print(summary.line(), file=sys.stderr)
    return PARTIAL_EXIT if summary.partial else 0


def register(sub) -> None:
    p = sub.add_parser("ground-corpus", help="ground a dataset split or manifest with a bundle on many workers "
                       "(local processes or Ray), resumable; writes OUT/results/, status.jsonl, predictions.json")
    p.add_argument("--bundle", required=True, help="export bundle (hieramamba export-bundle)")
    p.add_argument("--manifest", help="JSONL or parquet manifest, one row per video (docs/corpus.md)")
    add_dataset_files(p)
    p.add_argument("--split", default="test", help="dataset split (default test)")
    p.add_argument("--outside-moments", default="error", choices=["error", "drop"],
                   help="an annotated moment outside [0, duration]: refuse the dataset (error) or skip it (drop)")
    p.add_argument("--experiment", help="the experiment folder the bundle was exported from: its data settings "
                   "(downsample_rate, clip geometry) and eval ranks/IoU thresholds, as `hieramamba eval --bundle` "
                   "uses them (default: features as they are, the bundle's clip geometry, R@1,5 × IoU 0.3,0.5)")
    p.add_argument("--out", required=True, help="output folder; rerunning into it resumes")
    p.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local worker processes (default) or Ray actors")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="workers, each opening the bundle once (GPU: one per GPU)")
    p.add_argument("--threads", type=positive_int, help="CPU threads per worker (Ray: CPUs per actor; default: "
                   "this machine's CPUs / workers, 1 with --address)")
    p.add_argument("--address", help="--engine ray: join this Ray cluster (e.g. HEAD:6379 or auto) instead of "
                   "starting a private local instance")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"])
    p.add_argument("--engines", help="--backend tensorrt: engines folder (default <bundle>/trt)")
    p.add_argument("--plugin", help="--backend tensorrt: HydraScan plugin library")
    add_scan_kernel(p)
    add_text_overflow(p)
    p.add_argument("--max-retries", type=non_negative_int, default=2,
                   help="times a video is retried when its worker dies (default 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (also off when not a terminal)")
    p.set_defaults(func=cmd_ground_corpus)
