"""mm1 serve: the OpenAI-compatible API on a real tiny random model, driven by the official `openai` client.

Servers listen on 127.0.0.1 only, on a port the OS picks.  Helpers here (`save_tiny`, `running`, `scripted`,
`data_url`) are shared with test_serve_chat.py and test_serve_browser.py.
"""

from __future__ import annotations

import base64
import copy
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
import torch
import uvicorn
from PIL import Image

import conftest
import mm1
from mm1.config import config_from_dict
from mm1.data.tokenizer import build_tokenizer
from mm1.model.mllm import MM1Model
from mm1.serve.api import Limits, create_app

# The shared tiny model with a short context, so the context-length limit is easy to reach.
TINY = copy.deepcopy(conftest.TINY)
TINY["model"]["llm"]["max_positions"] = 512
LIMITS = Limits(max_body_bytes=300_000, max_images=3, max_pixels=100 * 100)


# ---- helpers shared by the serve tests ----------------------------------------------------------------------------
def save_tiny(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = config_from_dict(TINY)
    model = MM1Model(cfg, build_tokenizer(cfg.tokenizer, ["a red circle [10,20,300,400]", "a blue square"] * 20))
    model.eval().save_pretrained(path)
    return path


@contextmanager
def running(app):
    """uvicorn serving `app` in a thread on a loopback port; yields the base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def scripted(model: MM1Model, answer: str) -> MM1Model:
    """The model, answering `answer` to everything through the real streaming path (the random model never writes
    coordinates).  Each call's prompt text and pixel_values are recorded in `model.calls`."""
    tokenizer = model.processor.tokenizer
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    model.calls = []

    def generate(input_ids, attention_mask=None, pixel_values=None, max_new_tokens=32, on_tokens=None, **_):
        model.calls.append((model.processor.decode(input_ids[0].tolist()), pixel_values))
        steps = []
        for token in ids[:max_new_tokens]:
            steps.append(torch.full((input_ids.shape[0],), token))
            if on_tokens is not None and on_tokens(steps[-1]):
                break
        return torch.stack(steps, dim=1)

    model.generate = generate
    return model


def png(width: int = 40, height: int = 30, colour=(200, 30, 30), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, fmt)
    return buffer.getvalue()


def data_url(width: int = 40, height: int = 30, colour=(200, 30, 30), fmt: str = "PNG") -> str:
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(png(width, height, colour, fmt)).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


# ---- fixtures -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("serve") / "m")


@pytest.fixture(scope="module")
def batched(model_dir):
    app = create_app(mm1.load(model_dir), "m", max_batch=16, batch_window=0.05, limits=LIMITS)
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def unbatched(model_dir):
    with running(create_app(mm1.load(model_dir), "m", max_batch=1, limits=LIMITS)) as url:
        yield url


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def post(url: str, body, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data,
                                     {"Content-Type": "application/json"} | (headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def ask(text: str, *images: str) -> list[dict]:
    return [{"role": "user", "content": [*map(image_part, images), text_part(text)]}]


def stream_text(stream) -> tuple[str, str]:
    text, finish = [], None
    for chunk in stream:
        text.append(chunk.choices[0].delta.content or "")
        finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


# ---- the API --------------------------------------------------------------------------------------------------------
def test_models_and_health(batched):
    assert [m.id for m in client(batched).models.list()] == ["m"]
    health = get(f"{batched}/health")
    assert health["status"] == "ok" and health["model"] == "m" and health["max_batch"] == 16


def test_streamed_text_equals_plain_text(batched, model_dir):
    c = client(batched)
    messages = ask("What is it?", data_url())
    plain = c.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0)
    text, finish = stream_text(c.chat.completions.create(model="m", messages=messages, max_tokens=12, temperature=0,
                                                         stream=True))
    assert text == plain.choices[0].message.content and finish == plain.choices[0].finish_reason
    assert plain.choices[0].message.role == "assistant" and plain.usage.completion_tokens <= 12
    # The server's translation of OpenAI messages gives the same answer as the library's own chat().
    reference = mm1.load(model_dir).chat([{"role": "user", "content": [{"type": "image"}, text_part("What is it?")]}],
                                         [png()], max_new_tokens=12, temperature=0)
    assert text == reference


def test_multi_image_conversation(batched, model_dir):
    messages = [
        {"role": "system", "content": "You look at pictures."},
        {"role": "user", "content": [image_part(data_url(colour=(0, 0, 255))), text_part("And this one?")]},
        {"role": "assistant", "content": "a blue square"},
        {"role": "user", "content": [image_part(data_url(64, 20)), text_part("vs"),
                                     image_part(data_url(20, 64, fmt="JPEG")), text_part("compare")]},
    ]
    reply = client(batched).chat.completions.create(model="m", messages=messages, max_tokens=5)
    assert isinstance(reply.choices[0].message.content, str)
    processor = mm1.load(model_dir).processor
    mm1_messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else
                     [{"type": "image"} if p["type"] == "image_url" else p for p in m["content"]]} for m in messages]
    expected = processor.encode_chat(mm1_messages, [Image.new("RGB", (40, 30))] * 3, add_generation_prompt=True)
    assert reply.usage.prompt_tokens == len(expected.input_ids)  # all three images reached the prompt


