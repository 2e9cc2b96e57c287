"""One declaration per strategy option: validation, JSON, bench specs and CLI flags."""

import dataclasses
import json
import math

import pytest

from edgespec.cli import build_parser, config_from_args, main
from edgespec.errors import EdgespecError
from edgespec.options import parse_spec
from edgespec.speculative.base import PROPOSERS
from edgespec.speculative.config import SpecConfig
from edgespec.strategies import STRATEGIES, option_classes, option_flags
from edgespec.strategies.entropy_switch import SwitchConfig
from edgespec.strategies.sentence_lead import LeadConfig

pytestmark = pytest.mark.unit


def args(*argv):
    return build_parser().parse_args(["generate", "hi", *argv])


@pytest.mark.parametrize(
    "cfg",
    [
        SpecConfig(proposers=("ngram", "recycle"), k=4, tree=False, layerskip_layers="first:2"),
        SpecConfig(),
        SwitchConfig(tau=-math.inf, window=3, spec_k=2),
        LeadConfig(lead_tokens=3, lead_prob=0.5, sentence_ends=frozenset({1, 2})),
    ],
)
def test_json_round_trip(cfg):
    assert type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_every_option_has_help_and_every_flag_one_destination():
    for cls in filter(None, option_classes().values()):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    flags = option_flags()
    spellings = [s for f in flags for s in f.spellings]
    assert len(spellings) == len(set(spellings))
    assert len({f.dest for f in flags}) == len(flags)


def test_spec_syntax_parses_with_each_option_class():
    assert parse_spec("speculative:proposers=ngram+recycle:k=4", SpecConfig) == (
        "speculative",
        {"proposers": ["ngram", "recycle"], "k": 4},
    )
    assert parse_spec("entropy-switch:tau=inf:spec_k=auto", SwitchConfig)[1] == {
        "tau": math.inf,
        "spec_k": "auto",
    }
    with pytest.raises(EdgespecError, match="unknown speculative option.*; known: "):
        parse_spec("speculative:tau=1", SpecConfig)
    with pytest.raises(EdgespecError, match="window must be an integer >= 1"):
        parse_spec("entropy-switch:window=0", SwitchConfig)
    with pytest.raises(EdgespecError, match="takes no options"):
        parse_spec("autoregressive:k=2", None)


def test_flags_become_the_strategys_options():
    a = args(
        "--strategy", "speculative", "--proposer", "ngram", "--proposer", "recycle", "--k", "4"
    )
    assert config_from_args(a) == {"proposers": ["ngram", "recycle"], "k": 4}
    a = args("--strategy", "auto", "--proposer", "ngram+recycle", "--no-tree", "--max-k", "5")
    assert config_from_args(a) == {"proposers": ["ngram", "recycle"], "tree": False, "max_k": 5}
    a = args("--strategy", "entropy-switch", "--draft", "x", "--k", "auto", "--tau=-inf")
    assert config_from_args(a) == {"spec_k": "auto", "tau": -math.inf}
    assert config_from_args(args("--strategy", "auto")) is None
    assert config_from_args(args()) is None


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--strategy", "auto", "--tau", "1"], "--tau does not apply to --strategy auto"),
        (["--proposer", "ngram"], "--proposer does not apply to --strategy autoregressive"),
        (
            ["--strategy", "speculative", "--lead-tokens", "2"],
            "--lead-tokens does not apply to --strategy speculative",
        ),
        (["--strategy", "speculative", "--k", "auto"], "--k must be an integer >= 0"),
        (["--strategy", "sentence-lead", "--draft", "x", "--lead-prob", "2"], "lead_prob"),
    ],
)
def test_a_flag_that_does_not_apply_is_a_one_line_error(capsys, argv, needle):
    assert main(["generate", "hi", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_help_lists_every_strategy_and_proposer(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in STRATEGIES.names() + PROPOSERS.names():
        assert name in text
    assert "speculative and auto differ only in whether plain decoding (k = 0)" in text
    assert "--tau" in text and "entropy-switch:" in text
