"""Dataset, batching, GloVe tokens and the synthetic dataset (REFERENCE §1, §10.1, §12)."""

import json
import os

import numpy as np
import pytest
import torch

from hieramamba.config import load_config
from hieramamba.data import (
    GloveTokenizer, VideoCentricDataset, batchify, collate_train, make_dataset, make_synthetic,
    pad_texts, pad_videos, tokenize, trivial_collate,
)
from hieramamba.errors import DataError, InputError

DV = DT = 8


def _write(root, videos, fps=1.0, split="train", seed=0):
    """Hand-made dataset: clip_size = clip_stride = 1 and fps 1, so a moment [s, e] seconds maps to
    the feature grid [s - 0.5, e - 0.5] and duration = T seconds."""
    rng = np.random.default_rng(seed)
    vdir, tdir = root / "video", root / "text"
    vdir.mkdir(parents=True, exist_ok=True)
    tdir.mkdir(parents=True, exist_ok=True)
    anno = {split: {}}
    for vid, spec in videos.items():
        np.save(vdir / f"{vid}.npy", rng.standard_normal((spec["T"], DV)).astype(np.float32))
        anns = []
        for i, seg in enumerate(spec["segs"]):
            np.save(tdir / f"{vid}_{i:04d}.npy", rng.standard_normal((3 + i % 4, DT)).astype(np.float32))
            anns.append({"segment": seg, "sentence": f"the cat sat {i}"})
        anno[split][vid] = {"fps": fps, "duration": float(spec.get("duration", spec["T"])),
                            "annotations": anns}
    path = root / "anno.json"
    path.write_text(json.dumps(anno))
    return path, vdir, tdir


def _ds(paths, **kw):
    args = dict(split="train", is_training=True, max_vid_len=50, max_text_len=4, clip_size=1,
                clip_stride=1, crop_ratio=None, max_num_text=2, vid_dim=DV, text_dim=DT, seed=0)
    args.update(kw)
    return VideoCentricDataset(*paths, **args)


SEGS = [[0, 5], [2, 8], [10, 20], [30, 45], [48, 52], [60, 70], [61, 62], [0, 80]]


# ----------------------------------------------------------------------------------------------
# synthetic data -> loader

def test_synthetic_loader_roundtrip(tmp_path):
    syn = make_synthetic(tmp_path / "syn", n_videos=5, min_len=100, max_len=400, seed=3)
    anno = json.loads(open(syn.anno_file).read())
    assert set(anno) == {"train", "val", "test"} and all(anno[s] for s in anno)

    train = syn.dataset(True, max_vid_len=256, max_text_len=24, crop_ratio=(0.9, 1.0), max_num_text=2)
    n_queries = sum(len(v["annotations"]) for v in anno["train"].values())
    assert sum(len(s[1]) for s in train.samples) == n_queries
    offset = 0.5 * syn.clip_size / syn.clip_stride
    for i in range(len(train)):
        s = train[i]
        assert s["vid"].dtype == torch.float32 and s["vid"].shape[0] == syn.vid_dim
        assert s["vid"].shape[1] <= 256
        assert len(s["text"]) == len(s["text_ids"]) == s["target"].shape[0] <= 2
        assert all(t.shape[0] == syn.text_dim and 1 <= t.shape[1] <= 24 for t in s["text"])
        assert (s["target"] >= -offset).all() and (s["target"] <= s["vid"].shape[1] + offset).all()
        assert (s["segment"] >= 0).all() and (s["segment"] <= s["duration"]).all()
        assert s["clip_stride"] == syn.clip_stride * syn.downsample_rate

    ev = syn.dataset(False, split="test")
    assert len(ev) == len(anno["test"])
    s = ev[0]
    entry = anno["test"][s["vid_id"]]
    assert len(s["text"]) == len(entry["annotations"])
    want = np.array([a["segment"] for a in entry["annotations"]], dtype=np.float32)
    assert np.array_equal(s["segment"].numpy(), want)
    frames = np.clip(want.astype(np.float64) * s["fps"], 0, int(s["duration"] * s["fps"]))
    grid = frames / s["clip_stride"] - offset
    assert np.allclose(s["target"].numpy(), grid, atol=1e-5)
    assert s["vid"].shape[1] == entry["num_clips"]


