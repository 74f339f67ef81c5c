#!/usr/bin/env bash
# Reproduce the embedded default (hieramamba/assets/tiny): the tiny config trained by
# `hieramamba train` on the synthetic set, then evaluated on its held-out test split.
#
#   bash scripts/train_tiny_default.sh            # work files in build/tiny_default, assets updated
#   WORK=/tmp/x INSTALL=0 bash scripts/train_tiny_default.sh   # leave hieramamba/assets alone
#
# Install records the synthetic settings in hieramamba/assets/tiny/synthetic.json, where
# `hieramamba make-synthetic` and benchmarks/bench_train_tiny.py read them. One torch thread: on a
# shared 2-core machine two OpenMP threads were 5-50x slower per step.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-build/tiny_default}
INSTALL=${INSTALL:-1}

hieramamba make-synthetic --out "$WORK/data" --config tiny --videos 200 --min-len 64 --max-len 128 \
    --seed 0 --scenes 12 --min-scene-len 8 --max-scene-len 32 --max-moment-len 32 --noise 0.3 \
    --min-queries 2 --max-queries 6 --overwrite
hieramamba train --config tiny --data "$WORK/data" --output "$WORK/experiment" --device cpu \
    --threads 1 --no-resume --no-progress
hieramamba eval --experiment "$WORK/experiment" --data "$WORK/data" --split test --device cpu \
    --threads 1 --no-progress

if [ "$INSTALL" = "1" ]; then
    python3 - "$WORK" <<'PY'
import json, shutil, sys
from pathlib import Path
work, dst = Path(sys.argv[1]), Path("hieramamba/assets/tiny")
(dst / "models").mkdir(parents=True, exist_ok=True)
shutil.copyfile(work / "experiment" / "opt.yaml", dst / "opt.yaml")
shutil.copyfile(work / "experiment" / "models" / "last.pth", dst / "models" / "last.pth")
meta = json.loads((work / "data" / "meta.json").read_text())
settings = {
    "make_synthetic": {"n_videos": len(meta["videos"]), "min_len": 64, "max_len": 128, "seed": meta["seed"],
                       "n_scenes": meta["n_scenes"], "min_scene_len": meta["min_scene_len"],
                       "max_scene_len": meta["max_scene_len"], "max_moment_len": meta["max_moment_len"],
                       "noise": meta["noise"], "drift": meta["drift"],
                       "occurrence_jitter": meta["occurrence_jitter"], "text_noise": meta["text_noise"],
                       "queries_per_video": [2, 6]},
    "geometry": meta["geometry"],
    "reproduce": "bash scripts/train_tiny_default.sh",
    "eval_test_split": (work / "experiment" / "eval_last.txt").read_text(),
}
(dst / "synthetic.json").write_text(json.dumps(settings, indent=1) + "\n")
print(f"installed {dst}: " + ", ".join(f"{p.relative_to(dst)} {p.stat().st_size / 1e6:.2f} MB"
                                       for p in sorted(dst.rglob('*')) if p.is_file()))
PY
fi
