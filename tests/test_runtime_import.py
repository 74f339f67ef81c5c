"""``hieramamba.runtime`` imports and decodes with torch blocked from import (DESIGN §1)."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (import of {name!r})")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")


def run_blocked(body: str):
    code = BLOCK_TORCH + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_blocker_really_blocks_torch():
    res = run_blocked("import torch")
    assert res.returncode != 0 and "torch is blocked" in res.stderr


PLAN = {"num_levels": 6, "vid_stride": 1, "windowed": [True] * 5 + [False], "early_fusion": True,
        "mask_semantics": "official", "vid_in_dim": 32, "text_in_dim": 32, "embd_dim": 32, "text_enc_dim": 32,
        "text_extra_tokens": 1, "attn_heads": 2, "scan": [{"H": 4, "P": 16, "N": 16, "G": 1}] * 6,
        "pad_multiple": 32, "max_text_len": 16, "batchify": True,
        "decode": {"pre_nms_thresh": 0.001, "pre_nms_topk": 2000, "seg_len_thresh": 0.1,
                   "nms": {"mode": "soft_nms", "iou_thresh": 0.1, "min_score": 0.001, "max_num_segs": 5,
                           "sigma": 0.9, "voting_thresh": 0.95}},
        "clip_size": 32, "clip_stride": 16, "head_scales": [1.0] * 6}


def test_runtime_imports_and_runs_host_code_without_torch():
    res = run_blocked(f"""
        import numpy as np
        import hieramamba.runtime as rt
        from hieramamba.runtime import GroundingRuntime, HaloStream
        from hieramamba.runtime.backends.onnxruntime import OrtBackend
        from hieramamba.runtime.backends.tensorrt import TrtBackend  # importable without torch or TensorRT
        from hieramamba.artifacts import BundleManifest, EngineLimits, Plan
        from hieramamba.stage_table import level_geometry, stage_instances, symbol_ranges
        from hieramamba.postprocess import ground_query
        from hieramamba.errors import CheckpointError
        g = level_geometry(1024, 777, 2, 9)
        plan = Plan.from_dict({PLAN!r})
        pre0 = next(i for i in stage_instances(plan) if i.name == "pre0")
        assert symbol_ranges(plan, EngineLimits(16, 2, 8, 600), pre0)["tok"] == (1, 20, 20)
        assert [x.length for x in g][:3] == [512, 256, 128] and g[0].valid == 389
        try:
            BundleManifest.read("/nonexistent-bundle")
        except CheckpointError as exc:
            print("ok:", exc)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("no torch")
    """)
    assert res.returncode == 0, res.stderr
    assert "no torch" in res.stdout and "not a runtime bundle" in res.stdout
