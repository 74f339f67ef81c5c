import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    return Path(os.environ.get("HIERAMAMBA_GOLDEN", REPO.parent / "shared" / "golden"))


@pytest.fixture(scope="session")
def golden():
    root = golden_dir()
    if not (root / "ego4d" / "manifest.json").is_file():
        pytest.skip(f"golden fixtures not found at {root} (set HIERAMAMBA_GOLDEN to the folder "
                    "holding ego4d/ and tacos/ made with the official implementation)")
    return root
