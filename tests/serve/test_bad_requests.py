"""Bad requests get the right 4xx with a one-line OpenAI error body: malformed JSON, wrong
types, missing or wrong auth, oversize bodies, unknown models and paths, prompts longer than
the context, and a full queue (429). Raw HTTP (httpx) for what a client library would not
send, the ``openai`` client for the rest."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from edgespec.serve.testing import fake_runtime, serving, wait_idle, worker_of

pytestmark = pytest.mark.unit


def post(srv, path: str, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    return httpx.post(f"{srv.url}{path}", content=content, headers=h, timeout=30)


def error_of(r: httpx.Response, status: int) -> dict:
    """The error object, after checking the status and that the body is one line."""
    assert r.status_code == status, r.text
    assert "\n" not in r.text.strip()
    err = r.json()["error"]
    assert err["message"] and "\n" not in err["message"]
    return err


@pytest.mark.parametrize(
    "body, status, words",
    [
        ("{not json", 400, ["not valid JSON"]),
        ("[1, 2]", 400, ["JSON object", "array"]),
        ('{"prompt": "abc", "max_tokens": "ten"}', 400, ["'max_tokens'", "integer", "string"]),
        ('{"prompt": "abc", "max_tokens": true}', 400, ["'max_tokens'", "boolean"]),
        ('{"prompt": "abc", "temperature": "hot"}', 400, ["'temperature'", "number"]),
        ('{"prompt": "abc", "temperature": -1}', 400, ["temperature", ">= 0"]),
        ('{"prompt": "abc", "top_p": 0}', 400, ["top_p"]),
        ('{"prompt": "abc", "top_k": -2}', 400, ["top_k", ">= 0"]),
        ('{"prompt": "abc", "top_k": 1.5}', 400, ["'top_k'", "integer", "number"]),
        ('{"prompt": "abc", "stream": "yes"}', 400, ["'stream'", "boolean"]),
        ('{"prompt": "abc", "stop": 5}', 400, ["'stop'"]),
        ('{"prompt": "abc", "n": 2}', 400, ["n=1"]),
        ('{"prompt": 42}', 400, ["'prompt'", "integer"]),
        ('{"prompt": ["ab", "cd"]}', 400, ["batched"]),
        ('{"prompt": [1, 999]}', 400, ["token id 999", "vocabulary"]),
        ('{"max_tokens": 4}', 400, ["'prompt' is required"]),
        ('{"prompt": "abc", "max_tokens": 0}', 400, ["max_tokens", ">= 1"]),
        ('{"prompt": "abc", "model": "gpt-9"}', 404, ["gpt-9", "fake-model"]),
    ],
)
def test_completion_errors(fake_server, body, status, words):
    err = error_of(post(fake_server, "/v1/completions", body), status)
    for w in words:
        assert w in err["message"], err["message"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"messages": "hi"}, ["'messages'", "array"]),
        ({"messages": []}, ["'messages'"]),
        ({"messages": [{"role": "wizard", "content": "x"}]}, ["messages[0].role", "wizard"]),
        ({"messages": [{"role": "user", "content": 3}]}, ["messages[0].content"]),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            ["images"],
        ),
    ],
)
def test_chat_errors(fake_server, body, words):
    err = error_of(post(fake_server, "/v1/chat/completions", json.dumps(body)), 400)
    for w in words:
        assert w in err["message"], err["message"]


def test_unknown_fields_are_ignored(fake_server):
    body = {"prompt": "abc", "max_tokens": 3, "frobnicate": {"x": 1}, "logit_bias": {}}
    r = post(fake_server, "/v1/completions", json.dumps(body))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 3


def test_prompt_longer_than_the_context_names_the_limit(make_client):
    openai = pytest.importorskip("openai")
    with serving(fake_runtime(n_ctx=64)) as srv:
        with pytest.raises(openai.BadRequestError) as ei:
            make_client(srv).completions.create(model="fake-model", prompt="ab" * 40)
    msg = ei.value.body["message"]
    assert "80 tokens" in msg and "64 tokens" in msg and "at most 63" in msg
    assert ei.value.body["code"] == "context_length_exceeded"


def test_unknown_path_and_method_are_json(fake_server):
    err = error_of(httpx.get(f"{fake_server.url}/v2/nothing", timeout=10), 404)
    assert "/v1/chat/completions" in err["message"]
    error_of(httpx.get(f"{fake_server.url}/v1/completions", timeout=10), 405)


def test_oversize_body_is_413(fake_server):
    big = json.dumps({"prompt": "a" * (2 << 20)})
    err = error_of(post(fake_server, "/v1/completions", big), 413)
    assert "limit is 1048576 bytes" in err["message"]

    def chunks():  # no content-length: the limit applies while reading
        for _ in range(40):
            yield b"a" * 65536

    r = httpx.post(f"{fake_server.url}/v1/completions", content=chunks(), timeout=30)
    assert "more than" in error_of(r, 413)["message"]


def test_api_key(make_client):
    openai = pytest.importorskip("openai")
    with serving(fake_runtime(), api_key="s3cret") as srv:
        for key, code in (("wrong", "invalid_api_key"),):
            with pytest.raises(openai.AuthenticationError) as ei:
                make_client(srv, api_key=key).models.list()
            assert ei.value.body["code"] == code
        r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "abc"}, timeout=10)
        assert error_of(r, 401)["code"] == "missing_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
        error_of(httpx.get(f"{srv.url}/metrics", timeout=10), 401)
        assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 200  # stays open
        ok = make_client(srv, api_key="s3cret").completions.create(
            model="fake-model", prompt="abc", max_tokens=2
        )
        assert ok.usage.completion_tokens == 2


def test_full_queue_is_429_and_the_server_keeps_serving(make_client):
    """max_queue 1: one running, one waiting, the third refused; then all is well."""
    openai = pytest.importorskip("openai")
    with serving(fake_runtime(delay_s=0.02), max_queue=1) as srv:
        c, w = make_client(srv), worker_of(srv)
        results: list[str] = []

        def slow() -> None:
            r = c.completions.create(model="fake-model", prompt="ab", max_tokens=80)  # 1.6 s
            results.append(r.choices[0].finish_reason)

        threads = [threading.Thread(target=slow) for _ in range(2)]
        threads[0].start()
        _wait(lambda: w.busy)
        threads[1].start()
        _wait(lambda: w.queue_depth == 1)
        with pytest.raises(openai.RateLimitError) as ei:
            c.completions.create(model="fake-model", prompt="ab", max_tokens=2)
        assert ei.value.body["code"] == "queue_full"
        assert ei.value.response.headers["retry-after"] == "1"
        for t in threads:
            t.join(timeout=30)
        assert results == ["length", "length"]
        wait_idle(srv)
        assert c.completions.create(model="fake-model", prompt="ab", max_tokens=2).choices


def _wait(cond, timeout_s: float = 10.0) -> None:
    import time

    t0 = time.perf_counter()
    while not cond():
        assert time.perf_counter() - t0 < timeout_s, "condition not reached"
        time.sleep(0.002)
