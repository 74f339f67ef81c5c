"""The serving request adapter and repository writer (no server): the adapter's answers are the
grounding pipeline's own on the same bundle, its refusals name the input, the query model groups
a batch by video without changing any answer, and the written ``config.pbtxt`` matches the
bundle's plan."""

import numpy as np
import pytest

from hieramamba.errors import InputError


@pytest.fixture(scope="module")
def runtime(bundle_per_sample):
    from hieramamba.runtime import GroundingRuntime

    return GroundingRuntime.load(bundle_per_sample[0], chunk=16, threads=1)


def video_and_queries(plan, clips, lengths, seed):
    g = np.random.default_rng(seed)
    video = g.standard_normal((clips, plan.vid_in_dim)).astype(np.float32)
    return video, [g.standard_normal((n, plan.text_in_dim)).astype(np.float32) for n in lengths]


def as_tuples(results):
    return [[(s.start_sec, s.end_sec, s.score) for s in segs] for segs in results]


def test_ground_request_is_the_pipeline_answer(runtime):
    from hieramamba.serving.adapter import ground_request, unpack_segments
    from hieramamba.serving.client import ground_tensors

    plan = runtime.plan
    for clips, lengths, seed in ((40, (3,), 0), (203, (7, 12, 3), 1)):
        video, queries = video_and_queries(plan, clips, lengths, seed)
        want = runtime.ground(video, queries, fps=30.0, duration=clips * 16 / 30.0)
        out = ground_request(runtime, ground_tensors(video, queries, 30.0, duration=clips * 16 / 30.0))
        k = plan.max_num_segs
        assert out["SEGMENTS"].shape == (len(queries), k, 2) and out["SCORES"].shape == (len(queries), k)
        assert out["NUM_SEGMENTS"].tolist() == [len(s) for s in want]
        # float32 on the wire: the pipeline's float64 seconds rounded once
        assert unpack_segments(out) == [[tuple(float(np.float32(v)) for v in t) for t in q] for q in as_tuples(want)]
        n = int(out["NUM_SEGMENTS"][0])
        assert not out["SEGMENTS"][0, n:].any() and not out["SCORES"][0, n:].any()  # padding is zeros


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.pop("FPS"), "missing input FPS"),
    (lambda t: t.update(FPS=np.array([-1.0], np.float32)), "FPS must be a positive"),
    (lambda t: t.update(VIDEO_FEATURES=t["VIDEO_FEATURES"][0]), "VIDEO_FEATURES must be 2-D"),
    (lambda t: t.update(VIDEO_FEATURES=t["VIDEO_FEATURES"][:, :3]), "video feature dim is 3"),
    (lambda t: t["VIDEO_FEATURES"].__setitem__((5, 0), np.nan), "NaN/Inf (first at row 5)"),
    (lambda t: t.update(QUERY_LENGTHS=np.array([9], np.int32)), "QUERY_LENGTHS[0] = 9 is outside 1..4"),
    (lambda t: t.update(QUERY_LENGTHS=np.array([2, 2], np.int32)), "2 entries for 1 queries"),
    (lambda t: t.update(QUERY_FEATURES=np.zeros((1, 30, t["QUERY_FEATURES"].shape[2]), np.float32),
                        QUERY_LENGTHS=np.array([30], np.int32)), "more than eval.max_text_len"),
    (lambda t: t.update(DURATION=np.array([0.5], np.float32)), "duration 0.5 s is shorter"),
    (lambda t: t.update(VIDEO_FEATURES=t["VIDEO_FEATURES"].astype(np.float64)), "float32 or float16"),
])
def test_bad_requests_are_input_errors_naming_the_input(runtime, edit, words):
    from hieramamba.serving.adapter import ground_request
    from hieramamba.serving.client import ground_tensors

    video, queries = video_and_queries(runtime.plan, 40, (4,), 2)
    tensors = ground_tensors(video, queries, 30.0)
    edit(tensors)
    with pytest.raises(InputError) as err:
        ground_request(runtime, tensors)
    assert words in str(err.value)


