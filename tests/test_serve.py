"""`qvl-compile serve` as a live process, driven by the official `openai` client and raw HTTP.

Torch-free (CI's torch-free stage installs the serve extra). Greedy replies are compared with the runtime's
own single-request pipeline on the same conversation, computed in this process; the suite's images give
replies that are not one repeated token.
"""
import base64
import contextlib
import io
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch_free

if os.environ.get("QVL_TORCH_FREE_STAGE") != "1":  # elsewhere the serve extra is optional
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai") if os.environ.get("QVL_TORCH_FREE_STAGE") != "1" else __import__("openai")
import httpx  # noqa: E402 - after the optional-dependency checks above

from qvl_compile.tasks.shapes import make_case  # noqa: E402

MODEL = "tiny-fp32"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def server(export: Path, *args: str, env: dict | None = None):
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"qvl-serve-{port}.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "qvl_compile.cli", "serve", str(export), "--port", str(port),
                                "--model-name", MODEL, "--threads", "1", *args], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            assert process.poll() is None, Path(log.name).read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            assert time.time() < deadline, "the server did not come up in 60 s"
            time.sleep(0.2)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def export(golden_exports):
    return golden_exports["fp32"]


@pytest.fixture(scope="module")
def live(export):
    with server(export, "--max-batch", "4", "--max-waiting", "16") as (base, process):
        yield base, process


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=f"{live[0]}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def pipe(export):
    from qvl_compile.runtime.pipeline import Pipeline

    return Pipeline(export, intra_op_threads=1)


def png_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def video_url(frames) -> str:
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream("ffv1", rate=2)  # lossless: the server decodes the frames we compare with
        stream.width, stream.height, stream.pix_fmt = frames[0].width, frames[0].height, "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:video/x-matroska;base64," + base64.b64encode(buffer.getvalue()).decode()


def suite_cases(seed: int, tasks):
    rng = np.random.default_rng(seed)
    return [make_case(task, rng) for task in tasks]


def api_messages(case) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": png_url(image)}} for image in case.images]
    if case.video is not None:
        parts.append({"type": "video_url", "video_url": {"url": video_url(list(case.video))}})
    return [{"role": "user", "content": [*parts, {"type": "text", "text": case.prompt}]}]


def runtime_messages(case) -> list[dict]:
    from qvl_compile.runtime.video import Video

    parts = [{"type": "image", "image": image} for image in case.images]
    if case.video is not None:
        parts.append({"type": "video", "video": Video.from_images(list(case.video))})
    return [{"role": "user", "content": [*parts, {"type": "text", "text": case.prompt}]}]


def greedy_alone(pipe, messages, max_tokens=40) -> str:
    return list(pipe.stream_messages(messages, max_tokens, greedy=True))[-1][1]


def test_models_health_and_a_plain_reply_equal_to_the_pipeline(client, pipe, live):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert httpx.get(f"{live[0]}/health").json()["status"] == "ok"
    case = suite_cases(11, ["count"])[0]
    reply = client.chat.completions.create(model=MODEL, messages=api_messages(case), temperature=0, max_tokens=40)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == greedy_alone(pipe, runtime_messages(case))
    prompt = len(pipe.prepare_messages(runtime_messages(case)).input_ids)
    assert reply.usage.prompt_tokens == prompt and reply.usage.total_tokens == prompt + reply.usage.completion_tokens


def test_streamed_reply_equals_the_plain_one_and_reports_usage(client):
    case = suite_cases(12, ["ground"])[0]
    plain = client.chat.completions.create(model=MODEL, messages=api_messages(case), temperature=0, max_tokens=40)
    chunks = list(client.chat.completions.create(model=MODEL, messages=api_messages(case), temperature=0,
                                                 max_tokens=40, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and len(text) > 10  # a box list, many tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_multi_turn_with_two_images_a_video_and_a_system_prompt(client, pipe):
    two, motion = suite_cases(13, ["two_images", "motion"])
    api = [{"role": "system", "content": "Answer in one word."},
           *api_messages(two), {"role": "assistant", "content": "first"}, *api_messages(motion)]
    local = [{"role": "system", "content": "Answer in one word."},
             *runtime_messages(two), {"role": "assistant", "content": "first"}, *runtime_messages(motion)]
    reply = client.chat.completions.create(model=MODEL, messages=api, temperature=0, max_tokens=24)
    assert reply.choices[0].message.content == greedy_alone(pipe, local, 24)
    prepared = pipe.prepare_messages(local)
    assert reply.usage.prompt_tokens == len(prepared.input_ids) and len(prepared.grid_thw) == 3


def test_generate_cli_and_server_agree_on_a_system_prompt(client, export, tmp_path):
    case = suite_cases(14, ["shape"])[0]
    image = tmp_path / "shape.png"
    case.images[0].save(image)
    result = subprocess.run([sys.executable, "-m", "qvl_compile.cli", "generate", str(export), "--prompt", case.prompt,
                             "--image", str(image), "--system", "Be exact.", "--greedy", "--json",
                             "--max-new-tokens", "16"], capture_output=True, text=True, check=True)
    reply = client.chat.completions.create(model=MODEL, max_tokens=16, temperature=0,
                                           messages=[{"role": "system", "content": "Be exact."}, *api_messages(case)])
    assert reply.choices[0].message.content == json.loads(result.stdout)["text"]


def test_eight_concurrent_clients_get_the_replies_of_eight_sequential_requests(client):
    cases = suite_cases(15, ["color", "shape", "count", "ground", "two_images", "motion", "ground", "count"])
    bodies = [api_messages(case) for case in cases]

    def ask(messages):
        return client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40
                                              ).choices[0].message.content

    sequential = [ask(messages) for messages in bodies]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(ask, bodies))
    assert concurrent == sequential
    assert len(set(sequential)) > 2  # different questions, different answers


