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


def test_runtime_imports_and_runs_host_code_without_torch():
    res = run_blocked("""
        import numpy as np
        import hieramamba.runtime as rt
        from hieramamba.runtime import GroundingRuntime, HaloStream, level_geometry
        from hieramamba.runtime.bundle import OrtBackend, read_manifest
        from hieramamba.runtime.trt import EngineLimits, dim_ranges  # engine planning: no torch either
        from hieramamba.postprocess import ground_query
        from hieramamba.errors import CheckpointError
        g = level_geometry(1024, 777, 2, 9)
        plan = {"pad_multiple": 32, "vid_stride": 1, "num_levels": 6, "windowed": [True] * 6}
        assert dim_ranges("pre0", plan, EngineLimits(16, 2, 8, 600))["tok"] == (1, 20, 20)
        assert [x.length for x in g][:3] == [512, 256, 128] and g[0].valid == 389
        try:
            read_manifest("/nonexistent-bundle")
        except CheckpointError as exc:
            print("ok:", exc)
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("no torch")
    """)
    assert res.returncode == 0, res.stderr
    assert "no torch" in res.stdout and "not a runtime bundle" in res.stdout
