"""The continuous-batching engine against the single-request pipeline (torch-free).

Jobs join and leave a batch of fewer slots than jobs; each must get exactly the tokens the pipeline gives
it alone (greedy, and sampled with its own seed), whatever its neighbours are doing.
"""
import dataclasses
import threading

import numpy as np
import pytest

from qvl_compile.errors import QvlError
from qvl_compile.runtime.engine import Engine, EngineBusy, EngineConfig, VisionCache
from qvl_compile.tasks.shapes import make_case

pytestmark = pytest.mark.torch_free


@pytest.fixture(scope="module")
def pipe(golden_exports):
    from qvl_compile.runtime.pipeline import Pipeline

    return Pipeline(golden_exports["fp32"], intra_op_threads=1)


def messages(case):
    from qvl_compile.runtime.video import Video

    parts = [{"type": "image", "image": image} for image in case.images]
    if case.video is not None:
        parts.append({"type": "video", "video": Video.from_images(list(case.video))})
    return [{"role": "user", "content": [*parts, {"type": "text", "text": case.prompt}]}]


def cases(seed, tasks):
    rng = np.random.default_rng(seed)
    return [make_case(task, rng) for task in tasks]


def run_all(engine, jobs):
    """jobs: [(prepared, max_new, sampling, seed)] submitted from threads at once -> token ids per job."""
    out = [None] * len(jobs)

    def run(index, job):
        out[index] = [u.token_id for u in engine.stream(*job) if u.token_id is not None]

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return out


def test_batched_jobs_get_the_tokens_they_get_alone(pipe):
    tasks = ["color", "ground", "count", "two_images", "motion", "ground", "shape", "count"]
    prepared = [pipe.prepare_messages(messages(c)) for c in cases(31, tasks)]
    greedy = pipe.sampling.greedy()
    sampled = dataclasses.replace(pipe.sampling, do_sample=True, temperature=1.2, top_k=40, eos_token_ids=())
    jobs = [(p, 40, greedy, None) for p in prepared] + [(p, 12, sampled, 100 + i) for i, p in enumerate(prepared[:4])]
    alone = [[t for t, _ in pipe.stream_prepared(p, n, cfg, seed)] for p, n, cfg, seed in jobs]
    engine = Engine(pipe, EngineConfig(max_batch=3, context=512)).start()
    try:
        together = run_all(engine, jobs)
    finally:
        engine.close()
    assert together == alone
    assert max(engine.stats.batch_sizes) == 3  # the batch really filled
    assert len({tuple(ids) for ids in alone}) > 4


def test_the_same_image_is_encoded_once(pipe):
    case = cases(32, ["shape"])[0]
    prepared = pipe.prepare_messages(messages(case))
    engine = Engine(pipe, EngineConfig(max_batch=2, context=256)).start()
    try:
        first = run_all(engine, [(prepared, 8, pipe.sampling.greedy(), None)])
        second = run_all(engine, [(prepared, 8, pipe.sampling.greedy(), None)])
    finally:
        engine.close()
    assert first == second
    assert (engine.stats.vision_cache_misses, engine.stats.vision_cache_hits) == (1, 1)


def test_vision_cache_is_bounded_lru():
    cache = VisionCache(max_bytes=3 * 400)
    item = (np.zeros((10, 10), np.float32), np.zeros((0,), np.float32))  # 400 bytes
    for key in "abc":
        cache.put(key, item)
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", item)
    assert cache.get("b") is None and cache.get("a") is not None and cache.bytes == 1200


def test_cancelled_and_failed_jobs_free_their_slots_and_spare_the_others(pipe):
    case_a, case_b = cases(33, ["ground", "ground"])
    good = pipe.prepare_messages(messages(case_a))
    bad = pipe.prepare_messages(messages(case_b))
    bad = dataclasses.replace(bad, input_ids=bad.input_ids.copy())
    bad.input_ids[-3] = pipe.image_token_id  # one placeholder more than the image has rows: the decoder refuses
    no_eos = dataclasses.replace(pipe.sampling.greedy(), eos_token_ids=())
    engine = Engine(pipe, EngineConfig(max_batch=2, context=2048, max_waiting=2)).start()
    try:
        updates = {"good": [], "bad": [], "long": []}
        done = {name: threading.Event() for name in updates}

        def collect(name):
            def emit(update):
                updates[name].append(update)
                if update.finish_reason:
                    done[name].set()
            return emit

        long = engine.submit(good, 1500, no_eos, collect("long"))
        engine.submit(bad, 8, pipe.sampling.greedy(), collect("bad"))
        assert done["bad"].wait(60)
        engine.submit(good, 40, pipe.sampling.greedy(), collect("good"))
        with pytest.raises(EngineBusy):  # both slots are busy (long, good) and the queue holds 2
            for _ in range(4):
                engine.submit(good, 8, pipe.sampling.greedy(), lambda u: None)
        long.cancel()
        assert done["long"].wait(60) and done["good"].wait(60)
    finally:
        engine.close()
    assert updates["bad"][-1].finish_reason == "error" and "placeholder" in updates["bad"][-1].error
    assert updates["long"][-1].finish_reason == "cancelled" and len(updates["long"]) < 1500
    alone = [t for t, _ in pipe.stream_prepared(good, 40, pipe.sampling.greedy())]
    assert [u.token_id for u in updates["good"] if u.token_id is not None] == alone
    assert engine.stats.active == 0


def test_a_prompt_that_cannot_fit_a_slot_is_refused_at_submit(pipe):
    prepared = pipe.prepare_messages(messages(cases(34, ["color"])[0]))
    engine = Engine(pipe, EngineConfig(max_batch=1, context=len(prepared.input_ids) + 4))
    with pytest.raises(QvlError, match="exceeds the context"):
        engine.submit(prepared, 5, pipe.sampling.greedy(), lambda u: None)
    engine.submit(prepared, 4, pipe.sampling.greedy(), lambda u: None)  # exactly fits
    assert engine.kv_bytes == sum(k.nbytes + v.nbytes for k, v in zip(engine.keys, engine.values))


def test_media_placeholders_are_never_generated(pipe):
    """Near-uniform sampling over 400 tokens would pick a placeholder about twice; one generated would leave the
    next step with a placeholder and no media row, and fail the whole batch."""
    prepared = pipe.prepare_messages(messages(cases(35, ["color"])[0]))
    wild = dataclasses.replace(pipe.sampling, do_sample=True, temperature=50.0, top_k=0, top_p=1.0, eos_token_ids=())
    engine = Engine(pipe, EngineConfig(max_batch=2, context=1024)).start()
    try:
        updates = [list(engine.stream(prepared, 400, wild, seed)) for seed in (1, 2)]
    finally:
        engine.close()
    assert len(pipe.never_generated) == 4
    for run in updates:
        assert run[-1].finish_reason == "length", run[-1]
        assert not set(u.token_id for u in run) & set(pipe.never_generated.tolist())
