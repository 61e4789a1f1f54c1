"""Load on the OpenAI-compatible server: N concurrent clients, each sending an image and a question and
reading a fixed number of tokens (streamed, `ignore_eos`), for each N in --clients.

    python bench/serve_load.py EXPORT_DIR [--clients 1,4,8] [--tokens 64] [--rounds 2] [--max-batch 8]
    python bench/serve_load.py --url http://127.0.0.1:8000/v1 --model NAME ...   # any running server

Starts `qvl-compile serve EXPORT_DIR` itself unless --url is given. Per level: aggregate tokens/s (all
completion tokens / wall time of the level), aggregate decode tokens/s (tokens after each request's first,
over the same wall time), time to first token and request latency p50/p99. Prints a table; --json writes
the figures with the CPU's model and flags.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import summary as machine_summary  # bench scripts share helpers by path

QUESTION = "How many shapes are there?"


def image_url(seed: int) -> str:
    from qvl_compile.tasks.shapes import make_case

    image = make_case("count", np.random.default_rng(seed)).images[0]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def one_request(client, model: str, url: str, tokens: int) -> dict:
    started = time.perf_counter()
    first = None
    usage = None
    stream = client.chat.completions.create(
        model=model, max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": QUESTION}]}])
    for chunk in stream:
        if first is None and chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            first = time.perf_counter()
        if chunk.usage is not None:
            usage = chunk.usage
    end = time.perf_counter()
    return {"ttft": (first or end) - started, "latency": end - started, "tokens": usage.completion_tokens if usage else 0}


def run_level(base_url: str, model: str, clients: int, rounds: int, tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=3600)
    urls = [image_url(seed) for seed in range(clients)]  # a different image per client: no vision cache help

    def worker(index: int) -> list[dict]:
        return [one_request(client, model, urls[index], tokens) for _ in range(rounds)]

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(worker, range(clients)) for r in rs]
    wall = time.perf_counter() - started
    generated = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results]
    latency = [r["latency"] for r in results]
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 2), "tokens": generated,
            "tokens_per_s": round(generated / wall, 2),
            "decode_tokens_per_s": round(sum(r["tokens"] - 1 for r in results) / wall, 2),
            "ttft_p50_s": round(float(np.percentile(ttft, 50)), 3), "ttft_p99_s": round(float(np.percentile(ttft, 99)), 3),
            "latency_p50_s": round(float(np.percentile(latency, 50)), 3),
            "latency_p99_s": round(float(np.percentile(latency, 99)), 3)}


@contextlib.contextmanager
def local_server(export: Path, max_batch: int, threads: int, context: int):
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "qvl_compile.cli", "serve", str(export), "--port", str(port),
                                "--max-batch", str(max_batch), "--threads", str(threads), "--context", str(context),
                                "--model-name", "bench"])
    try:
        deadline = time.time() + 600
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if time.time() > deadline:
                raise SystemExit("the server did not come up in 600 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(30)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", nargs="?", type=Path)
    parser.add_argument("--url", help="A running OpenAI-compatible server's base URL (…/v1) instead of starting ours.")
    parser.add_argument("--model", default="bench", help="The model name to request (with --url).")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="Requests per client, one after another.")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args(argv)
    if (args.export is None) == (args.url is None):
        parser.error("expected EXPORT_DIR or --url, exactly one")
    levels = [int(c) for c in args.clients.split(",")]
    with (contextlib.nullcontext(args.url) if args.url else
          local_server(args.export, args.max_batch, args.threads, args.context)) as base_url:
        run_level(base_url, args.model, 1, 1, 4)  # warm-up: sessions, first allocations
        rows = [run_level(base_url, args.model, n, args.rounds, args.tokens) for n in levels]
    print(f"{'clients':>7} {'tokens/s':>9} {'decode/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>8} {'lat p99':>8}")
    for r in rows:
        print(f"{r['clients']:>7} {r['tokens_per_s']:>9.2f} {r['decode_tokens_per_s']:>9.2f} {r['ttft_p50_s']:>9.2f} "
              f"{r['ttft_p99_s']:>9.2f} {r['latency_p50_s']:>8.2f} {r['latency_p99_s']:>8.2f}")
    if rows[0]["clients"] == 1:
        for r in rows[1:]:
            print(f"{r['clients']} clients: {r['decode_tokens_per_s'] / rows[0]['decode_tokens_per_s']:.2f}x one client's "
                  "aggregate decode throughput")
    if args.json:
        args.json.write_text(json.dumps({"cpu": machine_summary(), "export": str(args.export or args.url),
                                         "tokens": args.tokens, "rounds": args.rounds, "levels": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
