"""Ray: `qvl-compile batch --ray` (Ray Data actors) and `qvl-compile serve --ray` (Ray Serve replicas), each
with a worker killed mid-run, on a Ray head each test starts and stops (2 CPUs, no dashboard). Clients reach it on
127.0.0.1; Ray itself binds its ports on every interface (it resolves loopback to the node's address), so the head
requires a token made for the test.

Torch-free; needs the ray extra (CI's ray stage). Elsewhere it is skipped when Ray is not installed.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from batch_cases import check_exactly_once, generate_replies, kill_one_mid_run, pids_matching, wait_for, write_batch_input
from test_serve import free_port

pytestmark = pytest.mark.torch_free

if os.environ.get("QVL_RAY_STAGE") != "1":  # CI's ray stage must not skip
    pytest.importorskip("ray")
openai = pytest.importorskip("openai")

BATCH_ACTOR = "ray::MapWorker(MapBatches(CaseActor))"
SERVE_REPLICA = "ray::ServeReplica:qvl-compile:ChatReplica"
RAY_UP_SECONDS = 90


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ray_env():
    """A Ray head on 127.0.0.1 in its own session; -> the environment that points `qvl-compile` at it."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="qvl-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    log = open(Path(temp) / "head.log", "w")
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
                             "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        wait_for(lambda: listening(port) or head.poll() is not None, RAY_UP_SECONDS, "the Ray head", poll=0.2)
        assert head.poll() is None, (Path(temp) / "head.log").read_text()
        yield env
    finally:
        _stop_ray(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _stop_ray(head: subprocess.Popen) -> None:
    """The head's whole process group (raylet, GCS, workers), politely and then not. `ray start --block` did not
    exit within 30 s of SIGTERM in any test (30.0 s of teardown each in pytest's --durations), so it gets 5."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(5)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait(10)


@pytest.fixture(scope="module")
def export(golden_exports):
    return golden_exports["fp32"]


def test_batch_on_ray_data_with_an_actor_killed_mid_run(export, ray_env, tmp_path):
    batch_input = write_batch_input(tmp_path / "cases")
    expected = generate_replies(export, batch_input)
    output = tmp_path / "out.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "qvl_compile.cli", "batch", str(export), str(batch_input),
                                str(output), "--ray", "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ray_env)
    try:
        actors = wait_for(lambda: len(found := pids_matching(BATCH_ACTOR)) == 2 and found or process.poll() is not None,
                          120, "two Ray actors", poll=0.05)
        assert process.poll() is None, process.communicate()[1]
        wait_for(lambda: output.exists() and output.read_text().count("\n") >= 2, 120, "the first results")
        victim = kill_one_mid_run(actors)
        written_before_the_kill = output.read_text().count("\n")
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, err
    results = check_exactly_once(output, batch_input, expected)
    assert written_before_the_kill < len(results) - 10, "the kill came too late to test anything"
    assert "Ray at 127.0.0.1:" in err and victim not in pids_matching(BATCH_ACTOR)
    before = output.read_bytes()
    again = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "batch", str(export), str(batch_input),
                            str(output), "--ray"], capture_output=True, text=True, env=ray_env, timeout=120)
    assert again.returncode == 0, again.stderr  # all done: nothing to run, Ray not even joined
    assert f"{len(results)} of {len(results)} cases already" in again.stderr and output.read_bytes() == before


def test_an_actor_on_a_changed_export_stops_the_batch_with_one_line(export, ray_env, tmp_path):
    """The driver checks sizes; each actor checks sha256 on its own node, as a stale copy on one node would fail."""
    changed = tmp_path / "export"
    shutil.copytree(export, changed)
    data = bytearray((changed / "decoder.onnx").read_bytes())
    data[-10] ^= 1  # same size, other bytes
    (changed / "decoder.onnx").write_bytes(bytes(data))
    batch_input = write_batch_input(tmp_path / "cases", per_task=1)
    run = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "batch", str(changed), str(batch_input),
                          str(tmp_path / "out.jsonl"), "--ray"], capture_output=True, text=True, env=ray_env,
                         timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (f"error: a Ray actor could not load the export: {changed}/decoder.onnx: "
                                                   "sha256 differs from manifest.json (file changed after export)")
    assert (tmp_path / "out.jsonl").read_text() == ""


def _greedy_to_length(pipe, case, max_tokens: int) -> str:
    """What the server must answer for a request with temperature 0, ignore_eos and max_tokens."""
    from test_serve import runtime_messages

    sampling = replace(pipe.sampling.greedy(), eos_token_ids=())
    prepared = pipe.prepare_messages(runtime_messages(case))
    return list(pipe.stream_prepared(prepared, max_tokens, sampling))[-1][1]


def test_serve_on_ray_replaces_a_killed_replica_and_loses_no_request(export, ray_env):
    from test_serve import api_messages

    from qvl_compile.runtime.pipeline import Pipeline
    from qvl_compile.tasks.shapes import make_case

    rng = np.random.default_rng(23)
    cases = [make_case(task, rng) for task in ("color", "shape", "count", "ground") for _ in range(6)]
    pipe = Pipeline(export, intra_op_threads=1)
    expected = [_greedy_to_length(pipe, case, 48) for case in cases]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "qvl_compile.cli", "serve", str(export), "--ray", "--replicas",
                               "2", "--threads", "1", "--port", str(port), "--max-batch", "4", "--model-name", "tiny"],
                              env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    failures = []

    def note(response: httpx.Response) -> None:
        if response.status_code >= 500:
            failures.append(response.status_code)

    try:
        wait_for(lambda: _healthy(port) or server.poll() is not None, 180, "two ready replicas", poll=0.5)
        assert server.poll() is None, server.stderr.read()
        replicas = pids_matching(SERVE_REPLICA)
        assert len(replicas) == 2, replicas
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=4, timeout=120,
                               http_client=httpx.Client(event_hooks={"response": [note]}, timeout=120))

        def ask(case) -> str:
            reply = client.chat.completions.create(model="tiny", messages=api_messages(case), max_tokens=48,
                                                   temperature=0, extra_body={"ignore_eos": True})
            return reply.choices[0].message.content

        stream = client.chat.completions.create(model="tiny", messages=api_messages(cases[0]), max_tokens=48,
                                                temperature=0, extra_body={"ignore_eos": True}, stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == expected[0]
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = [pool.submit(ask, case) for case in cases]
            wait_for(lambda: sum(f.done() for f in futures) >= 2, 120, "the first replies", poll=0.02)
            victim = kill_one_mid_run(replicas)
            replies = [f.result(timeout=300) for f in futures]
        assert replies == expected
        assert failures, "no request was in flight on the killed replica"
        wait_for(lambda: len(now := pids_matching(SERVE_REPLICA)) == 2 and victim not in now, 120,
                 "a replacement replica", poll=0.5)
        wait_for(lambda: _healthy(port), 120, "the replacement serving", poll=0.5)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def _healthy(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    return False
