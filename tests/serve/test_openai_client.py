"""The official ``openai`` client against a real uvicorn server on 127.0.0.1 (fake model):
completions, chat, streaming, stop strings, usage, the ``edgespec`` field, greedy output
equal to ``Runtime.generate``, /v1/models, /health and /metrics."""

from __future__ import annotations

import httpx
import pytest

from edgespec.serve.testing import ALPHABET, fake_runtime, serving

pytestmark = pytest.mark.unit

PROMPT = "the quick brown fox"


def reference(prompt: str, n: int, **kw: object):  # type: ignore[no-untyped-def]
    """What the Python API generates greedily on an identical fake runtime."""
    return fake_runtime().generate(prompt, max_new_tokens=n, temperature=0.0, **kw)


def test_completion_equals_runtime_generate_with_usage_and_stats(fake_server, make_client):
    ref = reference(PROMPT, 24)
    r = make_client(fake_server).completions.create(
        model="fake-model", prompt=PROMPT, max_tokens=24, temperature=0
    )
    assert r.object == "text_completion"
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert r.usage.completion_tokens == 24
    assert r.usage.total_tokens == len(ref.prompt_token_ids) + 24
    ext = r.model_extra["edgespec"]
    assert ext["strategy"] == "autoregressive"
    assert ext["stop_reason"] == "max_new_tokens"
    assert ext["tokens_per_s"] > 0
    assert ext["acceptance_rate"] is None  # plain decoding drafts nothing


def test_token_id_prompt_and_model_omitted(fake_server):
    ids = [ALPHABET.index(c) for c in PROMPT]
    body = {"prompt": ids, "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"{fake_server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == reference(PROMPT, 8).text


def test_chat_uses_the_chat_template_like_encode_prompt(fake_server, make_client):
    ref = fake_runtime().generate(PROMPT, chat=True, max_new_tokens=16, temperature=0.0)
    r = make_client(fake_server).chat.completions.create(
        model="fake-model",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=16,
        temperature=0,
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref.text
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)


def test_chat_streaming_chunks_join_to_the_whole_answer(fake_server, make_client):
    c = make_client(fake_server)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    whole = c.chat.completions.create(
        model="fake-model", messages=msgs, max_tokens=30, temperature=0
    )
    chunks = list(
        c.chat.completions.create(
            model="fake-model",
            messages=msgs,
            max_tokens=30,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert len([ch for ch in chunks if ch.choices and ch.choices[0].delta.content]) > 1
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert finals[0].model_extra["edgespec"]["stop_reason"] == "max_new_tokens"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 30


def test_completion_streaming_and_stop_string(fake_server, make_client):
    c = make_client(fake_server)
    full = reference(PROMPT, 40).text
    stop = full[15:18]  # a stop string that occurs in the greedy output
    expected = full[: full.index(stop)]
    r = c.completions.create(
        model="fake-model", prompt=PROMPT, max_tokens=40, temperature=0, stop=[stop]
    )
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "stop"
    streamed = list(
        c.completions.create(
            model="fake-model", prompt=PROMPT, max_tokens=40, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(ch.choices[0].text for ch in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_follows_the_api(fake_server, make_client):
    c = make_client(fake_server)
    kw = dict(model="fake-model", prompt=PROMPT, max_tokens=20, temperature=0.9, top_p=0.95)
    a = c.completions.create(seed=7, **kw).choices[0].text
    assert a == c.completions.create(seed=7, **kw).choices[0].text
    ref = fake_runtime().generate(PROMPT, max_new_tokens=20, temperature=0.9, top_p=0.95, seed=7)
    assert a == ref.text
    # top_k (an extension field) applies: top_k=1 samples the argmax, i.e. greedy
    top1 = c.completions.create(seed=3, extra_body={"top_k": 1}, **kw).choices[0].text
    assert top1 == reference(PROMPT, 20).text != a


def test_auto_strategy_is_greedy_exact_and_reports_acceptance(make_client):
    with serving(fake_runtime(), strategy="auto") as srv:
        r = make_client(srv).completions.create(
            model="fake-model", prompt="aaaa aaaa aaaa aaaa", max_tokens=40, temperature=0
        )
    assert r.choices[0].text == reference("aaaa aaaa aaaa aaaa", 40).text
    ext = r.model_extra["edgespec"]
    assert ext["strategy"] == "auto"
    assert ext["target_forwards"] >= 1


def test_models_health_and_metrics(fake_server, make_client):
    c = make_client(fake_server)
    models = c.models.list()
    assert [m.id for m in models.data] == ["fake-model"]
    assert c.models.retrieve("fake-model").id == "fake-model"
    c.completions.create(model="fake-model", prompt=PROMPT, max_tokens=5, temperature=0)
    h = httpx.get(f"{fake_server.url}/health", timeout=10).json()
    assert h["status"] == "ok" and h["models"][0]["id"] == "fake-model"
    m = httpx.get(f"{fake_server.url}/metrics", timeout=10)
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    series = dict(
        line.rsplit(" ", 1) for line in m.text.splitlines() if line and not line.startswith("#")
    )
    assert float(series['edgespec_generated_tokens_total{model="fake-model"}']) >= 5
    assert series['edgespec_queue_depth{model="fake-model"}'] == "0.0"
    assert float(series['edgespec_tokens_per_second{model="fake-model"}']) > 0
    assert 'edgespec_http_responses_total{path="/v1/completions",status="200"}' in series
