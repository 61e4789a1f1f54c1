"""The Chat Completions request body, checked field by field into a `ChatRequest`, and OpenAI-style errors.

Every refusal is an `ApiError` (status, message naming the field, what was expected and what came), which the
app turns into `{"error": {"message", "type", "param", "code"}}`. Fields OpenAI defines that change the
reply and that we do not implement (n > 1, logprobs, tools, penalties other than repetition) are refused
rather than ignored; purely informational ones (user, metadata, store) are accepted and ignored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from qvl_compile.errors import QvlError
from qvl_compile.runtime.stopping import check_stop_strings


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]  # OpenAI's, media still as URLs (serve/media.py resolves them)
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    repetition_penalty: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens (benchmarks, load tests)


IGNORED = {"model", "messages", "user", "metadata", "store", "service_tier", "parallel_tool_calls"}
UNSUPPORTED_IF_SET = {  # field: the value that means "off"
    "n": 1, "logprobs": False, "top_logprobs": None, "tools": None, "tool_choice": None, "functions": None,
    "function_call": None, "frequency_penalty": 0, "presence_penalty": 0, "logit_bias": None, "audio": None,
    "modalities": None, "prediction": None, "reasoning_effort": None,
}


def _number(body: dict, name: str, low: float, high: float, integer: bool = False, low_open: bool = False):
    value = body.get(name)
    if value is None:
        return None
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (not integer and not math.isfinite(value)):
        raise ApiError(400, f"{name}: expected {'an integer' if integer else 'a number'}, got {value!r}", name)
    if value < low or value > high or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ApiError(400, f"{name}: expected a value in {bounds}, got {value!r}", name)
    return value


def parse_chat_request(body, model_name: str) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body: expected a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None and model != model_name:
        raise ApiError(404, f"model: expected {model_name!r} (see /v1/models), got {model!r}", "model",
                       "model_not_found")
    for name, off in UNSUPPORTED_IF_SET.items():
        if name in body and body[name] is not None and body[name] != off:
            raise ApiError(400, f"{name}: not supported by this server (expected {off!r} or absent), "
                                f"got {body[name]!r}", name, "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise ApiError(400, f"response_format: only {{'type': 'text'}} is supported, got {fmt!r}", "response_format",
                       "unsupported_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, f"messages: expected a non-empty list, got {type(messages).__name__}", "messages")
    max_tokens = _number(body, "max_completion_tokens", 1, 2**31, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", 1, 2**31, integer=True)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"stream: expected true or false, got {stream!r}", "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise ApiError(400, f"stream_options: expected an object, got {options!r}", "stream_options")
    include_usage = (options or {}).get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise ApiError(400, f"stream_options.include_usage: expected true or false, got {include_usage!r}",
                       "stream_options")
    try:
        stop = check_stop_strings(body.get("stop"))
    except QvlError as exc:
        raise ApiError(400, str(exc), "stop") from None
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise ApiError(400, f"ignore_eos: expected true or false, got {ignore_eos!r}", "ignore_eos")
    return ChatRequest(
        messages=messages,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, low_open=True),
        top_k=_number(body, "top_k", -1, 2**31, integer=True),
        repetition_penalty=_number(body, "repetition_penalty", 0.0, 10.0, low_open=True),
        seed=_number(body, "seed", -(2**63), 2**63 - 1, integer=True),
        stop=stop,
        stream=bool(stream),
        include_usage=include_usage,
        ignore_eos=ignore_eos,
    )
