"""Tokenizers: llama.cpp's own for GGUF models, HF ``tokenizers`` for HF folders.

For GGUF files the token ids must equal llama.cpp's (stack.md: transformers' GGUF tokenizer
adds a BOS for SmolLM2 and splits Gemma 3 words wrongly), so we load the file's vocabulary
alone in llama.cpp (``vocab_only``), or read that of a llama.cpp model already loaded from it.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.native import quiet_stderr
from edgespec.runtimes.base import ModelSource


class Tokenizer(ABC):
    """Text <-> token ids, plus the special tokens and chat template of a model.

    Attributes:
        vocab_size: number of token ids.
        bos_id: beginning-of-sequence id, or None.
        eos_ids: ids that end generation (EOS and end-of-turn tokens).
        chat_template: the model's Jinja chat template, or None.
    """

    vocab_size: int
    bos_id: int | None
    eos_ids: frozenset[int]
    chat_template: str | None

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids for ``text``, with the BOS the model is configured to add."""

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The UTF-8 bytes of ``ids`` (special tokens rendered as text)."""

    @abstractmethod
    def vocab(self) -> list[str]:
        """Every token's text, in id order; used to check that draft and target match."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; incomplete UTF-8 at the end becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream(self) -> TextStream:
        """A :class:`TextStream` over this tokenizer: the text of a growing output, at a cost
        per token that does not grow with the output (:class:`WindowStream`)."""
        return WindowStream(self)

    def vocab_digest(self) -> str:
        """sha256 over the vocabulary, one token a line: equal digests, equal vocabularies."""
        h = hashlib.sha256()
        for tok in self.vocab():
            h.update(tok.encode("utf-8", errors="surrogatepass") + b"\n")
        return h.hexdigest()

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render ``messages`` ([{"role": ..., "content": ...}]) with the generation prompt."""
        if not self.chat_template:
            raise EdgespecError("this model has no chat template; drop --chat")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(msg: str) -> None:
            raise EdgespecError(f"chat template: {msg}")

        template = env.from_string(self.chat_template)
        bos = self.decode([self.bos_id]) if self.bos_id is not None else ""
        eos = self.decode([min(self.eos_ids)]) if self.eos_ids else ""
        return template.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=bos,
            eos_token=eos,
            raise_exception=raise_exception,
        )


class LlamaCppTokenizer(Tokenizer):
    """llama.cpp's tokenizer for a GGUF file: its vocabulary alone (no weights loaded), or
    the vocabulary of a model already loaded from the file (``model``: a
    :class:`~edgespec.runtimes.llamacpp.ModelRef`, shared with that model, so the
    vocabulary is not built twice: 0.4-0.6 s for the Qwen2.5 models' 151,936 tokens).

    Raises:
        ModelLoadError: the file is missing, not a GGUF, truncated or not a language model.
    """

    def __init__(self, path: Path, *, model: Any = None) -> None:
        from edgespec.runtimes.llamacpp import ModelRef, _lib, _LogCapture, _model_params

        lib = _lib()
        if model is None:
            from edgespec.gguf_file import quick_check

            quick_check(path)
            log = _LogCapture(lib)
            params = _model_params(lib)
            params.vocab_only = True
            with log.active(), quiet_stderr():
                ptr = lib.llama_model_load_from_file(str(path).encode("utf-8"), params)
            if not ptr:
                why = log.last_error() or "no vocabulary"
                raise ModelLoadError(
                    f"llama.cpp could not read the vocabulary of '{path}' ({why}); "
                    "the file is corrupt or not a language model: re-download it"
                )
            model = ModelRef(lib, ptr)
        self._model = model  # held: the vocabulary lives in the model
        self._vocab_ptr = lib.llama_model_get_vocab(model.ptr)
        self.vocab_size = int(lib.llama_vocab_n_tokens(self._vocab_ptr))
        self._n_ctx_train = int(lib.llama_model_n_ctx_train(model.ptr))
        bos = int(lib.llama_vocab_bos(self._vocab_ptr))
        self.bos_id = bos if bos >= 0 else None
        self.eos_ids = frozenset(
            i for i in self._special_ids() if lib.llama_vocab_is_eog(self._vocab_ptr, i)
        )
        self.chat_template = model.meta("tokenizer.chat_template")
        self._tokens: list[str] | None = None
        self._pieces: dict[int, bytes] = {}

    def _special_ids(self) -> list[int]:
        import llama_cpp

        eos = int(llama_cpp.llama_vocab_eos(self._vocab_ptr))
        ids = {eos} if eos >= 0 else set()
        # end-of-generation tokens are control tokens; scan the (cheap) token-type table
        for i in range(self.vocab_size):
            attr = llama_cpp.llama_vocab_get_attr(self._vocab_ptr, i)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                ids.add(i)
        return sorted(ids)

    def encode(self, text: str) -> list[int]:
        """llama.cpp's ``llama_tokenize`` with the vocabulary's own BOS rule and special
        tokens parsed (as ``llama_cpp.Llama.tokenize(add_bos=True, special=True)``)."""
        import llama_cpp

        data = text.encode("utf-8")
        size = self._n_ctx_train
        while True:
            out = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._vocab_ptr, data, len(data), out, size, True, True)
            if n >= 0:
                return list(out[:n])
            if -n <= size:
                raise EdgespecError(f"llama.cpp could not tokenize the text (code {n})")
            size = -n  # llama.cpp says how many tokens the text needs

    def piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens rendered), as llama.cpp writes them;
        cached."""
        got = self._pieces.get(token)
        if got is None:
            import ctypes

            import llama_cpp

            size = 64
            while True:
                buf = (ctypes.c_char * size)()
                n = llama_cpp.llama_token_to_piece(self._vocab_ptr, token, buf, size, 0, True)
                if n >= 0:
                    break
                size = -n  # llama.cpp says how much room the piece needs
            got = self._pieces[token] = buf.raw[:n]
        return got

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The pieces of ``ids`` joined, less one leading space after a leading BOS
        (llama-cpp-python's ``detokenize`` rule; it also cut pieces longer than 32 bytes)."""
        out = b"".join(self.piece(int(t)) for t in ids)
        if len(ids) and ids[0] == self.bos_id and out[:1] == b" ":
            return out[1:]
        return out

    def stream(self) -> TextStream:
        """Exact by construction: :meth:`decode_bytes` is a join of pieces."""
        return PieceStream(self.piece, self.bos_id)

    def vocab(self) -> list[str]:
        if self._tokens is None:
            import llama_cpp

            get = llama_cpp.llama_vocab_get_text
            self._tokens = [
                get(self._vocab_ptr, i).decode("utf-8", errors="surrogateescape")
                for i in range(self.vocab_size)
            ]
        return list(self._tokens)


class HFTokenizer(Tokenizer):
    """The ``tokenizers`` library over an HF folder's ``tokenizer.json``."""

    def __init__(self, folder: Path) -> None:
        try:
            from tokenizers import Tokenizer as RustTokenizer
        except ImportError:
            raise missing_extra("tokenizers", "export") from None
        tj = folder / "tokenizer.json"
        if not tj.exists():
            raise ModelLoadError(f"'{folder}' has no tokenizer.json; add one or use a GGUF file")
        self._tok = RustTokenizer.from_file(str(tj))
        cfg = _read_json(folder / "tokenizer_config.json")
        model_cfg = _read_json(folder / "config.json")
        gen_cfg = _read_json(folder / "generation_config.json")
        self.vocab_size = int(model_cfg.get("vocab_size") or self._tok.get_vocab_size())
        self.chat_template = cfg.get("chat_template")
        self.bos_id = self._id_of(cfg.get("bos_token"), model_cfg.get("bos_token_id"))
        eos = gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id"))
        eos_list = eos if isinstance(eos, list) else [eos]
        named = self._id_of(cfg.get("eos_token"), None)
        self.eos_ids = frozenset(int(e) for e in [*eos_list, named] if e is not None)
        self._add_bos = bool(cfg.get("add_bos_token", False))

    def _id_of(self, token: Any, fallback: Any) -> int | None:
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            tid = self._tok.token_to_id(token)
            if tid is not None:
                return int(tid)
        return None if fallback is None else int(fallback)

    def encode(self, text: str) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=True).ids)
        if self._add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._tok.decode(list(ids), skip_special_tokens=False).encode("utf-8")

    def vocab(self) -> list[str]:
        inv = {i: t for t, i in self._tok.get_vocab(with_added_tokens=True).items()}
        return [inv.get(i, "") for i in range(self.vocab_size)]