def test_seeded_sampling_repeats_and_stop_strings_cut(client):
    case = suite_cases(16, ["ground"])[0]

    def ask(**options):
        return client.chat.completions.create(model=MODEL, messages=api_messages(case), **options).choices[0]

    sampled = [ask(temperature=1.5, max_tokens=24, seed=7, extra_body={"top_k": 50}).message.content for _ in range(2)]
    assert sampled[0] == sampled[1]
    full = ask(temperature=0, max_tokens=40).message.content
    assert '"label"' in full, full
    cut = ask(temperature=0, max_tokens=40, stop=['"label"'])
    assert cut.message.content == full[:full.index('"label"')] and cut.finish_reason == "stop"


def test_a_client_dropped_mid_stream_frees_its_slot(live):
    base, _ = live
    case = suite_cases(17, ["color"])[0]
    body = {"model": MODEL, "messages": api_messages(case), "stream": True, "max_tokens": 3000,
            "temperature": 1.0, "seed": 1, "ignore_eos": True, "repetition_penalty": 10.0}  # text until dropped
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(12):
            next(lines)
        assert httpx.get(f"{base}/health").json()["active"] >= 1
    deadline = time.time() + 20
    while httpx.get(f"{base}/health").json()["active"] != 0:
        assert time.time() < deadline, "the dropped stream still holds its slot after 20 s"
        time.sleep(0.1)
    metrics = httpx.get(f"{base}/metrics").text
    assert 'qvl_requests_finished_total{reason="cancelled"}' in metrics


def test_metrics_count_requests_tokens_and_batches(live, client):
    client.chat.completions.create(model=MODEL, messages=api_messages(suite_cases(18, ["color"])[0]), temperature=0)
    text = httpx.get(f"{live[0]}/metrics").text
    for name in ("qvl_requests_total", "qvl_generated_tokens_total", "qvl_queue_depth", "qvl_decode_batch_size_bucket",
                 "qvl_request_latency_seconds_bucket", "qvl_time_to_first_token_seconds_bucket",
                 "qvl_vision_cache_lookups_total", "qvl_kv_pool_bytes"):
        assert name in text, name
    hits = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith('qvl_vision_cache_lookups_total{result="hit"}')))
    assert hits >= 1  # the same image was asked about in earlier tests (sequential, then concurrent)


@pytest.mark.parametrize("body, status, fragment", [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.org/a.png"}}]}]},
     400, "remote media URLs are not fetched"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "/etc/hostname"}}]}]},
     400, "without --media-dir"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     400, "not valid base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://["}}]}]},
     400, "not a valid URL"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6}, 400, "exceeds the context"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n: not supported"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature: expected a number"),
    ({"messages": []}, 400, "messages: expected a non-empty list"),
    ({"messages": [{"role": "user", "content": "<|image_pad|>"}]}, 400, "reserved token"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "other"}, 404, "see /v1/models"),
])
def test_bad_requests_get_openai_errors(live, body, status, fragment):
    response = httpx.post(f"{live[0]}/v1/chat/completions", json={"model": MODEL, **body} if "model" not in body else body,
                          timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["type"], error


def test_oversized_body_is_413(live):
    response = httpx.post(f"{live[0]}/v1/chat/completions", content=b"x" * (33 * 2**20), timeout=60)
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]


def _mutations(rng: random.Random, valid: dict) -> dict:
    junk = [None, True, -1, 0, 1.5e308, float("nan"), "", "x" * 50, [], {}, [1, "a"], {"a": [None]},
            "data:image/png;base64,AAAA", {"url": 5}, [{"type": "image_url"}], [{"type": "text"}], 2**70]
    body = json.loads(json.dumps(valid))
    for _ in range(rng.randint(1, 4)):
        where = rng.choice(["top", "message", "part", "image"])
        if where == "top":
            body[rng.choice(["messages", "temperature", "top_p", "top_k", "max_tokens", "stop", "stream",
                             "stream_options", "seed", "n", "repetition_penalty", "model", "logprobs",
                             "max_completion_tokens", "response_format"])] = rng.choice(junk)
        elif where == "message" and isinstance(body.get("messages"), list) and body["messages"]:
            body["messages"][0][rng.choice(["role", "content"])] = rng.choice(junk + ["tool", "assistant"])
        elif where == "part":
            with contextlib.suppress(Exception):
                body["messages"][0]["content"][rng.randrange(2)][rng.choice(["type", "text", "image_url"])] = \
                    rng.choice(junk + ["video_url", "image_url", "text"])
        else:
            with contextlib.suppress(Exception):
                body["messages"][0]["content"][0]["image_url"]["url"] = rng.choice(
                    ["data:image/png;base64," + base64.b64encode(bytes(rng.randrange(256) for _ in range(40))).decode(),
                     "data:,", "data:image/png;base64,", "file:///etc/passwd", "ftp://x", "../../etc/passwd"])
    return body


