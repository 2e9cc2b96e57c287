"""The real smollm2-135m on the NumPy reference behind the server: greedy completions and
chat through the ``openai`` client equal ``Runtime.generate`` (what ``edgespec generate``
runs: ``rt.start(...).run()``) on the same prompt, token for token (same backend, same
strategy, so no tolerance is involved). The NumPy backend because it runs everywhere; one
model load (about 20 s under load on 2 cores) and four generations of N tokens."""

from __future__ import annotations

import pytest

from edgespec.serve.testing import serving

pytestmark = [pytest.mark.backend, pytest.mark.slow]

PROMPT = "The three primary colors are"
N = 12


@pytest.fixture(scope="module")
def smollm2_rt(smollm2_path):
    import edgespec

    rt = edgespec.load(str(smollm2_path), backend="numpy", n_ctx=512, progress=False)
    yield rt
    rt.close()


def test_greedy_equals_runtime_generate(smollm2_rt, make_client):
    api = smollm2_rt.generate(PROMPT, max_new_tokens=N, temperature=0.0)
    chat_ref = smollm2_rt.generate(PROMPT, chat=True, max_new_tokens=N, temperature=0.0)
    with serving(smollm2_rt, strategy="autoregressive") as srv:
        c = make_client(srv)
        name = c.models.list().data[0].id
        r = c.completions.create(model=name, prompt=PROMPT, max_tokens=N, temperature=0)
        streamed = "".join(
            ch.choices[0].text
            for ch in c.completions.create(
                model=name, prompt=PROMPT, max_tokens=N, temperature=0, stream=True
            )
        )
        chat = c.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=N,
            temperature=0,
        )
    assert r.choices[0].text == api.text
    assert streamed == api.text
    assert r.usage.prompt_tokens == len(api.prompt_token_ids)
    assert r.usage.completion_tokens == len(api.token_ids)
    assert chat.choices[0].message.content == chat_ref.text
    assert chat.usage.prompt_tokens == len(chat_ref.prompt_token_ids)
    assert r.model_extra["edgespec"]["backend"] == "numpy"