class TextStream(ABC):
    """The text of a token sequence that grows a token at a time (a generation's output).

    After :meth:`push`, :attr:`text` equals the tokenizer's ``decode`` of every token pushed
    (an incomplete UTF-8 character at the end as U+FFFD), but each push decodes only the
    newest tokens: decoding the whole output again for every new token cost 2.1 ms a token
    at 2,000 tokens with SmolLM2's vocabulary (0.13 ms at 128), more than half of a 3.2 ms
    step on the tvm backend.
    """

    text: str = ""

    @abstractmethod
    def push(self, token: int) -> str:
        """Append ``token``; returns the whole text so far (also :attr:`text`)."""


class PieceStream(TextStream):
    """For tokenizers whose bytes are their tokens' pieces joined (llama.cpp's), less one
    leading space after a leading BOS: the pieces go through an incremental UTF-8 decoder,
    whose complete characters are final; the bytes of a character still incomplete are
    shown as U+FFFD, as decoding all the bytes at once shows them.

    Args:
        piece: ``token -> bytes``.
        bos: the BOS id, or None.
    """

    def __init__(self, piece: Callable[[int], bytes], bos: int | None) -> None:
        self._piece = piece
        self._bos = bos
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._done = ""
        self._strip: bool | None = None  # None: no token yet
        self._empty = True  # no byte out yet

    def push(self, token: int) -> str:
        b = self._piece(token)
        if self._strip is None:
            self._strip = token == self._bos
        if self._empty and b:
            self._empty = False
            if self._strip and b[:1] == b" ":
                b = b[1:]
        self._done += self._utf8.decode(b)
        pending = self._utf8.getstate()[0]
        self.text = self._done + pending.decode("utf-8", errors="replace")
        return self.text


