"""The generation loop on a fake model: limits, EOS, stop strings, streaming, seeds."""

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit


def make_rt(eos=None, n_ctx=4096, seed=0):
    return Runtime(
        tokenizer=CharTokenizer(eos=eos),
        target=PrefixModel(seed=seed, n_ctx=n_ctx),
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=n_ctx),
    )


def reference_greedy(model, prompt, n):
    seq = list(prompt)
    out = []
    for _ in range(n):
        t = int(np.argmax(model.logits_for(seq)))
        out.append(t)
        seq.append(t)
    return out


def test_greedy_matches_reference_and_counts_forwards():
    rt = make_rt()
    res = rt.generate("abc", max_new_tokens=20)
    assert res.token_ids == reference_greedy(rt.target, [0, 1, 2], 20)
    assert res.prompt_token_ids == [0, 1, 2]
    assert res.stats.new_tokens == 20
    # prefill + one forward per token except the last (never fed back)
    assert res.stats.target_forwards == 20
    assert res.stats.stop_reason == "max_new_tokens"
    assert res.text == CharTokenizer().decode(res.token_ids)


def test_stream_pieces_concatenate_to_text():
    rt = make_rt()
    pieces = list(rt.stream("abc", max_new_tokens=15))
    assert len(pieces) > 1
    assert "".join(pieces) == rt.generate("abc", max_new_tokens=15).text


def test_eos_stops_and_is_excluded():
    rt = make_rt()
    ref = reference_greedy(rt.target, [0], 30)
    eos = ref[5]
    first = ref.index(eos)
    rt = make_rt(eos=eos)
    res = rt.generate("a", max_new_tokens=30)
    assert res.token_ids == ref[:first]
    assert res.stats.stop_reason == "eos"
    res2 = rt.generate("a", max_new_tokens=30, ignore_eos=True)
    assert res2.token_ids == ref


def test_stop_string_truncates_text_and_stream():
    rt = make_rt()
    full = rt.generate("abc", max_new_tokens=30).text
    stop = full[10:12]
    cut = full.find(stop)
    res = rt.generate("abc", max_new_tokens=30, stop=stop)
    assert res.text == full[:cut]
    assert res.stats.stop_reason == "stop_string"
    assert "".join(rt.stream("abc", max_new_tokens=30, stop=[stop])) == full[:cut]


def test_sampling_seed_repeats_and_differs():
    rt = make_rt()
    a = rt.generate("abc", max_new_tokens=25, temperature=1.0, seed=5).token_ids
    b = rt.generate("abc", max_new_tokens=25, temperature=1.0, seed=5).token_ids
    c = rt.generate("abc", max_new_tokens=25, temperature=1.0, seed=6).token_ids
    assert a == b
    assert a != c


def test_context_limit_stops_generation():
    rt = make_rt(n_ctx=16)
    res = rt.generate("abcd", max_new_tokens=100)
    assert len(res.token_ids) == 12
    assert res.stats.stop_reason == "context"
    with pytest.raises(EdgespecError, match="context holds 16"):
        rt.generate("a" * 16, max_new_tokens=3)


@pytest.mark.parametrize(
    "prompt,kw,msg",
    [
        ("", {}, "prompt is empty"),
        ("   ", {}, "prompt is empty"),
        ("ab", {"max_new_tokens": 0}, "max_new_tokens"),
        ("ab", {"bogus": 1}, "unknown generation option"),
        ("ab", {"strategy": "nope"}, "unknown strategy 'nope'; known: "),
    ],
)
def test_bad_input_one_line(prompt, kw, msg):
    with pytest.raises(EdgespecError, match=msg) as e:
        make_rt().generate(prompt, **kw)
    assert "\n" not in str(e.value)


def test_stats_json_fields():
    d = make_rt().generate("abc", max_new_tokens=5).to_dict()
    for k in ("text", "token_ids", "prompt_token_ids", "stats"):
        assert k in d
    for k in (
        "new_tokens",
        "wall_s",
        "ttft_s",
        "tokens_per_s",
        "target_forwards",
        "backend",
        "strategy",
    ):
        assert k in d["stats"]
    assert d["stats"]["strategy"] == "autoregressive"
    assert d["stats"]["lossy"] is False