def test_query_batches_group_by_video_and_isolate_bad_requests(runtime, tmp_path, monkeypatch):
    from hieramamba.serving.adapter import VideoStore, ground_query_requests

    plan = runtime.plan
    videos = {}
    for i, clips in enumerate((40, 77)):
        videos[f"v{i}"], _ = video_and_queries(plan, clips, (), 10 + i)
        np.save(tmp_path / f"v{i}.npy", videos[f"v{i}"])
    _, queries = video_and_queries(plan, 1, (3, 5, 2, 4), 20)
    rows = [("v0", queries[0]), ("v1", queries[1]), ("v0", queries[2]), ("nope", queries[3]),
            ("v1", np.full_like(queries[3], np.inf)), ("v1", queries[3])]
    requests = [{"VIDEO_ID": np.array([v.encode()], dtype=object), "QUERY_FEATURES": q,
                 "FPS": np.array([30.0], np.float32)} for v, q in rows]
    calls = []
    real = type(runtime).ground
    monkeypatch.setattr(type(runtime), "ground", lambda self, v, qs, **kw: calls.append(len(qs)) or real(self, v, qs, **kw))
    out = ground_query_requests(runtime, requests, VideoStore(tmp_path))
    monkeypatch.undo()
    assert isinstance(out[3], InputError) and "unknown VIDEO_ID 'nope'" in str(out[3])
    assert isinstance(out[4], InputError) and "NaN/Inf" in str(out[4])
    # v0's two queries in one call; v1's three failed together, then ran one by one
    assert calls[:2] == [2, 3] and sorted(calls[2:]) == [1, 1, 1]
    for i, (vid, q) in enumerate(rows):
        if i in (3, 4):
            continue
        want = runtime.ground(videos[vid], [q], fps=30.0)[0]
        n = int(out[i]["NUM_SEGMENTS"][0])
        assert n == len(want)
        np.testing.assert_array_equal(out[i]["SEGMENTS"][:n], np.array([[s.start_sec, s.end_sec] for s in want],
                                                                       np.float32))


def test_video_store_ids_lru_and_no_pickles(tmp_path):
    from hieramamba.serving.adapter import VideoStore

    for i in range(3):
        np.save(tmp_path / f"v{i}.npy", np.full((4, 2), i, np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    store = VideoStore(tmp_path, capacity=2)
    assert store.any_id() == "obj" and float(store.get("v2")[0, 0]) == 2.0
    store.get("v0"), store.get("v1")
    assert list(store._open) == ["v0", "v1"]  # v2 dropped, least recently used
    for bad in ("../v0", "", ".hidden", "a/b"):
        with pytest.raises(InputError, match="not a valid id"):
            store.get(bad)
    with pytest.raises(InputError, match="not a plain .npy"):
        store.get("obj")
    with pytest.raises(InputError, match="does not exist"):
        VideoStore(tmp_path / "missing")


def test_repository_config_has_the_plan_dims_and_refuses_official_bundles_for_the_query_model(
        bundle, bundle_per_sample, tmp_path):
    from hieramamba.serving.repository import ServeOptions, write_repository

    features = tmp_path / "features"
    features.mkdir()
    np.save(features / "v0.npy", np.zeros((8, 4), np.float32))
    with pytest.raises(InputError, match="per_sample"):
        write_repository(bundle[0], tmp_path / "r0", ServeOptions(features=str(features)))
    models = write_repository(bundle_per_sample[0], tmp_path / "r1",
                              ServeOptions(features=str(features), instances=2, max_batch=8))
    assert models == ["hieramamba_ground", "hieramamba_ground_query"]
    _, model, opt = bundle_per_sample
    ground = (tmp_path / "r1" / "hieramamba_ground" / "config.pbtxt").read_text()
    k = opt["eval"]["nms"]["max_num_segs"]
    assert f"dims: [ -1, {model.vid_in_dim} ]" in ground and f"dims: [ -1, {k}, 2 ]" in ground
    assert "max_batch_size: 0" in ground and "count: 2" in ground and "dynamic_batching" not in ground
    query = (tmp_path / "r1" / "hieramamba_ground_query" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in query and "dynamic_batching" in query and "allow_ragged_batch: true" in query
    assert str(features.resolve()) in query
    assert (tmp_path / "r1" / "hieramamba_ground" / "1" / "model.py").read_text().count("TritonPythonModel") == 1