class WindowStream(TextStream):
    """Any tokenizer: each push decodes a window of the newest tokens, from the token
    before the last committed text on, and takes what the new tokens add to it (the way
    vLLM and TGI stream), committing it once it ends in a whole character. Exact where the
    text of a suffix, decoded in a window that starts a few tokens back, is what it is in
    the whole decode; where a window's decode does not begin with its head's, it decodes
    everything once and starts over from there."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._done = ""
        self._head = 0  # the window's first token
        self._read = 0  # tokens whose text is in _done

    def push(self, token: int) -> str:
        ids = self._ids
        ids.append(int(token))
        head = self._tok.decode(ids[self._head : self._read])
        window = self._tok.decode(ids[self._head :])
        if not window.startswith(head):
            self._done = self.text = self._tok.decode(ids)
            self._head, self._read = len(ids) - 1, len(ids)
            return self.text
        tail = window[len(head) :]
        if tail and not tail.endswith("\ufffd"):
            self._done += tail
            self._head, self._read, tail = self._read, len(ids), ""
        self.text = self._done + tail
        return self.text


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"'{path}' is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _onnx_tokenizer(folder: Path) -> Tokenizer:
    from edgespec.bundle import onnx_tokenizer

    return onnx_tokenizer(folder)  # type: ignore[no-any-return]


TOKENIZERS: dict[str, Any] = {
    "gguf": LlamaCppTokenizer,
    "hf": HFTokenizer,
    "onnx": _onnx_tokenizer,  # an exported ONNX artifact folder
}


def load_tokenizer(source: ModelSource) -> Tokenizer:
    """The tokenizer that matches ``source``'s kind."""
    return TOKENIZERS[source.kind](source.path)
