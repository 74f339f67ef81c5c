"""Benchmark (not a CI test): train the tiny config on the synthetic set on this CPU, then report
R@1 / R@5 at IoU 0.5 (and 0.3) on the held-out synthetic test split, wall time and peak RSS.

Target (issue 21): R@1 IoU0.5 ≥ 0.85 and R@5 IoU0.5 ≥ 0.97 within 15 minutes of training on this
2-core CPU (one torch thread).

    python3 benchmarks/bench_train_tiny.py                      # defaults = the embedded default's recipe
    python3 benchmarks/bench_train_tiny.py --threads 2 --out /tmp/bench_tiny --json result.json

The data and schedule are those of ``scripts/train_tiny_default.sh`` (same synthetic world, seed,
config), so the numbers describe the packaged default. Evaluation uses the EMA weights, the
official per-video protocol (``hieramamba.evaluate``) and the config's ranks / thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="work folder (data + experiment); default: a temporary folder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core box 2 OpenMP threads are "
                         "often much slower, see README)")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--max-iters", type=int, help="stop training early (quick check)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from hieramamba.checkpoint import default_synthetic_settings
    from hieramamba.config import PACKAGED_CONFIGS, packaged_config_path, parse_config, read_yaml
    from hieramamba.data import make_synthetic
    from hieramamba.evaluate import evaluate_model, r_at
    from hieramamba.profiling.memory import peak_rss_mb
    from hieramamba.train import Trainer

    work = args.out or tempfile.mkdtemp(prefix="bench_tiny_")
    t0 = time.perf_counter()
    # the embedded default's recorded world and recipe (scripts/train_tiny_default.sh wrote them)
    settings = dict(default_synthetic_settings()["make_synthetic"])
    settings["queries_per_video"] = tuple(settings["queries_per_video"])
    syn = make_synthetic(os.path.join(work, "data"), "tiny", overwrite=True, **settings)
    t_data = time.perf_counter() - t0
    cfg = packaged_config_path(args.config) if args.config in PACKAGED_CONFIGS else args.config
    raw = read_yaml(cfg)
    t1, cpu1 = time.perf_counter(), time.process_time()
    trainer = Trainer(raw, os.path.join(work, "experiment"), data_paths=syn.paths(), device="cpu",
                      resume=False, max_iters=args.max_iters, progress=sys.stderr.isatty(), quiet=True)
    trainer.fit()
    t_train, cpu_train = time.perf_counter() - t1, time.process_time() - cpu1
    model = trainer.model
    model.load_state_dict(trainer.ema.state_dict())
    t2 = time.perf_counter()
    eval_opt = parse_config(trainer.opt_raw, is_training=False)
    result = evaluate_model(model.eval(), eval_opt, data_paths=syn.paths(), split="test")
    t_eval = time.perf_counter() - t2
    summary = result["summary"]
    report = {
        "config": args.config, "threads": args.threads, "iterations": trainer.itr,
        "train_samples_per_epoch": len(trainer.dataset), "epochs": trainer.epoch,
        "test_videos": summary["total_videos"], "test_queries": summary["total_queries"],
        "R@1_IoU0.5": r_at(result, 1, 0.5), "R@5_IoU0.5": r_at(result, 5, 0.5),
        "R@1_IoU0.3": r_at(result, 1, 0.3), "R@5_IoU0.3": r_at(result, 5, 0.3),
        "seconds_data": round(t_data, 1), "seconds_train": round(t_train, 1),
        "cpu_seconds_train": round(cpu_train, 1), "load_average_1min": round(os.getloadavg()[0], 2),
        "seconds_eval": round(t_eval, 1), "seconds_total": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1), "final_loss": trainer.history[-1]["total"],
        "work": work,
    }
    width = max(len(k) for k in report)
    for k, v in report.items():
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    target = report["R@1_IoU0.5"] >= 0.85 and report["R@5_IoU0.5"] >= 0.97 and report["seconds_train"] <= 900
    print(f"target (R@1 IoU0.5 >= 0.85, R@5 IoU0.5 >= 0.97 in <= 900 s of training): "
          f"{'met' if target else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
