"""Chunked execution (runtime/) against the whole-sequence eager model on the same padded input
(DESIGN §4): random chunk sizes and lengths, Ego4D- and MAD-shaped configs with shrunk widths."""

import threading

import numpy as np
import pytest
import torch

from hieramamba.config import packaged_config_path, parse_config, read_yaml
from hieramamba.errors import InputError
from hieramamba.inference import Grounder
from hieramamba.model import build_model, widen_layer_scales
from hieramamba.runtime import GroundingRuntime, HaloStream
from hieramamba.runtime.backends.torch import TorchBackend
from hieramamba.runtime.scheduler import ChunkScheduler
from hieramamba.stage_modules import plan_from_model


def shrunk(name, mask_semantics="official", seed=0):
    """An official config with small widths (same levels, strides, windows, PE, fusion)."""
    raw = read_yaml(packaged_config_path(name))
    m = raw["model"]
    m["text_net"].update(in_dim=24, embd_dim=24, max_seq_len=m["text_net"]["max_seq_len"])
    m["vid_net"].update(in_dim=20, embd_dim=32, mamba_headdim=16, mamba_dstate=8)
    # Short PE table so that the test lengths exercise the eval-time resampling.
    m["vid_net"]["max_seq_len"] = 256
    opt = parse_config(raw)
    torch.manual_seed(seed)
    model = build_model(opt, mask_semantics=mask_semantics).eval()
    widen_layer_scales(model)  # LayerScales at 1e-4 would hide most of each block
    return model, opt


def rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def inputs(model, opt, valid, nq, seed, pad_multiple):
    g = torch.Generator().manual_seed(seed)
    padded = -(-valid // pad_multiple) * pad_multiple
    vid = torch.randn(1, model.vid_in_dim, padded, generator=g)
    vid[..., valid:] = 0
    vmask = (torch.arange(padded) < valid)[None, None]
    tlen = opt["eval"].get("max_text_len", 24)
    text = torch.randn(nq, model.text_in_dim, tlen, generator=g)
    tmask = torch.ones(nq, 1, tlen, dtype=torch.bool)
    for i in range(nq):
        tmask[i, 0, 3 + 5 * i:] = False
    return vid, vmask, text, tmask


def compare(model, opt, valid, nq, chunks, seed, dtype=torch.float32):
    plan = plan_from_model(model, opt)
    vid, vmask, text, tmask = inputs(model, opt, valid, nq, seed, plan.pad_multiple)
    model = model.to(dtype)
    with torch.no_grad():
        ref = model.forward_levels(vid.to(dtype), vmask, text.to(dtype), tmask)
    worst = 0.0
    for chunk in chunks:
        # Global-attention levels in blocks of `chunk` query rows too (odd: uneven last block).
        backend = TorchBackend(model, opt, dtype=dtype)
        logits, offsets, masks = ChunkScheduler(plan, backend, chunk, attn_rows=chunk + 1).run(
            vid[0].numpy(), valid, text.numpy(), tmask.numpy(), official_batch=nq)
        assert len(logits) == plan.num_levels
        for lvl in range(plan.num_levels):
            np.testing.assert_array_equal(masks[lvl], ref[2][lvl].numpy())
            worst = max(worst, rel(logits[lvl], ref[0][lvl].double()), rel(offsets[lvl], ref[1][lvl].double()))
    return worst, ref, (logits, offsets, masks)


@pytest.mark.parametrize("name,valid,chunks", [
    ("ego4d", 301, [18, 70, 1000]),   # 8 levels, stride 1, padded to 384
    ("mad", 777, [22, 96]),           # 9 levels, stride 2, padded to 1024 → level 0 has 512
    ("tacos", 200, [20]),             # no early fusion: backbone at batch 1, fusion per level
])
def test_chunked_equals_whole_fp32(name, valid, chunks):
    model, opt = shrunk(name)
    worst, _, _ = compare(model, opt, valid, nq=2, chunks=chunks, seed=1)
    assert worst <= 1e-4


def test_chunked_smallest_chunks_and_per_sample_masks():
    # One anchor pair per chunk: every halo and state hand-off is at its tightest.
    model, opt = shrunk("ego4d", mask_semantics="per_sample", seed=3)
    worst, _, _ = compare(model, opt, valid=37, nq=2, chunks=[2, 4], seed=2)
    assert worst <= 1e-4


def test_random_chunk_sizes_and_lengths():
    model, opt = shrunk("ego4d", seed=5)
    rng = np.random.default_rng(0)
    for _ in range(2):
        valid = int(rng.integers(1, 400))
        chunk = int(rng.integers(2, 120))
        worst, _, _ = compare(model, opt, valid=valid, nq=1, chunks=[chunk], seed=int(valid))
        assert worst <= 1e-4, (valid, chunk)


def test_chunked_fp16_close_and_same_top1():
    model, opt = shrunk("ego4d", seed=7)
    plan = plan_from_model(model, opt)
    worst, ref, (logits, offsets, masks) = compare(model, opt, valid=250, nq=2, chunks=[40], seed=4,
                                                   dtype=torch.float16)
    assert worst <= 1e-2
    # Identical top-1 segment after decoding, on the fp16 head outputs of both paths.
    from hieramamba.postprocess import ground_query
    meta = {"fps": 30.0, "clip_size": 32, "clip_stride": 16, "duration": 200.0}
    for q in range(2):
        a = ground_query([l[q] for l in logits], [o[q] for o in offsets], [m[q] for m in masks],
                         plan.decode, meta)
        b = ground_query([l[q].double().numpy() for l in ref[0]], [o[q].double().numpy() for o in ref[1]],
                         [m[q].numpy() for m in ref[2]], plan.decode, meta)
        np.testing.assert_allclose(a[0][0], b[0][0], rtol=0, atol=1e-3)


def test_default_chunk_runs_short_videos_whole_and_long_ones_in_default_chunks(monkeypatch):
    # chunk=None: at most WHOLE_LEVEL_TOKENS level-0 tokens → one chunk per level, else
    # DEFAULT_CHUNK. Shrunk here so that a 301-clip video (384 level-0 tokens) is "long".
    import hieramamba.runtime.api as api

    model, opt = shrunk("ego4d", seed=13)
    rng = np.random.default_rng(2)
    video = rng.standard_normal((301, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((7, model.text_in_dim)).astype(np.float32)]
    used = []

    class Recording(ChunkScheduler):
        def __init__(self, plan, backend, chunk, **kwargs):
            used.append(chunk)
            super().__init__(plan, backend, chunk, **kwargs)

    monkeypatch.setattr(api, "ChunkScheduler", Recording)
    monkeypatch.setattr(api, "DEFAULT_CHUNK", 64)
    outs = []
    for whole in (512, 256):
        monkeypatch.setattr(api, "WHOLE_LEVEL_TOKENS", whole)
        outs.append(GroundingRuntime.from_model(model, opt).level_outputs(video, queries)[0])
    assert used == [384, 64]
    monkeypatch.undo()
    assert api.auto_chunk(api.WHOLE_LEVEL_TOKENS) == api.WHOLE_LEVEL_TOKENS
    assert api.auto_chunk(api.WHOLE_LEVEL_TOKENS + 2) == api.DEFAULT_CHUNK < api.WHOLE_LEVEL_TOKENS
    for whole_level, chunked in zip(*outs):
        for a, b in zip(whole_level, chunked):
            assert rel(b, a) <= 1e-4


def test_runtime_ground_equals_grounder_with_batch_splitting_and_threads():
    model, opt = shrunk("ego4d", seed=11)
    rng = np.random.default_rng(1)
    video = rng.standard_normal((290, model.vid_in_dim)).astype(np.float32)
    queries = [rng.standard_normal((n, model.text_in_dim)).astype(np.float32) for n in (5, 9, 24, 2, 13)]
    want = Grounder(model, opt).ground(video, queries, fps=30.0)
    rt = GroundingRuntime.from_model(model, opt, chunk=64, max_batch=2)
    got = [None, None]

    def work(i):
        got[i] = rt.ground(video, queries, fps=30.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in got:
        assert len(res) == len(want)
        for segs, ref in zip(res, want):
            assert len(segs) == len(ref) > 0
            np.testing.assert_allclose([[s.start_sec, s.end_sec, s.score] for s in segs],
                                       [[s.start_sec, s.end_sec, s.score] for s in ref], rtol=1e-4, atol=1e-4)


def test_halo_stream_equals_direct_windowed_function():
    rng = np.random.default_rng(0)
    total, halo = 53, 4
    x = rng.standard_normal((2, total))
    kernel = rng.standard_normal(2 * halo + 1)
    direct = np.stack([np.convolve(r, kernel, mode="same") for r in x])
    out = []

    def emit(window, lo, c0, c1):
        w = np.stack([np.convolve(r, kernel, mode="same") for r in window[0]])
        out.append(w[:, c0:c1])

    stream = HaloStream(total, halo, emit, axes=(1,), cat=np.concatenate)
    for a, b in ((0, 3), (3, 20), (20, 21), (21, 53)):
        stream.push((x[:, a:b],))
    stream.finish()
    np.testing.assert_allclose(np.concatenate(out, 1), direct, rtol=0, atol=1e-12)


def test_bad_inputs_raise_input_error():
    model, opt = shrunk("ego4d")
    rt = GroundingRuntime.from_model(model, opt)
    q = [np.zeros((4, model.text_in_dim), np.float32)]
    good = np.zeros((10, model.vid_in_dim), np.float32)
    with pytest.raises(InputError, match="dim"):
        rt.ground(np.zeros((10, 3), np.float32), q, fps=30)
    with pytest.raises(InputError, match="zero clips"):
        rt.ground(np.zeros((0, model.vid_in_dim), np.float32), q, fps=30)
    bad = good.copy()
    bad[4, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        rt.ground(bad, q, fps=30)
    with pytest.raises(InputError, match="max_text_len"):
        rt.ground(good, [np.zeros((99, model.text_in_dim), np.float32)], fps=30)
    with pytest.raises(InputError, match="chunk"):
        GroundingRuntime.from_model(model, opt, chunk=1)


def test_global_attention_steps_equal_mix_local():
    """The three steps the runtime uses for a global-attention level (inputs, attention in row
    blocks, the rest) reproduce the block's own mix_local, float64."""
    model, _ = shrunk("ego4d")
    blk = model.vid_net.branch[5].double()
    assert blk.local_encoder.attn.attn.window_size == 0
    g = torch.Generator().manual_seed(0)
    fused1 = torch.randn(2, 39, 32, generator=g, dtype=torch.float64)
    seq_mask = (torch.arange(39) < 31)[None, :, None].expand(2, 39, 1)
    with torch.no_grad():
        want = blk.mix_local(fused1, seq_mask)
        q, k, v = blk.global_attention_inputs(fused1, seq_mask)
        attn = torch.cat([blk.global_attention_rows(q[:, :, i:i + 8], k, v, seq_mask)
                          for i in range(0, 39, 8)], dim=2)
        got = blk.mix_local_from_attention(fused1, seq_mask, attn)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-12)
