import pytest
import torch

from hieramamba.config import OFFICIAL_CONFIGS, load_config, parse_config
from hieramamba.errors import ConfigError
from hieramamba.model import build_model

# Parameter counts of the official state_dicts (REFERENCE §2).
PARAMS = {"ego4d": 38_562_219, "tacos": 17_631_051, "mad": 69_951_420, "madv2": 156_257_172}


@pytest.mark.parametrize("name", OFFICIAL_CONFIGS)
def test_official_configs_build_with_official_parameter_count(name):
    model = build_model(load_config(name))
    assert sum(v.numel() for v in model.state_dict().values()) == PARAMS[name]


def test_default_merging_follows_official_rule():
    assert load_config("mad")["model"]["vid_net"]["use_abs_pe"] is True  # inherited default
    assert load_config("madv2")["model"]["vid_net"]["use_abs_pe"] is False
    ego = load_config("ego4d")
    assert ego["model"]["vid_net"]["stride"] == 1 and ego["model"]["num_fpn_levels"] == 8
    assert ego["pt_gen"]["max_seq_len"] == 4 * 2304  # eval buffers 4× max_seq_len
    assert load_config("ego4d", is_training=True)["pt_gen"]["max_seq_len"] == 2304
    assert load_config("mad")["model"]["vid_stride"] == 2


def test_bad_configs_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown packaged config"):
        load_config("nope")
    bad = tmp_path / "opt.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    raw = {"model": {"text_net": {"name": "identity"}, "vid_net": {"name": "hieramamba_backbone",
                                                                    "pool_method": "max"}}, "eval": {}}
    with pytest.raises(ConfigError, match="pool_method"):
        parse_config(raw)


def test_config_is_not_mutated_by_model_building():
    opt = load_config("ego4d")
    before = repr(opt)
    build_model(opt)
    assert repr(opt) == before