def test_synthetic_with_official_config_and_batches(tmp_path):
    opt = load_config("ego4d", is_training=True)
    syn = make_synthetic(tmp_path / "ego", "ego4d", n_videos=5, min_len=100, max_len=300, seed=1)
    assert (syn.vid_dim, syn.text_dim, syn.downsample_rate) == (256, 768, 2)
    train = make_dataset(opt, True, **syn.paths())
    assert train.clip_stride == 16 and train.max_vid_len == 2304 and train.max_num_text == 2
    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=trivial_collate)
    samples = next(iter(loader))
    assert len(samples) == 2
    b = collate_train(samples, vid_len=2304, max_text_len=24, vid_stride=1)
    n = [len(s["text"]) for s in samples]
    assert b.vid.shape == (2, 256, 2304) and b.vid_masks.shape == (2, 2304)
    assert b.text.shape == (2, max(n), 768, 24) and b.text_masks.shape == (2, max(n), 24)
    assert b.text_size.tolist() == n and b.targets.shape == (sum(n), 2)
    assert b.vid_masks[0].sum() == samples[0]["vid"].shape[1]
    assert (b.vid[0, :, samples[0]["vid"].shape[1]:] == 0).all()
    ev = make_dataset(load_config("ego4d", is_training=False), False, **syn.paths())
    assert ev.splits == ("val",) and not ev.is_training
    # dims of the synthetic tiny geometry do not match the Ego4D config
    tiny = make_synthetic(tmp_path / "tiny", n_videos=3, seed=1, min_len=50, max_len=60)
    with pytest.raises(DataError, match=r"syn_00000.*expected 256"):
        make_dataset(opt, True, **tiny.paths())


def test_synthetic_same_seed_identical_bytes(tmp_path):
    kw = dict(n_videos=4, min_len=50, max_len=300, write_glove=True)
    a = make_synthetic(tmp_path / "a", seed=7, **kw)
    b = make_synthetic(tmp_path / "b", seed=7, **kw)
    c = make_synthetic(tmp_path / "c", seed=8, **kw)

    def files(root):
        out = {}
        for d, _, names in os.walk(root):
            for n in names:
                p = os.path.join(d, n)
                out[os.path.relpath(p, root)] = open(p, "rb").read()
        return out

    fa, fb = files(a.root), files(b.root)
    assert fa == fb and len(fa) > 6
    assert not any(os.path.basename(k).startswith(".") for k in fa)     # no temp files left
    assert files(c.root)["annotations.json"] != fa["annotations.json"]
    with pytest.raises(DataError, match="already exists"):
        make_synthetic(tmp_path / "a", seed=7, **kw)
    make_synthetic(tmp_path / "a", seed=7, overwrite=True, **kw)
    assert files(a.root) == fa


def test_synthetic_queries_are_well_posed(tmp_path):
    syn = make_synthetic(tmp_path / "s", n_videos=1, min_len=6750, max_len=6750, seed=2,
                         queries_per_video=(8, 8), split_fractions=(1, 0, 0))
    meta = json.loads(open(syn.meta_file).read())
    anno = json.loads(open(syn.anno_file).read())
    (vid, entry), = anno["train"].items()
    assert entry["duration"] > 3600                                  # an hour of 16/30 s clips
    occs = meta["videos"][vid]["occurrences"]
    lengths = []
    for q, a in zip(meta["videos"][vid]["queries"], entry["annotations"]):
        j = q["occurrence"]
        scene, r0, r1 = occs[j]
        nb = occs[j - 1][0] if q["relation"] == "after" else occs[j + 1][0]
        assert (scene, nb) == (q["scene"], q["context"]) and not q["ambiguous"]
        same = [k for k in range(len(occs)) if occs[k][0] == scene and
                (occs[k - 1][0] if q["relation"] == "after" else
                 (occs[k + 1][0] if k + 1 < len(occs) else None)) == nb and
                (k > 0 or q["relation"] == "before")]
        assert same == [j]                                           # unique in the video
        start = (r0 * 16 + 16 - 8) / 30.0                             # centre of row r0 - half a row
        end = ((r1 - 1) * 16 + 16 + 8) / 30.0
        assert abs(a["segment"][0] - max(start, 0)) <= 0.25 * 16 / 30 + 1e-3
        assert abs(a["segment"][1] - end) <= 0.25 * 16 / 30 + 1e-3
        assert a["sentence"].split()[0] == f"sc{scene:03d}"
        lengths.append(a["segment"][1] - a["segment"][0])
    # the scene recurs: the queried scene appears more than once in the video for most queries
    counts = [sum(o[0] == q["scene"] for o in occs) for q in meta["videos"][vid]["queries"]]
    assert sum(c > 1 for c in counts) >= len(counts) // 2
    assert min(lengths) > 0


