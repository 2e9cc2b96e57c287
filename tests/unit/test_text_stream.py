"""Incremental detokenization (``Tokenizer.stream``): after every token the stream's text is
the tokenizer's decode of the whole output, and a push decodes only the newest tokens."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from edgespec.testing import CharTokenizer, add_byte_tokenizer
from edgespec.tokenizer import HFTokenizer, LlamaCppTokenizer, PieceStream, Tokenizer


def check_stream(tok: Tokenizer, ids: Sequence[int]) -> None:
    """The stream's text equals ``tok.decode`` of the prefix after every push."""
    stream = tok.stream()
    for n, t in enumerate(ids, 1):
        got = stream.push(int(t))
        assert got == stream.text
        assert got == tok.decode(ids[:n]), f"after {n} tokens"


class PieceTokenizer(Tokenizer):
    """Tokens are arbitrary byte strings (split UTF-8, invalid bytes, leading spaces), joined
    as llama.cpp's are, with its BOS rule: the reference for :class:`PieceStream`."""

    def __init__(self, pieces: list[bytes], bos: int) -> None:
        self.pieces = pieces
        self.vocab_size = len(pieces)
        self.bos_id = bos
        self.eos_ids = frozenset()
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        out = b"".join(self.pieces[i] for i in ids)
        return out[1:] if len(ids) and ids[0] == self.bos_id and out[:1] == b" " else out

    def vocab(self) -> list[str]:
        return [p.decode("latin-1") for p in self.pieces]

    def stream(self) -> PieceStream:
        return PieceStream(self.pieces.__getitem__, self.bos_id)


def random_pieces(rng: np.random.Generator) -> list[bytes]:
    euro, snake = "€".encode(), "🐍".encode()
    fixed = [b"", b" ", b" a", b"bc", euro[:1], euro[1:], euro, snake[:2], snake[2:], b"\xff"]
    fixed += [b"\x80\x80", b" " + snake[:3], snake[3:] + b"x", "é".encode()[:1]]
    extra = [bytes(rng.integers(0, 256, rng.integers(1, 4)).tolist()) for _ in range(16)]
    return fixed + extra


@pytest.mark.parametrize("seed", range(6))
def test_piece_stream_equals_joined_decode(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tok = PieceTokenizer(random_pieces(rng), bos=1)
    for _ in range(20):
        ids = rng.integers(0, tok.vocab_size, rng.integers(1, 40)).tolist()
        if rng.random() < 0.5:
            ids[0] = tok.bos_id  # the leading-space rule: BOS, then maybe empty pieces
        check_stream(tok, ids)


def test_piece_stream_bos_rule_waits_for_the_first_byte() -> None:
    tok = PieceTokenizer([b"", b" ", b" hi", b"x"], bos=0)
    check_stream(tok, [0, 0, 2, 1, 3])  # BOS's piece empty: the first byte is " hi"'s space
    check_stream(tok, [3, 2])  # no BOS: the space stays
    assert tok.stream().push(0) == ""


class ShiftyTokenizer(CharTokenizer):
    """A decode that is not prefix-stable (a trailing "a" turns the text upper case), so a
    window's text cannot be trusted: the stream must fall back to a whole decode."""

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        text = super().decode_bytes(ids).decode()
        return (text.upper() if text.endswith("a") else text).encode()


@pytest.mark.parametrize("tok", [CharTokenizer(), ShiftyTokenizer()], ids=["char", "shifty"])
def test_window_stream_equals_decode(tok: Tokenizer) -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        check_stream(tok, rng.integers(0, tok.vocab_size, rng.integers(1, 30)).tolist())


@pytest.fixture(scope="module")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> HFTokenizer:
    folder = tmp_path_factory.mktemp("bytetok")
    add_byte_tokenizer(folder)
    return HFTokenizer(folder)


def test_window_stream_on_byte_level_bpe(byte_tokenizer: HFTokenizer) -> None:
    """Byte-level tokens split characters (multi-byte UTF-8 over several tokens): each
    prefix's decode ends in U+FFFD until the character is whole, as the stream's does."""
    tok = byte_tokenizer
    text = "naïve café: 🐍 is ok, the end €5"
    check_stream(tok, tok.encode(text))
    rng = np.random.default_rng(1)
    for _ in range(10):
        check_stream(tok, rng.integers(0, tok.vocab_size, 40).tolist())


def test_window_stream_decodes_only_the_newest_tokens(byte_tokenizer: HFTokenizer) -> None:
    """The cost of a push does not grow with the output: every decode it makes covers a
    few tokens, not the whole output (characters split over tokens included)."""
    sizes: list[int] = []

    class Counting(HFTokenizer):
        def decode_bytes(self, ids: Sequence[int]) -> bytes:
            sizes.append(len(ids))
            return super().decode_bytes(ids)

    tok = Counting.__new__(Counting)
    tok.__dict__.update(byte_tokenizer.__dict__)
    ids = tok.encode("the quick brown fox jumps over the naïve 🐍; " * 20)
    stream = tok.stream()
    for t in ids:
        stream.push(t)
    assert stream.text == byte_tokenizer.decode(ids)
    assert len(ids) > 400 and max(sizes) <= 5


def llama_detokenize(tok: LlamaCppTokenizer, ids: Sequence[int]) -> bytes:
    """llama.cpp's own detokenizer (its C API, special tokens rendered): the reference."""
    import ctypes

    import llama_cpp

    arr = (llama_cpp.llama_token * len(ids))(*ids)
    buf = ctypes.create_string_buffer(1 << 20)
    n = llama_cpp.llama_detokenize(tok._vocab_ptr, arr, len(ids), buf, 1 << 20, False, True)
    assert n >= 0
    return buf.raw[:n]


def test_llamacpp_stream_and_decode(smollm2_path: Path) -> None:
    """llama.cpp's vocabulary: the decode equals llama.cpp's own ``llama_detokenize`` on real
    text, random ids and after a BOS, pieces longer than 32 bytes included (runs of
    indentation, which llama-cpp-python's ``detokenize`` dropped), and the stream equals the
    decode of every prefix."""
    tok = LlamaCppTokenizer(smollm2_path)
    text = Path(__file__).read_text()[:3000] + " naïve 🐍 €\n" + " " * 40 + "x"
    ids = tok.encode(text)[1:]
    long = [t for t in ids if len(tok.piece(t)) > 32]
    assert long, "the text has no piece longer than 32 bytes"
    rng = np.random.default_rng(0)
    random_ids = rng.integers(0, tok.vocab_size, 300).tolist()
    for seq in (ids, [tok.bos_id, *random_ids], random_ids, long):
        assert tok.decode_bytes(seq) == llama_detokenize(tok, seq)
    check_stream(tok, ids[:400])
    check_stream(tok, random_ids)
