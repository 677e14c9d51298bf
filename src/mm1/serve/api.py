"""OpenAI-compatible HTTP API (`POST /v1/chat/completions`, `GET /v1/models`), `/health` and the web page at `/`.

Every refused request gets a 4xx answer in OpenAI's error shape `{"error": {"message", "type", "param", "code"}}`,
and is refused before it reaches the model, so a bad request cannot disturb others.  Generation happens in the
`Batcher`'s thread; the event loop only parses, validates and streams.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import time
import urllib.request
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import anyio
from fastapi import Depends, FastAPI, Header
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from mm1.data.image import ImageError, load_image
from mm1.data.processor import Encoded
from mm1.serve.batching import Batcher, Job

IMAGE_TYPES = {"image/png", "image/jpeg", "image/jpg", "image/gif", "image/webp", "image/bmp"}


@dataclass
class Limits:
    max_body_bytes: int = 20 * 2**20
    max_images: int = 8  # per request, over all messages
    max_pixels: int | None = None  # per image; None: the model's image.max_pixels
    local_images: Path | None = None  # folder that image_url file paths may point into; None: file paths refused
    allow_remote_images: bool = False  # http(s) image URLs make the server fetch whatever a client names


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# ---- request schema (strict: "5" is not a number, so wrong types are refused rather than guessed) -------------------
class _Schema(BaseModel):
    model_config = ConfigDict(strict=True)


class ImageURL(_Schema):
    url: str
    detail: str | None = None  # accepted for compatibility; every image is processed the same way


class TextPart(_Schema):
    type: Literal["text"]
    text: str


class ImagePart(_Schema):
    type: Literal["image_url"]
    image_url: ImageURL


class Message(_Schema):
    role: Literal["system", "user", "assistant"]
    content: str | list[Annotated[TextPart | ImagePart, Field(discriminator="type")]]


class ChatRequest(_Schema):
    model: str
    messages: list[Message]
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    temperature: float | None = Field(None, ge=0, le=2)  # None: the model's generation config
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False


# ---- images ----------------------------------------------------------------------------------------------------------
def image_source(url: str, limits: Limits, param: str) -> bytes | Path:
    """The bytes (or local path) an image_url names, after the server's rules on where images may come from."""
    if url.startswith("data:"):
        header, comma, payload = url.partition(",")
        if not comma or not header.endswith(";base64"):
            raise APIError(400, "image_url must be a base64 data URL (data:image/png;base64,...)", "invalid_image",
                           param)
        mime = header[len("data:"):].split(";")[0].lower()
        if mime not in IMAGE_TYPES:
            raise APIError(400, f"unsupported image type {mime!r}; use one of {', '.join(sorted(IMAGE_TYPES))}",
                           "unsupported_image_type", param)
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise APIError(400, "image_url data is not valid base64", "invalid_image", param) from None
    if url.startswith(("http://", "https://")):
        if not limits.allow_remote_images:
            raise APIError(400, "remote image URLs are disabled on this server (--allow-remote-images); "
                                "send the image as a base64 data URL", "image_url_not_allowed", param)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                data = response.read(limits.max_body_bytes + 1)
        except OSError as err:  # urllib's errors, timeouts included
            raise APIError(400, f"cannot fetch {url}: {err}", "invalid_image", param) from None
        if len(data) > limits.max_body_bytes:
            raise APIError(400, f"the image at {url} is over {limits.max_body_bytes} bytes", "invalid_image", param)
        return data
    if limits.local_images is None:
        raise APIError(400, "local image paths are disabled on this server (--local-images DIR); "
                            "send the image as a base64 data URL", "image_url_not_allowed", param)
    path = Path(url.removeprefix("file://")).resolve()
    if not path.is_relative_to(limits.local_images.resolve()):
        raise APIError(400, f"{url} is outside the folder this server reads images from", "image_url_not_allowed",
                       param)
    return path


# ---- the app -------------------------------------------------------------------------------------------------------
def error(status: int, message: str, code: str | None = None, param: str | None = None,
          type: str = "invalid_request_error") -> JSONResponse:
    return APIError(status, message, code, param, type).response()


