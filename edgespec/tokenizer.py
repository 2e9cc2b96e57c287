"""Tokenizers: llama.cpp's own for GGUF models, HF ``tokenizers`` for HF folders.

For GGUF files the token ids must equal llama.cpp's (stack.md: transformers' GGUF tokenizer
adds a BOS for SmolLM2 and splits Gemma 3 words wrongly), so we load the file with
``llama_cpp.Llama(vocab_only=True)``, which reads only the vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
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
    """llama.cpp's tokenizer for a GGUF file (vocabulary only, no weights loaded)."""

    def __init__(self, path: Path) -> None:
        from edgespec.gguf_file import quick_check

        quick_check(path)
        try:
            import llama_cpp
        except ImportError:
            raise missing_extra("llama-cpp-python", "llamacpp") from None
        try:
            with quiet_stderr():
                self._llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        except Exception as exc:
            raise ModelLoadError(
                f"llama.cpp could not read the vocabulary of '{path}' ({exc}); "
                "the file is corrupt or not a language model: re-download it"
            ) from None
        self._vocab_ptr = self._llm._model.vocab
        self.vocab_size = int(self._llm.n_vocab())
        bos = int(self._llm.token_bos())
        self.bos_id = bos if bos >= 0 else None
        self.eos_ids = frozenset(
            i for i in self._special_ids() if llama_cpp.llama_vocab_is_eog(self._vocab_ptr, i)
        )
        self.chat_template = self._llm.metadata.get("tokenizer.chat_template")
        self._tokens: list[str] | None = None

    def _special_ids(self) -> list[int]:
        import llama_cpp

        eos = int(self._llm.token_eos())
        ids = {eos} if eos >= 0 else set()
        # end-of-generation tokens are control tokens; scan the (cheap) token-type table
        for i in range(self.vocab_size):
            attr = llama_cpp.llama_vocab_get_attr(self._vocab_ptr, i)
            if attr & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                ids.add(i)
        return sorted(ids)

    def encode(self, text: str) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(self._llm.detokenize(list(ids), special=True))

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
