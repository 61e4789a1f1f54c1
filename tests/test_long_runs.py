"""Concurrency and long runs on one loaded Pipeline (torch-free).

* threads sharing a Pipeline get exactly the tokens each call gets alone;
* two streams open at once in one thread interleave without blocking each other;
* 3 rounds of 2,000 generated tokens: resident memory grows by at most the KV cache within the first
  round and not at all afterwards (bench/memory_growth.py, in its own process).
"""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qvl_compile.runtime.pipeline import Pipeline
from qvl_compile.runtime.sampling import SamplingConfig

pytestmark = pytest.mark.torch_free
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "runtime" / "samples" / "red-house.png"
PENALTY = SamplingConfig(do_sample=True, temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=8.0)
JOBS = [  # (prompt, images, sampling, seed)
    ("Describe the picture.", [SAMPLE], None, None),
    ("Write a poem about rain.", [], PENALTY, 3),
    ("Count the windows.", [SAMPLE], PENALTY, 7),
    ("List five colours.", [], PENALTY, 11),
]


@pytest.fixture(scope="module")
def pipe(golden_exports):
    return Pipeline(golden_exports["fp32"])


def run_job(pipe, job):
    prompt, images, sampling, seed = job
    return pipe.generate(prompt, images=images, max_new_tokens=24, greedy=sampling is None, seed=seed,
                         sampling=sampling).token_ids


def test_threads_sharing_a_pipeline_get_the_tokens_of_a_lone_call(pipe):
    alone = [run_job(pipe, job) for job in JOBS]
    assert len({tuple(ids) for ids in alone}) == len(JOBS)  # the jobs really differ
    with ThreadPoolExecutor(max_workers=len(JOBS)) as pool:
        for _ in range(3):
            together = list(pool.map(lambda job: run_job(pipe, job), JOBS))
            assert together == alone


def test_two_open_streams_in_one_thread_interleave(pipe):
    alone = [run_job(pipe, job) for job in JOBS[1:3]]
    streams = [pipe.stream(prompt, images=images, max_new_tokens=24, seed=seed, sampling=sampling)
               for prompt, images, sampling, seed in JOBS[1:3]]
    got = [[], []]
    for pair in zip(*streams):  # one token of each in turn
        for out, (token, _) in zip(got, pair):
            out.append(token)
    assert got == alone


@pytest.mark.slow  # RSS depends on the machine's allocator; bench/memory_growth.py measures it
@pytest.mark.parametrize("tokens", [2000])
def test_memory_stays_flat_over_long_generations(golden_exports, tokens):
    script = ROOT / "bench" / "memory_growth.py"
    result = subprocess.run([sys.executable, str(script), str(golden_exports["fp32"]), "--tokens", str(tokens),
                             "--every", "200", "--rounds", "3", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    samples = {(r, n): rss for r, n, rss in report["samples"]}
    slack = 4 * 2**20  # allocator and Python noise
    first_round_growth = samples[(0, tokens)] - samples[(0, 200)]
    assert first_round_growth <= report["kv_cache_bytes"] + slack, (first_round_growth, report["kv_cache_bytes"])
    later = [rss for (r, _), rss in samples.items() if r > 0]
    assert max(later) - samples[(0, tokens)] <= slack, report["samples"]