def test_seeded_fuzz_of_request_bodies_never_gets_a_500(live):
    base, process = live
    small = make_case("color", np.random.default_rng(3)).images[0].resize((64, 64))
    valid = {"model": MODEL, "max_tokens": 4, "temperature": 0,
             "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": png_url(small)}},
                                                       {"type": "text", "text": "What color is the shape?"}]}]}
    rng = random.Random(20261203)
    statuses = []
    raw = [b"", b"{", b"[]", b"null", b'"text"', b"\xff\xfe", b'{"messages": [{"role": "user", "content": "hi"}]' * 3,
           b"[" * 100_000 + b"]" * 100_000, b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"7" * 5000 + b"}"]
    with httpx.Client(timeout=60) as http:
        for body in raw:
            statuses.append(http.post(f"{base}/v1/chat/completions", content=body).status_code)
        for _ in range(150):
            body = _mutations(rng, valid)
            response = http.post(f"{base}/v1/chat/completions", content=json.dumps(body, allow_nan=True))
            statuses.append(response.status_code)
            assert response.status_code < 500, (body, response.text)
            if response.status_code >= 400:
                assert "message" in response.json()["error"]
    assert all(s < 500 for s in statuses), statuses
    assert {200, 400} <= set(statuses)  # the fuzz reached both sides
    assert process.poll() is None and httpx.get(f"{base}/health").status_code == 200


def test_full_queue_is_429_with_retry_after_and_the_api_key_is_required(export):
    case = suite_cases(19, ["color"])[0]
    long = {"model": MODEL, "messages": api_messages(case), "max_tokens": 3000, "temperature": 1.0, "ignore_eos": True,
            "repetition_penalty": 10.0, "stream": True}
    key = {"Authorization": "Bearer sesame"}
    with server(export, "--max-batch", "1", "--max-waiting", "1", "--api-key", "sesame") as (base, _):
        assert httpx.get(f"{base}/v1/models").status_code == 401
        assert httpx.post(f"{base}/v1/chat/completions", json=long, headers={"Authorization": "Bearer nope"}
                          ).status_code == 401
        assert httpx.get(f"{base}/v1/models", headers=key).status_code == 200
        stop = threading.Event()

        def hold():  # a long stream that holds the only slot until told to let go
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=long, headers=key, timeout=120) as response:
                for _ in response.iter_lines():
                    if stop.is_set():
                        return

        holders = [threading.Thread(target=hold) for _ in range(2)]
        holders[0].start()
        deadline = time.time() + 30
        while httpx.get(f"{base}/health").json()["active"] < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        holders[1].start()  # waits in the queue
        while httpx.get(f"{base}/health").json()["waiting"] < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        refused = httpx.post(f"{base}/v1/chat/completions", json={**long, "stream": False}, headers=key, timeout=30)
        stop.set()
        for holder in holders:
            holder.join(60)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "server_busy"


def test_local_files_only_under_the_media_dir(export, tmp_path):
    case = suite_cases(20, ["color"])[0]
    media = tmp_path / "media"
    media.mkdir()
    case.images[0].save(media / "shape.png")
    (tmp_path / "outside.png").write_bytes((media / "shape.png").read_bytes())
    with server(export, "--media-dir", str(media)) as (base, _):
        def ask(url):
            return httpx.post(f"{base}/v1/chat/completions", timeout=60, json={
                "model": MODEL, "temperature": 0, "max_tokens": 4, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": case.prompt}]}]})
        assert ask("shape.png").status_code == 200
        assert ask(f"file://{media / 'shape.png'}").status_code == 200
        for outside in ("../outside.png", str(tmp_path / "outside.png"), f"file://{tmp_path / 'outside.png'}"):
            response = ask(outside)
            assert response.status_code == 400 and "under the media directory" in response.json()["error"]["message"]


def test_a_mixture_of_experts_export_serves_the_replies_of_its_pipeline(moe_golden_exports):
    """The tiny Qwen3-VL-MoE export behind the same server: nothing in serve or the runtime knows it is MoE."""
    from qvl_compile.runtime.pipeline import Pipeline

    export = moe_golden_exports["fp32"]
    cases = suite_cases(12, ["count", "color"])
    with server(export) as (base, _):
        moe_client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
        replies = [moe_client.chat.completions.create(model=MODEL, messages=api_messages(case), temperature=0,
                                                      max_tokens=16).choices[0].message.content for case in cases]
    moe_pipe = Pipeline(export, intra_op_threads=1)
    assert replies == [greedy_alone(moe_pipe, runtime_messages(case), 16) for case in cases]
