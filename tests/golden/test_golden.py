"""The model loads official experiment folders and reproduces the official outputs
(fixtures made by the official code in float64; see ../shared/golden/README.md)."""

import json

import numpy as np
import pytest
import torch

from hieramamba.checkpoint import load_experiment
from hieramamba.inference import Grounder

CASES = ["ego4d", "tacos"]


def scenarios(root, case):
    return json.loads((root / case / "manifest.json").read_text())["scenarios"]


@pytest.fixture(scope="module", params=CASES)
def case(request, golden):
    return request.param


def max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def run_forward(model, inp):
    dt = next(model.parameters()).dtype
    return model(torch.from_numpy(inp["in.vid"]).to(dt), torch.from_numpy(inp["in.vid_masks"]),
                 torch.from_numpy(inp["in.text"]).to(dt), torch.from_numpy(inp["in.text_masks"]),
                 torch.from_numpy(inp["in.text_size"]))


def eval_inputs(inp):
    video = inp["in.vid"].T  # stored (Dv, T); the API takes time-major features
    keys = sorted((k for k in inp if k.startswith("in.text.")), key=lambda k: int(k.split(".")[-1]))
    return video, [inp[k].T for k in keys]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_level_outputs_match_official(golden, case, dtype, tol):
    model, opt = load_experiment(golden / case / "experiment", dtype=dtype)
    grounder = Grounder(model, opt, dtype=dtype)
    worst = 0.0
    for sc in scenarios(golden, case):
        inp = np.load(golden / case / sc["inputs_file"])
        out = np.load(golden / case / sc["outputs_file"])
        with torch.no_grad():
            if sc["kind"] == "eval":
                per_query = grounder.level_outputs(*eval_inputs(inp))
                levels = [tuple(np.stack([q[j][l] for q in per_query]) for j in range(3))
                          for l in range(model.num_levels)]
            else:
                o = run_forward(model, inp)
                levels = [(o.logits[l].numpy(), o.offsets[l].numpy(), o.masks[l].numpy())
                          for l in range(model.num_levels)]
        for l, (logits, offsets, masks) in enumerate(levels):
            np.testing.assert_array_equal(masks, out[f"masks.{l}"], err_msg=f"{sc['name']} masks.{l}")
            for name, got in (("logits", logits), ("offsets", offsets)):
                err = max_rel(got, out[f"{name}.{l}"])
                worst = max(worst, err)
                assert err <= tol, f"{case}/{sc['name']} {name}.{l}: max rel err {err:.2e} > {tol}"
    print(f"{case} {dtype}: worst max-rel error on logits/offsets {worst:.2e}")


def test_text_encoding_and_backbone_match(golden, case):
    model, _ = load_experiment(golden / case / "experiment", dtype=torch.float64)
    for sc in scenarios(golden, case):
        if sc["kind"] != "forward":
            continue
        inp = np.load(golden / case / sc["inputs_file"])
        out = np.load(golden / case / sc["outputs_file"])
        with torch.no_grad():
            o = run_forward(model, inp)
            sizes = inp["in.text_size"].tolist()
            text = torch.cat([torch.from_numpy(t[:k]) for t, k in zip(inp["in.text"], sizes)]).double()
            tmask = torch.cat([torch.from_numpy(t[:k]) for t, k in zip(inp["in.text_masks"], sizes)])
            x, m = model.encode_text(text, tmask)
        assert max_rel(x.numpy(), out["text_enc.x"]) < 1e-10
        np.testing.assert_array_equal(m.numpy(), out["text_enc.mask"])
        # Intermediates are stored in float32: compare at that precision.
        for l in range(model.num_levels):
            for ours, key in ((o.fpn[l], "fpn"), (o.anchors[l], "anchor_fpn")):
                assert max_rel(ours.numpy(), out[f"{key}.{l}"]) < 1e-6, f"{sc['name']} {key}.{l}"
            np.testing.assert_array_equal(o.fpn_masks[l].numpy(), out[f"fpn_mask.{l}"])
            np.testing.assert_array_equal(o.anchor_masks[l].numpy(), out[f"anchor_mask.{l}"])


def test_final_segments_match_official(golden, case):
    model, opt = load_experiment(golden / case / "experiment", dtype=torch.float64)
    grounder = Grounder(model, opt, dtype=torch.float64)
    for sc in scenarios(golden, case):
        if sc["kind"] != "eval":
            continue
        inp = np.load(golden / case / sc["inputs_file"])
        out = np.load(golden / case / sc["outputs_file"])
        meta = sc["meta"]
        video, queries = eval_inputs(inp)
        results = grounder.ground(video, queries, fps=meta["fps"], duration=meta["duration"],
                                  clip_size=meta["clip_size"], clip_stride=meta["clip_stride"])
        for q, segs in enumerate(results):
            ref_segs, ref_scores = out[f"final.{q}.segments"], out[f"final.{q}.scores"]
            assert len(segs) == len(ref_scores), f"{sc['name']} query {q}: segment count"
            got = np.array([[s.start_sec, s.end_sec] for s in segs])
            np.testing.assert_allclose(got, ref_segs, atol=1e-4, rtol=0)
            np.testing.assert_allclose([s.score for s in segs], ref_scores, atol=1e-5, rtol=0)


def test_batch_summed_mask_is_reproduced_and_per_sample_differs(golden):
    """eval_T300_q3 runs 3 queries together: the official batch-summed interleave mask makes
    padded slots valid. ``per_sample`` semantics must give different numbers there."""
    out = np.load(golden / "ego4d" / "eval_T300_q3.outputs.npz")
    inp = np.load(golden / "ego4d" / "eval_T300_q3.inputs.npz")
    model, opt = load_experiment(golden / "ego4d" / "experiment", dtype=torch.float64,
                                 mask_semantics="per_sample")
    per_query = Grounder(model, opt, dtype=torch.float64).level_outputs(*eval_inputs(inp))
    assert max_rel(np.stack([q[0][0] for q in per_query]), out["logits.0"]) > 1e-6