def test_concurrent_clients_are_batched_and_equal_unbatched(batched, unbatched):
    """16 clients at once: each answered, generated in shared batches, and greedy answers equal to one-at-a-time."""
    requests = [{"messages": ask(f"question {i}: " + "more " * (i % 5), *[data_url(30 + i, 20)] * (i % 3)),
                 "max_tokens": 4 + i % 7, "temperature": 0} for i in range(16)]
    for i in (3, 9):  # sampled requests are grouped apart from the greedy ones
        requests[i]["temperature"] = 0.8

    def answer(url, request):
        return client(url).chat.completions.create(model="m", **request).choices[0].message.content

    before = get(f"{batched}/health")
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda r: answer(batched, r), requests))
    after = get(f"{batched}/health")
    with ThreadPoolExecutor(16) as pool:
        alone = list(pool.map(lambda r: answer(unbatched, r), requests))
    assert all(isinstance(text, str) for text in got)
    assert after["requests"] - before["requests"] == 16
    assert after["max_batch_seen"] > 1 and after["generate_calls"] - before["generate_calls"] < 16
    assert get(f"{unbatched}/health")["max_batch_seen"] == 1
    greedy = [i for i, r in enumerate(requests) if r["temperature"] == 0]
    assert [got[i] for i in greedy] == [alone[i] for i in greedy]