class BodyLimit:
    """Refuses request bodies over `limit` bytes: by Content-Length up front, or while a chunked body streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"request body is over the limit of {self.limit} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.limit:
            return await error(413, message, "request_too_large")(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            event = await receive()
            received += len(event.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, message)
            return event

        await self.app(scope, limited_receive, send)


def create_app(model, name: str, *, api_key: str | None = None, max_batch: int = 8, batch_window: float = 0.02,
               limits: Limits | None = None) -> FastAPI:
    """The server for one model, served under `name`.  `max_batch=1` turns dynamic batching off."""
    limits = limits or Limits()
    processor = model.processor
    context = model.llm.config.max_position_embeddings
    # The server may lower the model's pixel limit, not raise it: the processor checks its own limit again.
    max_pixels = min(limits.max_pixels or processor.image_cfg.max_pixels, processor.image_cfg.max_pixels)
    defaults = model.config.generation
    batcher = Batcher(model, max_batch=max_batch, window=batch_window)
    page = (resources.files("mm1.serve") / "static" / "index.html").read_text()
    created = int(time.time())
    # Requests are prepared (images decoded, text tokenised) two at a time: it is CPU-bound work that more threads
    # do not speed up, and a decoded image can take hundreds of MB (up to max_pixels), so this also bounds memory.
    preparing = anyio.CapacityLimiter(2)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="mm1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI answers 422; OpenAI clients expect 400 for a malformed request.
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return error(400, "request body is not valid JSON", "invalid_json")
        param = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error(400, f"{param or 'request body'}: {first['msg']}", first["type"], param)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), None if exc.status_code != 413 else "request_too_large")

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        return error(500, f"internal error: {type(exc).__name__}", type="server_error")

    def check_key(authorization: Annotated[str | None, Header()] = None) -> None:
        expected = f"Bearer {api_key}".encode()
        if api_key and not hmac.compare_digest((authorization or "").encode(), expected):
            raise APIError(401, "missing or incorrect API key (Authorization: Bearer ...)", "invalid_api_key")

    def prepare(body: ChatRequest) -> tuple[Encoded, int]:
        """Request -> (prompt, max_tokens), or an APIError; runs in a worker thread (decoding images is slow)."""
        if body.model != name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {name!r}",
                           "model_not_found", "model")
        if body.n != 1:
            raise APIError(400, f"n={body.n} is not supported; this server returns one choice (n=1)",
                           "unsupported_value", "n")
        if not body.messages:
            raise APIError(400, "messages must hold at least one message", "empty_messages", "messages")
        messages, sources = [], []
        for i, message in enumerate(body.messages):
            parts = [TextPart(type="text", text=message.content)] if isinstance(message.content, str) \
                else message.content
            content = []
            for j, part in enumerate(parts):
                if part.type == "text":
                    content.append({"type": "text", "text": part.text})
                else:
                    content.append({"type": "image"})
                    sources.append((part.image_url.url, f"messages.{i}.content.{j}.image_url"))
            messages.append({"role": message.role, "content": content})
        if len(sources) > limits.max_images:
            raise APIError(400, f"{len(sources)} images in one request; the limit is {limits.max_images}",
                           "too_many_images", "messages")
        images = []
        for url, param in sources:
            try:
                images.append(load_image(image_source(url, limits, param), max_pixels))
            except ImageError as err:
                raise APIError(400, str(err), "invalid_image", param) from None
        try:
            prompt = processor.encode_chat(messages, images, add_generation_prompt=True)
        except ValueError as err:  # e.g. a literal "<image>" in the text
            raise APIError(400, str(err), "invalid_messages", "messages") from None
        n_prompt = len(prompt.input_ids)
        requested = body.max_completion_tokens or body.max_tokens
        if n_prompt + (requested or 1) > context:
            raise APIError(400, f"the prompt has {n_prompt} tokens and max_tokens is {requested or 1}: over the "
                                f"model's context of {context} tokens", "context_length_exceeded", "messages")
        return prompt, requested or min(defaults.max_new_tokens, context - n_prompt)

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "max_batch": batcher.max_batch, **batcher.stats}

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "mm1"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatRequest):
        prompt, max_tokens = await anyio.to_thread.run_sync(prepare, body, limiter=preparing)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        stop = [body.stop] if isinstance(body.stop, str) else body.stop or []
        job = Job(prompt, processor.decode, lambda *event: loop.call_soon_threadsafe(events.put_nowait, event),
                  max_tokens, defaults.temperature if body.temperature is None else body.temperature,
                  defaults.top_p if body.top_p is None else body.top_p, stop)
        batcher.submit(job)
        reply_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            return StreamingResponse(stream(job, events, reply_id, now), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        text = []
        while True:
            delta, finish = await events.get()
            if finish == "error":
                raise APIError(500, job.error, "generation_failed", type="server_error")
            text.append(delta)
            if finish:
                break
        usage = {"prompt_tokens": len(prompt.input_ids), "completion_tokens": len(job.tokens)}
        return {"id": reply_id, "object": "chat.completion", "created": now, "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "finish_reason": finish, "logprobs": None}],
                "usage": usage | {"total_tokens": sum(usage.values())}}

    async def stream(job: Job, events: asyncio.Queue, reply_id: str, now: int):
        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": reply_id, "object": "chat.completion.chunk", "created": now, "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            while True:
                delta, finish = await events.get()
                if finish == "error":  # the status line has gone out already; OpenAI streams send an error event
                    body = {"message": job.error, "type": "server_error", "param": None, "code": "generation_failed"}
                    yield f"data: {json.dumps({'error': body})}\n\n"
                    break
                if delta:
                    yield chunk({"content": delta})
                if finish:
                    yield chunk({}, finish)
                    break
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # a client that went away stops holding a batch row (no-op once finished)

    return app


def serve(model_path: str, host: str = "127.0.0.1", port: int = 8000, name: str | None = None, **options) -> None:
    import uvicorn

    from mm1.serve import load_model

    app = create_app(load_model(model_path), name or Path(model_path).resolve().name, **options)
    uvicorn.run(app, host=host, port=port)
