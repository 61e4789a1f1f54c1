"""The OpenAI-compatible HTTP API (Starlette): chat completions, plain and streamed, over the batching engine.

    app = create_app(pipeline, engine, ServeOptions(model_name="qwen3-vl"))
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics. Every refusal is OpenAI's error
JSON with a 4xx status: 400 bad field, 401 missing or wrong bearer token, 404 unknown model, 413 body too large,
429 queue full (with Retry-After), 503 shutting down. A client that disconnects cancels its generation.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qvl_compile.errors import QvlError
from qvl_compile.runtime.engine import EngineBusy, Update
from qvl_compile.serve.media import MediaLimits, to_conversation
from qvl_compile.serve.metrics import ServerMetrics
from qvl_compile.serve.protocol import ApiError, ChatRequest, parse_chat_request

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 1
DISCONNECT_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class ServeOptions:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 32 * 2**20
    limits: MediaLimits = MediaLimits()


def _sampling(pipe, request: ChatRequest):
    """The checkpoint's defaults, overridden by the request; temperature 0 means greedy."""
    cfg = pipe.sampling.overridden(request.temperature, request.top_p, request.top_k, request.repetition_penalty)
    return replace(cfg, eos_token_ids=()) if request.ignore_eos else cfg


async def _read_body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes, more than the limit of {limit}", None,
                       "body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds the limit of {limit} bytes", None, "body_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers over Python's digit limit
        raise ApiError(400, f"the request body is not valid JSON ({getattr(exc, 'msg', None) or exc})") from None
    except RecursionError:
        raise ApiError(400, "the request body nests too deeply") from None


class ChatService:
    """The routes' work: admission (auth, body, fields, media, context, queue), then replies from the engine."""

    def __init__(self, pipe, engine, options: ServeOptions):
        self.pipe, self.engine, self.options = pipe, engine, options
        self.metrics = ServerMetrics(engine, engine.config.max_batch)
        engine.on_step = self.metrics.on_step
        self.created = int(time.time())

    def check_key(self, request: Request) -> None:
        if self.options.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.options.api_key.encode()):
            raise ApiError(401, "expected the header Authorization: Bearer <api key>", None, "invalid_api_key",
                           "authentication_error")

    def prepare(self, chat: ChatRequest):
        """Media decoded, template rendered, positions computed (a worker thread: it is CPU work)."""
        from qvl_compile.runtime.video import VideoProcessorConfig

        conversation = to_conversation(chat.messages, self.options.limits,
                                       lambda: VideoProcessorConfig.from_dir(self.pipe.export_dir))
        try:
            return self.pipe.prepare_messages(conversation)
        except (QvlError, ValueError) as exc:
            raise ApiError(400, str(exc), "messages") from None

    def check_queue(self) -> None:
        if self.engine.failure or self.engine.stats.waiting >= self.engine.config.max_waiting:
            busy = f"the engine stopped: {self.engine.failure}" if self.engine.failure else \
                f"{self.engine.stats.waiting} requests already wait for a slot"
            raise ApiError(503 if self.engine.failure else 429, f"the server is busy: {busy}; retry later", None,
                           "server_busy", "server_error" if self.engine.failure else "rate_limit_error",
                           {"Retry-After": str(RETRY_AFTER_SECONDS)})

    def submit(self, chat: ChatRequest, prepared, updates: asyncio.Queue):
        """The job on the engine, its updates forwarded to `updates` on this event loop."""
        prompt, context = len(prepared.input_ids), self.engine.config.context
        max_new = chat.max_tokens if chat.max_tokens is not None else context - prompt
        if prompt + max_new > context or max_new < 1:
            raise ApiError(400, f"the prompt has {prompt} tokens; with max_tokens {max_new} it exceeds the context "
                                f"of {context} tokens", "max_tokens", "context_length_exceeded")
        sampling = _sampling(self.pipe, chat)
        try:
            sampling.validate()
        except QvlError as exc:
            raise ApiError(400, str(exc)) from None
        loop = asyncio.get_running_loop()

        def emit(update: Update) -> None:  # engine thread
            if update.finish_reason is not None:  # counted here: a dropped stream's handler is gone
                self.metrics.on_finished(update.finish_reason, update.prompt_tokens, update.completion_tokens)
            loop.call_soon_threadsafe(updates.put_nowait, update)

        seed = None if chat.seed is None else chat.seed % 2**64
        try:
            return self.engine.submit(prepared, max_new, sampling, emit, seed, chat.stop)
        except EngineBusy as exc:
            status = 503 if "shutting down" in str(exc) else 429
            raise ApiError(status, f"the server is busy: {exc}; retry later", None, "server_busy",
                           "server_error" if status == 503 else "rate_limit_error",
                           {"Retry-After": str(RETRY_AFTER_SECONDS)}) from None

    async def chat_completions(self, request: Request) -> Response:
        arrived = time.perf_counter()
        updates: asyncio.Queue[Update] = asyncio.Queue()
        try:
            self.check_key(request)
            chat = parse_chat_request(await _read_body(request, self.options.max_body_bytes), self.options.model_name)
            self.check_queue()  # before the media are decoded: a full queue costs no preprocessing
            prepared = await run_in_threadpool(self.prepare, chat)
            if await request.is_disconnected():
                return Response(status_code=499)  # gone while its media were decoded: nothing submitted
            job = self.submit(chat, prepared, updates)
        except ApiError as exc:
            self.metrics.requests.labels(str(exc.status)).inc()
            return JSONResponse(exc.body(), exc.status, headers=exc.headers)
        except ClientDisconnect:
            return Response(status_code=499)  # the client left while sending its body
        reply = Reply(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.options.model_name, arrived, self.metrics)
        if chat.stream:
            self.metrics.requests.labels("200").inc()
            # The background task cancels the job even if the stream is cancelled before its first chunk.
            return StreamingResponse(_events(updates, job, reply, chat.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"}, background=BackgroundTask(job.cancel))
        return await self.whole_reply(request, updates, job, reply)

    async def whole_reply(self, request: Request, updates: asyncio.Queue, job, reply: "Reply") -> Response:
        text, last, checked = "", None, time.perf_counter()
        try:
            while last is None or last.finish_reason is None:
                with contextlib.suppress(asyncio.TimeoutError):
                    last = await asyncio.wait_for(updates.get(), timeout=DISCONNECT_CHECK_SECONDS)
                    reply.note(last)
                    text += last.text
                if time.perf_counter() - checked >= DISCONNECT_CHECK_SECONDS:  # on a clock, tokens or not
                    checked = time.perf_counter()
                    if await request.is_disconnected():
                        return Response(status_code=499)  # nobody reads it; `finally` frees the slot
        finally:
            job.cancel()  # a no-op once finished
        if last.finish_reason in ("error", "cancelled"):
            self.metrics.requests.labels("503").inc()
            return JSONResponse(_failure(last).body(), 503)
        self.metrics.requests.labels("200").inc()
        return JSONResponse({
            "id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": last.finish_reason, "logprobs": None}],
            "usage": _usage(last),
        })

    async def models(self, request: Request) -> Response:
        try:
            self.check_key(request)
        except ApiError as exc:
            return JSONResponse(exc.body(), exc.status)
        return JSONResponse({"object": "list", "data": [{"id": self.options.model_name, "object": "model",
                                                         "created": self.created, "owned_by": "qvl-compile"}]})

    async def health(self, request: Request) -> Response:
        stats = self.engine.stats
        if self.engine.failure:
            return JSONResponse({"status": "failed", "error": self.engine.failure}, 503)
        return JSONResponse({"status": "ok", "active": stats.active, "waiting": stats.waiting})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