# ----------------------------------------------------------------------------------------------
# grouping, cropping, eval mode

def test_grouping_and_max_num_text(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 100, "segs": SEGS}})
    # no limit: the window is 50 s (T > max_vid_len); [0, 80] is longer and forms its own group
    ds = _ds(paths, max_num_text=None)
    assert [set(s[1]) for s in ds.samples] == [{0, 1, 2, 3}, {7}, {4, 5, 6}]
    # max_num_text=2: a random subset of each window's candidates, every query exactly once
    ds = _ds(paths, max_num_text=2)
    groups = [s[1] for s in ds.samples]
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert all(len(g) <= 2 for g in groups) and (7,) in groups
    for g in groups:
        if g != (7,):
            seg = np.array([SEGS[i] for i in g])
            assert seg[:, 1].max() - seg[:, 0].min() <= 50
    assert _ds(paths, max_num_text=2).samples == ds.samples           # seeded
    # evaluation: one sample with all queries, nothing cropped or truncated
    ev = _ds(paths, is_training=False)
    assert ev.samples == (("v1", tuple(range(8))),)
    s = ev[0]
    assert s["vid"].shape == (DV, 100) and [t.shape[1] for t in s["text"]] == [3, 4, 5, 6, 3, 4, 5, 6]
    assert torch.allclose(s["target"], torch.tensor(SEGS, dtype=torch.float32) - 0.5)


def test_training_crop(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 100, "segs": SEGS}})
    ds = _ds(paths)
    for i in range(len(ds)):
        s = ds[i]
        assert s["vid"].shape == (DV, 50)
        assert all(t.shape[1] <= 4 for t in s["text"])               # truncated to max_text_len
        orig = torch.tensor([SEGS[j] for j in ds.samples[i][1]], dtype=torch.float32) - 0.5
        kept = (s["target"][:, 1] - s["target"][:, 0]) / (orig[:, 1] - orig[:, 0])
        assert (kept > 0.5).all()
        assert (s["target"] >= -0.5).all() and (s["target"] <= 50.5).all()
    # crops depend on (seed, epoch, index) only
    a = [ds[i]["target"] for i in range(len(ds))]
    assert all(torch.equal(x, ds[i]["target"]) for i, x in enumerate(a))
    ds.set_epoch(1)
    b = [ds[i]["target"] for i in range(len(ds))]
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    # short video with crop_ratio: length in [ceil(0.9 T), T]
    short = _ds(paths, max_vid_len=200, crop_ratio=(0.9, 1.0))
    assert all(90 <= short[i]["vid"].shape[1] <= 100 for i in range(len(short)))
    # a moment more than twice the window cannot keep > 50 % inside any crop
    paths2 = _write(tmp_path / "long", {"vlong": {"T": 300, "segs": [[0, 200]]}})
    with pytest.raises(DataError, match="vlong"):
        _ds(paths2)[0]


# ----------------------------------------------------------------------------------------------
# bad inputs

def test_malformed_json_and_missing_split(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    paths[0].write_text('{"train": {"v1": {"fps": 1, ')
    with pytest.raises(DataError, match=r"anno\.json.*malformed"):
        _ds(paths)
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    with pytest.raises(DataError, match="split 'val' not found"):
        _ds(paths, split="val")
    with pytest.raises(DataError, match="not found"):
        _ds((tmp_path / "nope.json", paths[1], paths[2]))
    anno = json.loads(paths[0].read_text())
    anno["train"]["v1"]["fps"] = "fast"
    paths[0].write_text(json.dumps(anno))
    with pytest.raises(DataError, match="'v1'.*fps"):
        _ds(paths)


def test_missing_and_truncated_features(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}, "v2": {"T": 30, "segs": [[2, 9]]}})
    (paths[1] / "v2.npy").unlink()
    with pytest.raises(DataError, match=r"'v2'.*v2\.npy"):
        _ds(paths)
    ds = _ds(paths, validate=False)                                   # lazily: at load time
    with pytest.raises(DataError, match="'v2'"):
        ds[len(ds) - 1]

    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}, "v2": {"T": 30, "segs": [[2, 9]]}})
    raw = (paths[1] / "v1.npy").read_bytes()
    (paths[1] / "v1.npy").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DataError, match=r"'v1'.*v1\.npy"):
        _ds(paths)
    with pytest.raises(DataError, match=r"'v1'.*v1\.npy"):
        _ds(paths, validate=False)[0]

    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    raw = (paths[2] / "v1_0000.npy").read_bytes()
    (paths[2] / "v1_0000.npy").write_bytes(raw[:60])
    with pytest.raises(DataError, match=r"'v1'.*'v1_0000'"):
        _ds(paths)

    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    bad = np.ones((20, DV), dtype=np.float32)
    bad[3, 2] = np.nan
    np.save(paths[1] / "v1.npy", bad)
    with pytest.raises(DataError, match="'v1'.*NaN"):
        _ds(paths)[0]


