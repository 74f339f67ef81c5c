"""The CUDA scan's workspace does not depend on the tiles-per-chunk setting (issue 17).

A TensorRT engine sizes the workspace at build time (``getWorkspaceSize``) and runs later, perhaps
with another ``$HIERAMAMBA_CUDA_SCAN_TILES_PER_CHUNK``; a setting that drops the shared-memory plan
to a smaller tile must not need more workspace than the default granted. Planned on the host by
``hieramamba.ops.hydra_scan.native.cuda_scan_plan``: needs the built library, no GPU.
"""

from __future__ import annotations

import pytest
import torch

from hieramamba.ops.hydra_scan import native

SETTINGS = ("1", "2", "4")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module")
def lib():
    loaded = native.load_native_library(required=False)
    if loaded is None:
        pytest.skip("libhieramamba_plugins is not built (the workspace is planned by the native library): "
                    f"{native.BUILD_COMMAND}")
    return loaded


def _workspaces(monkeypatch, setting, length, heads):
    """{(dtype, P, N): workspace bytes} for every dtype and P, N <= 128 under one setting
    (None: the variable unset, i.e. the default)."""
    if setting is None:
        monkeypatch.delenv(native.TILES_PER_CHUNK_ENV, raising=False)
    else:
        monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, setting)
    return {(dtype, P, N): native.cuda_scan_plan(1, length, heads, P, 1, N, dtype)["workspace_bytes"]
            for dtype in DTYPES for P in range(1, 129) for N in range(1, 129)}


# L = 65536, H = 12: the issue's shape (whole tiles); L = 1000: a partial last tile and chunk.
@pytest.mark.parametrize("length,heads", [(65536, 12), (1000, 2)])
def test_default_setting_workspace_is_the_largest(lib, monkeypatch, length, heads):
    default = _workspaces(monkeypatch, None, length, heads)
    smaller = []
    for setting in SETTINGS:
        other = _workspaces(monkeypatch, setting, length, heads)
        smaller += [(str(d).replace("torch.", ""), P, N, setting, default[d, P, N], ws)
                    for (d, P, N), ws in other.items() if ws > default[d, P, N]]
    assert not smaller, (f"{len(smaller)} (dtype, P, N, setting) cases need more workspace than "
                         f"the default setting grants, e.g. (dtype, P, N, setting, default, other): "
                         f"{smaller[:5]}")
    assert all(ws > 0 for ws in default.values())


def test_issue_shapes_keep_the_default_workspace(lib, monkeypatch):
    # The shapes where the tile drops at T = 2 or 4 (64 -> 32 steps): fp16/bf16 P = 64, N = 128 and
    # P = 112, N = 64 at T = 4; fp32 P = 32, N = 80 and P = 80, N = 32 at T = 2 and 4. The tile
    # changes, the workspace (0.81 GB for the first at L = 65536, H = 12) does not.
    cases = [(torch.float16, 64, 128), (torch.bfloat16, 64, 128), (torch.float16, 112, 64),
             (torch.float32, 32, 80), (torch.float32, 80, 32)]
    for dtype, P, N in cases:
        plans = {}
        for setting in SETTINGS:
            monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, setting)
            plans[setting] = native.cuda_scan_plan(1, 65536, 12, P, 1, N, dtype)
        assert plans["4"]["tile"] < plans["1"]["tile"], (dtype, P, N, plans)
        assert {p["workspace_bytes"] for p in plans.values()} == {plans["1"]["workspace_bytes"]}, (dtype, P, N, plans)
    monkeypatch.setenv(native.TILES_PER_CHUNK_ENV, "4")
    assert native.cuda_scan_plan(1, 65536, 12, 64, 1, 128, torch.float16)["workspace_bytes"] == 805404672