@dataclass
class Reply:
    """One reply's identity and timing (time to first token and latency go to the metrics)."""
    id: str
    created: int
    model: str
    arrived: float
    metrics: ServerMetrics
    first: float | None = None

    def note(self, update: Update) -> None:
        if self.first is None and update.token_id is not None:
            self.first = time.perf_counter()
            self.metrics.first_token.observe(self.first - self.arrived)
        if update.finish_reason is not None:
            self.metrics.latency.observe(time.perf_counter() - self.arrived)


def _failure(update: Update) -> ApiError:
    return ApiError(503, f"generation failed: {update.error}", None, "generation_failed", "server_error")


def create_app(pipe, engine, options: ServeOptions) -> Starlette:
    service = ChatService(pipe, engine, options)

    async def not_found(request: Request, exc) -> Response:
        status = getattr(exc, "status_code", 404)
        return JSONResponse(ApiError(status, f"{request.method} {request.url.path}: no such route or method",
                                     None, "not_found").body(), status)

    async def internal(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}", None, None, "server_error").body(),
                            500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()  # pending jobs end as cancelled; their handlers answer 503

    routes = [Route("/v1/chat/completions", service.chat_completions, methods=["POST"]),
              Route("/v1/models", service.models, methods=["GET"]),
              Route("/health", service.health, methods=["GET"]),
              Route("/metrics", service.metrics_text, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: internal},
                     lifespan=lifespan)


def _usage(update: Update) -> dict:
    return {"prompt_tokens": update.prompt_tokens, "completion_tokens": update.completion_tokens,
            "total_tokens": update.prompt_tokens + update.completion_tokens}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _events(updates: asyncio.Queue, job, reply: Reply, include_usage: bool):
    """Server-sent events as OpenAI streams them: a role chunk, content chunks, a finish chunk, usage, [DONE]."""

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {"id": reply.id, "object": "chat.completion.chunk", "created": reply.created, "model": reply.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    try:
        yield _sse(chunk({"role": "assistant", "content": ""}))
        while True:
            update = await updates.get()
            reply.note(update)
            if update.text:
                yield _sse(chunk({"content": update.text}))
            if update.finish_reason is None:
                continue
            if update.finish_reason in ("error", "cancelled"):
                yield _sse(_failure(update).body())
            else:
                yield _sse(chunk({}, update.finish_reason))
                if include_usage:
                    yield _sse({**chunk({}), "choices": [], "usage": _usage(update)})
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancel()  # the client went away, or the reply is complete (then a no-op)