def test_feature_dim_mismatch(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    with pytest.raises(DataError, match=r"'v1'.*dim 8.*expected 16"):
        _ds(paths, vid_dim=16)
    with pytest.raises(DataError, match=r"'v1_0000'.*dim 8.*expected 12"):
        _ds(paths, text_dim=12)
    with pytest.raises(DataError, match=r"'v1'.*dim 8.*expected 16"):
        _ds(paths, vid_dim=16, validate=False)[0]
    np.save(paths[1] / "v1.npy", np.zeros(20, dtype=np.float32))     # 1-D array
    with pytest.raises(DataError, match=r"'v1'.*\(T, D\)"):
        _ds(paths)


def test_moments_outside_the_video(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5], [25, 30]]}})
    with pytest.raises(DataError, match=r"'v1', annotation 1.*outside"):
        _ds(paths)
    ds = _ds(paths, outside_moments="drop")
    assert ds.stats["dropped_outside"] == 1 and len(ds.videos["v1"]["segments"]) == 1
    # partly outside -> clipped (official); zero length -> dropped (official); reversed -> error
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[-2, 5], [15, 26], [7, 7], [3, 4]]}})
    ds = _ds(paths, is_training=False)
    assert ds.stats == {"clipped": 2, "dropped_zero_length": 1, "dropped_outside": 0}
    assert ds.videos["v1"]["segments"].tolist() == [[0, 5], [15, 20], [3, 4]]
    assert ds.videos["v1"]["text_ids"] == ("v1_0000", "v1_0001", "v1_0003")   # raw indices kept
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[5, 3]]}})
    with pytest.raises(DataError, match="'v1'.*ends before it starts"):
        _ds(paths)


