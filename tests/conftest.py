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


def small_model():
    """Tiny widths, six levels (0–4 windowed, 5 global attention): every stage kind, and levels
    whose stage graphs the exporter reuses with their own weights (export_bundle). Its bundles
    (fixtures ``bundle``: fp32, ``bundle16``) are exported once per session."""
    import torch

    from hieramamba.config import packaged_config_path, parse_config, read_yaml
    from hieramamba.model import build_model, widen_layer_scales

    raw = read_yaml(packaged_config_path("tiny"))
    raw["model"]["vid_net"]["arch"] = [2, 0, 6]
    raw["model"]["vid_net"].update(embd_dim=32, mamba_headdim=16, mamba_dstate=8, max_seq_len=64)
    raw["model"]["text_net"].update(embd_dim=32)
    opt = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(opt).eval()
    widen_layer_scales(model)  # LayerScales at 1e-4 would hide most of each block
    return model, opt


@pytest.fixture(scope="session")
def export_log():
    return []


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, export_log):
    pytest.importorskip("onnxruntime")
    from hieramamba.export.stages import export_bundle

    model, opt = small_model()
    out = tmp_path_factory.mktemp("rt") / "bundle"
    export_bundle(model, opt, out, dtype="float32", log=export_log.append)
    return out, model, opt


@pytest.fixture(scope="session")
def bundle16(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from hieramamba.export.stages import export_bundle

    model, opt = small_model()
    out = tmp_path_factory.mktemp("rt16") / "bundle"
    export_bundle(model, opt, out)  # float16 is the default
    return out, model, opt


@pytest.fixture(scope="session")
def bundle_per_sample(tmp_path_factory):
    """The small model with per-sample masks (answers independent of the batch: what
    ``hieramamba_ground_query`` serves), as an fp32 bundle."""
    pytest.importorskip("onnxruntime")
    from hieramamba.export.stages import export_bundle
    from hieramamba.model import build_model

    model, opt = small_model()
    per_sample = build_model(opt, mask_semantics="per_sample").eval()
    per_sample.load_state_dict(model.state_dict())
    out = tmp_path_factory.mktemp("rt_ps") / "bundle"
    export_bundle(per_sample, opt, out, dtype="float32")
    return out, per_sample, opt