def test_stop_strings_trim_the_answer(batched):
    c = client(batched)
    messages = ask("say something")
    full = c.chat.completions.create(model="m", messages=messages, max_tokens=24).choices[0].message.content
    start = next(i for i in range(2, len(full) - 1) if full[i:i + 2].isprintable() and "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]
    expected = full[:full.index(stop)]
    for stops in (stop, ["never appears", stop]):
        reply = c.chat.completions.create(model="m", messages=messages, max_tokens=24, stop=stops)
        assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
        streamed = c.chat.completions.create(model="m", messages=messages, max_tokens=24, stop=stops, stream=True)
        assert stream_text(streamed) == (expected, "stop")


def test_raw_stream_is_openai_sse(batched):
    body = {"model": "m", "messages": ask("hi"), "max_tokens": 3, "stream": True}
    request = urllib.request.Request(f"{batched}/v1/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "m" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def _too_big_chunked(url: str) -> tuple[int, dict]:
    """A body with no Content-Length (chunked), so only counting while it streams in can refuse it."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    chunk = b'{"model": "m", "messages": [], "pad": "' + b"x" * 100_000
    conn.request("POST", "/v1/chat/completions", body=iter([chunk] * 4), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


GOOD = {"model": "m", "messages": ask("hi"), "max_tokens": 2}
BAD = {  # name: (body, status, error code, param)
    "invalid JSON": (b'{"model": "m", "messages": [', 400, "invalid_json", None),
    "not an object": (b"[1, 2]", 400, "model_attributes_type", None),
    "messages not a list": (GOOD | {"messages": "hi"}, 400, "list_type", "messages"),
    "max_tokens a string": (GOOD | {"max_tokens": "5"}, 400, "int_type", "max_tokens"),
    "max_tokens zero": (GOOD | {"max_tokens": 0}, 400, "greater_than_equal", "max_tokens"),
    "temperature a string": (GOOD | {"temperature": "hot"}, 400, "float_type", "temperature"),
    "stream a string": (GOOD | {"stream": "yes"}, 400, "bool_type", "stream"),
    "unknown role": (GOOD | {"messages": [{"role": "robot", "content": "hi"}]}, 400, "literal_error",
                     "messages.0.role"),
    "model missing": ({"messages": ask("hi")}, 400, "missing", "model"),
    "empty messages": (GOOD | {"messages": []}, 400, "empty_messages", "messages"),
    "unknown model": (GOOD | {"model": "gpt-4"}, 404, "model_not_found", "model"),
    "n > 1": (GOOD | {"n": 2}, 400, "unsupported_value", "n"),
    "over the context": (GOOD | {"max_tokens": 600}, 400, "context_length_exceeded", "messages"),
    "too many images": (GOOD | {"messages": ask("hi", *[data_url()] * 4)}, 400, "too_many_images", "messages"),
    "too many pixels": (GOOD | {"messages": ask("hi", data_url(101, 100))}, 400, "invalid_image",
                        "messages.0.content.0.image_url"),
    "broken base64": (GOOD | {"messages": ask("hi", "data:image/png;base64,iVBOR%%%")}, 400, "invalid_image",
                      "messages.0.content.0.image_url"),
    "not an image": (GOOD | {"messages": ask("hi", "data:image/png;base64," + base64.b64encode(b"hello").decode())},
                     400, "invalid_image", "messages.0.content.0.image_url"),
    "unsupported type": (GOOD | {"messages": ask("hi", "data:image/svg+xml;base64,PHN2Zz4=")}, 400,
                         "unsupported_image_type", "messages.0.content.0.image_url"),
    "remote URL": (GOOD | {"messages": ask("hi", "https://example.com/cat.png")}, 400, "image_url_not_allowed",
                   "messages.0.content.0.image_url"),
    "local path": (GOOD | {"messages": ask("hi", "/etc/hostname")}, 400, "image_url_not_allowed",
                   "messages.0.content.0.image_url"),
    "body too large": (GOOD | {"pad": "x" * 400_000}, 413, "request_too_large", None),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_request_is_refused_in_openai_shape(batched, name):
    body, status, code, param = BAD[name]
    got_status, got = post(batched, body)
    assert got_status == status, got
    assert set(got) == {"error"} and set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["code"] == code and got["error"]["param"] == param and got["error"]["message"]
    assert got["error"]["type"] == "invalid_request_error"
    assert post(batched, GOOD)[0] == 200  # the server goes on


def test_other_refusals(batched):
    status, got = _too_big_chunked(batched)
    assert status == 413 and got["error"]["code"] == "request_too_large"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{batched}/v1/nothing", timeout=30)
    assert err.value.code == 404 and "error" in json.loads(err.value.read())
    with pytest.raises(openai.BadRequestError) as err:  # the official client reads the error shape
        client(batched).chat.completions.create(model="m", messages=ask("hi"), n=2)
    assert err.value.code == "unsupported_value" and "n=2" in err.value.message
    assert post(batched, GOOD)[0] == 200


def test_api_key_and_local_images(model_dir, tmp_path):
    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "a.png").write_bytes(png())
    (tmp_path / "outside.png").write_bytes(png())
    app = create_app(mm1.load(model_dir), "m", api_key="sekrit", limits=Limits(local_images=tmp_path / "allowed"))
    with running(app) as url:
        with pytest.raises(openai.AuthenticationError) as err:
            client(url, "wrong").chat.completions.create(model="m", messages=ask("hi"), max_tokens=2)
        assert err.value.code == "invalid_api_key"
        status, got = post(url, GOOD)  # no Authorization header at all
        assert status == 401 and got["error"]["code"] == "invalid_api_key"
        assert get(f"{url}/health")["status"] == "ok"  # health and the page need no key
        c = client(url, "sekrit")
        assert [m.id for m in c.models.list()] == ["m"]
        reply = c.chat.completions.create(model="m", messages=ask("hi", str(tmp_path / "allowed" / "a.png")),
                                          max_tokens=2)
        assert reply.usage.prompt_tokens > 4  # the image's tokens are in the prompt
        for outside in (tmp_path / "outside.png", tmp_path / "allowed" / ".." / "outside.png"):
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model="m", messages=ask("hi", f"file://{outside}"), max_tokens=2)
            assert err.value.code == "image_url_not_allowed"


def test_client_that_goes_away_stops_its_generation(model_dir):
    model = scripted(mm1.load(model_dir), "word " * 500)
    steps, scripted_generate = [], model.generate

    def slow_generate(*args, on_tokens, **kwargs):
        def step(tokens):
            steps.append(tokens)
            time.sleep(0.01)
            return on_tokens(tokens)

        return scripted_generate(*args, on_tokens=step, **kwargs)

    model.generate = slow_generate
    with running(create_app(model, "m")) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(GOOD | {"max_tokens": 400, "stream": True}),
                     {"Content-Type": "application/json"})
        response = conn.getresponse()
        while b'"delta": {"content": ' not in (line := response.readline()):  # until generation has begun
            assert line, "the stream ended"
        response.close()
        conn.close()
        assert post(url, GOOD)[0] == 200  # queued behind the abandoned stream, which must end early
    assert len(steps) < 100  # 400 without cancelling


def test_mm1_serve_command(model_dir):
    """The `mm1 serve` entry point, as a user starts it, on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MM1_API_KEY"}
    proc = subprocess.Popen([sys.executable, "-m", "mm1.cli", "serve", str(model_dir), "--host", "127.0.0.1",
                             "--port", str(port), "--no-batching", "--name", "tiny"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                health = get(f"{url}/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
                time.sleep(0.2)
        assert health["model"] == "tiny" and health["max_batch"] == 1
        reply = client(url).chat.completions.create(model="tiny", messages=ask("hi"), max_tokens=3)
        assert reply.choices[0].finish_reason in ("stop", "length")
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"<title>mm1 chat</title>" in response.read()
    finally:
        proc.terminate()
        proc.wait(30)