def test_empty_annotations(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": []}, "v2": {"T": 20, "segs": [[4, 4]]}})
    with pytest.raises(DataError, match="no annotated moments"):
        _ds(paths)


# ----------------------------------------------------------------------------------------------
# GloVe (TACoS)

def _glove(path, rows):
    path.write_text("".join(f"{w} " + " ".join(v) + "\n" for w, v in rows))
    return path


def test_glove_tokenization(tmp_path):
    g = _glove(tmp_path / "glove.txt", [("the", ["0.1", "0.2", "0.3", "0.4"]),
                                        ("cat", ["1", "-2", "3e-1", "4"]),
                                        ("sat", ["0.5", "0.5", "0.5", "0.5"])])
    assert tokenize("The CAT, sat on-it!") == ["the", "cat", "sat", "on", "it"]
    tok = GloveTokenizer(g, dim=4)
    out = tok("The CAT, sat on-it!")
    assert out.shape == (4, 5) and out.dtype == torch.float32
    assert out[:, 1].tolist() == np.array([1, -2, 0.3, 4], dtype=np.float32).tolist()
    assert (out[:, 3:] == 0).all()                                   # out of vocabulary
    with pytest.raises(DataError, match="expected dim=300"):
        GloveTokenizer(g, dim=300)

    # the dataset path: tokenizer='glove' (dims checked against text_dim)
    paths = _write(tmp_path / "d", {"v1": {"T": 20, "segs": [[1, 5], [2, 8]]}})
    ds = _ds((paths[0], paths[1], None), tokenizer="glove", glove_path=g, text_dim=4, is_training=False)
    s = ds[0]
    assert [t.shape for t in s["text"]] == [(4, 4), (4, 4)]           # "the cat sat <i>"
    assert torch.equal(s["text"][0][:, :3], out[:, [0, 1, 2]])
    anno = json.loads(paths[0].read_text())
    anno["train"]["v1"]["annotations"][1]["sentence"] = "?!"
    paths[0].write_text(json.dumps(anno))
    with pytest.raises(DataError, match="'v1_0001'.*no word"):
        _ds((paths[0], paths[1], None), tokenizer="glove", glove_path=g, text_dim=4)


def test_glove_missing_is_a_data_error(tmp_path):
    syn = make_synthetic(tmp_path / "s", n_videos=3, min_len=30, max_len=60, seed=0, write_glove=True)
    opt = load_config("tacos", is_training=True)
    paths = syn.paths()
    paths.pop("glove_path")
    with pytest.raises(DataError, match="GloVe file not found"):
        make_dataset(opt, True, root=tmp_path, **paths)
    with pytest.raises(DataError, match="GloVe file not found"):
        syn.dataset(True, tokenizer="glove", glove_path=tmp_path / "missing.txt", text_feat_dir=None)
    # the synthetic GloVe file covers every sentence word
    ds = syn.dataset(False, split="test", tokenizer="glove", glove_path=syn.glove_path, text_feat_dir=None)
    s = ds[0]
    assert [t.shape[1] for t in s["text"]] == [len(x.split()) for x in s["sentences"]]
    assert all((t.abs().sum(0) > 0).all() for t in s["text"])


# ----------------------------------------------------------------------------------------------
# batching

def test_batching_helpers():
    v = [torch.ones(3, 5), torch.ones(3, 2)]
    vid, m = pad_videos(v, 8)
    assert vid.shape == (2, 3, 8) and m.sum(1).tolist() == [5, 2] and vid[1, :, 2:].abs().sum() == 0
    with pytest.raises(InputError, match="exceed"):
        pad_videos(v, 4)
    t, tm = pad_texts([torch.ones(4, 6)], 4, truncate=True)
    assert t.shape == (1, 4, 4) and tm.all()
    with pytest.raises(InputError, match="max_text_len"):
        pad_texts([torch.ones(4, 6)], 4)
    single = batchify(v, [torch.ones(4, 2), torch.ones(4, 3)], 8, 5)
    assert single.text.shape == (2, 4, 5) and single.text_size.tolist() == [1, 1]
    multi = batchify(v, [(torch.ones(4, 2),), (torch.ones(4, 3), torch.ones(4, 1))], 8, 5)
    assert multi.text.shape == (2, 2, 4, 5) and multi.text_size.tolist() == [1, 2]
    assert not multi.text_masks[0, 1].any() and multi.text_masks[1, 1].sum() == 1
    samples = [{"vid": v[0], "text": (torch.ones(4, 2),), "target": torch.tensor([[2.0, 4.0]])},
               {"vid": v[1], "text": (torch.ones(4, 2),) * 2,
                "target": torch.tensor([[0.0, 2.0], [1.0, 3.0]])}]
    b = collate_train(samples, 8, 5, vid_stride=2)
    assert b.targets.tolist() == [[1.0, 2.0], [0.0, 1.0], [0.5, 1.5]]


def test_pt_features_and_multiple_dirs(tmp_path):
    paths = _write(tmp_path, {"v1": {"T": 20, "segs": [[1, 5]]}})
    arr = np.load(paths[1] / "v1.npy")
    (paths[1] / "v1.npy").unlink()
    torch.save(torch.from_numpy(arr), paths[1] / "v1.pt")
    s = _ds(paths, is_training=False)[0]
    assert torch.equal(s["vid"], torch.from_numpy(arr.T.copy()))
    # two feature directories are concatenated on channels (the shorter one padded by repetition)
    other = tmp_path / "video2"
    other.mkdir()
    np.save(other / "v1.npy", np.ones((19, 3), dtype=np.float32))
    ds = VideoCentricDataset(paths[0], [paths[1], other], paths[2], split="train", is_training=False,
                             clip_size=1, clip_stride=1, vid_dim=DV + 3, text_dim=DT)
    vid = ds[0]["vid"]
    assert vid.shape == (DV + 3, 20) and (vid[DV:] == 1).all()
    torch.save({"not": "a tensor"}, paths[1] / "v1.pt")
    with pytest.raises(DataError, match=r"'v1'.*v1\.pt"):
        _ds(paths)[0]
