"""The OpenAI wire format: request validation and the response and chunk shapes.

Validation is by hand (the few fields below), so the server needs no pydantic. Unknown
fields are ignored, as OpenAI-compatible servers do; a JSON ``null`` counts as omitted.
A bad field raises :class:`ApiError` with a one-line message naming the field and the fix.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from edgespec.errors import EdgespecError
from edgespec.runtime import make_params
from edgespec.sampling import GenerationParams
from edgespec.stats import Stats

#: engine stop reasons -> OpenAI ``finish_reason``
FINISH_REASON = {
    "eos": "stop",
    "stop_string": "stop",
    "max_new_tokens": "length",
    "context": "length",
}

#: chat roles a message may have ("developer" is OpenAI's newer name for "system")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})

MAX_STOP = 4  # as the OpenAI API


class ApiError(Exception):
    """An HTTP error answered as OpenAI's ``{"error": {...}}`` body (one line of JSON).

    Args:
        status: HTTP status code.
        message: one line naming the problem and the fix.
        type: OpenAI error type ("invalid_request_error", "authentication_error", ...).
        code: a short machine-readable code, or None.
        param: the request field at fault, or None.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.status, self.type, self.code, self.param = status, type, code, param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def _json_type(v: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer"}
    return "null" if v is None else names.get(type(v), "number")


def _typed(body: dict[str, Any], name: str, kind: str, default: Any = None) -> Any:
    """``body[name]`` checked against ``kind`` ("integer", "number", "boolean", "string",
    "object"); ``default`` when absent or null."""
    v = body.get(name)
    if v is None:
        return default
    ok = {
        "integer": isinstance(v, int) and not isinstance(v, bool),
        "number": isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": isinstance(v, bool),
        "string": isinstance(v, str),
        "object": isinstance(v, dict),
    }[kind]
    if not ok:
        raise bad_request(f"'{name}' must be {_article(kind)} {kind}, got {_json_type(v)}", name)
    return v


def _article(kind: str) -> str:
    return "an" if kind[0] in "aeiou" else "a"


@dataclass(frozen=True)
class CompletionRequest:
    """One validated ``/v1/completions`` or ``/v1/chat/completions`` request.

    Attributes:
        model: the requested model id, or None (the server's only model).
        prompt: completions: the text, or token ids used as they are; chat: None.
        messages: chat: [{"role", "content"}] with string contents; completions: None.
        max_tokens: the requested limit on new tokens, or None (the endpoint's default).
        params: sampling parameters (``max_new_tokens`` is a placeholder until the prompt
            length is known; see :meth:`with_budget`).
        stream: answer with server-sent events.
        include_usage: streaming: send a last chunk with ``usage`` (``stream_options``).
    """

    model: str | None
    prompt: str | list[int] | None
    messages: list[dict[str, str]] | None
    max_tokens: int | None
    params: GenerationParams
    stream: bool
    include_usage: bool

    def with_budget(self, max_new_tokens: int) -> GenerationParams:
        return make_params(self.params, max_new_tokens=max_new_tokens)


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {_json_type(body)}")
    return body


def parse_request(body: dict[str, Any], *, chat: bool) -> CompletionRequest:
    """Validate the fields edgespec uses; the others are ignored."""
    model = _typed(body, "model", "string")
    prompt = None if chat else _prompt(body)
    messages = _messages(body) if chat else None
    max_tokens = _typed(body, "max_tokens", "integer")
    if chat and max_tokens is None:
        max_tokens = _typed(body, "max_completion_tokens", "integer")
    if max_tokens is not None and max_tokens < 1:
        raise bad_request(f"'max_tokens' must be >= 1, got {max_tokens}", "max_tokens")
    n = _typed(body, "n", "integer", 1)
    if n != 1:
        raise bad_request(f"only n=1 is supported, got n={n}; send one request per choice", "n")
    stream = _typed(body, "stream", "boolean", False)
    stream_options = _typed(body, "stream_options", "object", {})
    include_usage = _typed(stream_options, "include_usage", "boolean", False)
    try:
        params = make_params(
            max_new_tokens=1,
            temperature=float(_typed(body, "temperature", "number", 1.0)),
            top_p=float(_typed(body, "top_p", "number", 1.0)),
            top_k=_typed(body, "top_k", "integer", 0),  # an extension, as llama.cpp's server
            seed=_typed(body, "seed", "integer"),
            stop=_stop(body),
        )
    except EdgespecError as exc:
        raise bad_request(str(exc)) from None
    return CompletionRequest(model, prompt, messages, max_tokens, params, stream, include_usage)


def _prompt(body: dict[str, Any]) -> str | list[int]:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str | list):
        p = p[0]  # a batch of one
    if isinstance(p, str):
        if not p:
            raise bad_request("'prompt' is empty; send some text to continue", "prompt")
        return p
    if isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        return list(p)
    if p is None:
        raise bad_request("'prompt' is required: a string (or a list of token ids)", "prompt")
    if isinstance(p, list) and p and all(isinstance(x, str | list) for x in p):
        raise bad_request(
            f"batched prompts are not supported (got {len(p)}); send one prompt per request",
            "prompt",
        )
    raise bad_request(
        f"'prompt' must be a string or a non-empty list of token ids, got {_json_type(p)}",
        "prompt",
    )


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        got = "nothing" if msgs is None else _json_type(msgs)
        raise bad_request(
            f"'messages' must be a non-empty array of {{role, content}} objects, got {got}",
            "messages",
        )
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(f"'{where}' must be an object, got {_json_type(m)}", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise bad_request(
                f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}",
                "messages",
            )
        out.append(
            {"role": "system" if role == "developer" else role, "content": _content(m, where)}
        )
    return out


def _content(m: dict[str, Any], where: str) -> str:
    """A message's text: a string, or the text parts of a content array joined."""
    c = m.get("content")
    if c is None and m.get("role") == "assistant":
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in c
    ):
        return "".join(p["text"] for p in c)
    raise bad_request(
        f"'{where}.content' must be a string or an array of text parts, got {_json_type(c)}; "
        "images and audio are not supported",
        "messages",
    )


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    s = body.get("stop")
    if s is None:
        return ()
    if isinstance(s, str):
        return (s,)
    if isinstance(s, list) and all(isinstance(x, str) for x in s):
        if len(s) > MAX_STOP:
            raise bad_request(
                f"'stop' has {len(s)} strings; at most {MAX_STOP} are allowed", "stop"
            )
        return tuple(s)
    raise bad_request(
        f"'stop' must be a string or an array of strings, got {_json_type(s)}", "stop"
    )


# ---- responses ---------------------------------------------------------------------------


def usage(stats: Stats) -> dict[str, int]:
    """OpenAI's ``usage`` block."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
    }


def acceptance_rate(stats: Stats) -> float | None:
    """Accepted draft tokens / proposed draft tokens; None when nothing was drafted."""
    proposed = sum(stats.k_trace)
    if not proposed:
        return None
    return sum(n * c for n, c in stats.accept_hist.items()) / proposed


def extension(stats: Stats, queue_s: float) -> dict[str, Any]:
    """The ``edgespec`` field: how this response was made.

    Units: seconds for ``*_s``, new tokens per decode second for ``tokens_per_s``.
    """
    return {
        "strategy": stats.strategy,
        "backend": stats.backend,
        "lossy": stats.lossy,
        "tokens_per_s": stats.tokens_per_s,
        "ttft_s": stats.ttft_s,
        "queue_s": queue_s,
        "acceptance_rate": acceptance_rate(stats),
        "mean_accepted_per_forward": stats.mean_accepted_per_forward,
        "accept_hist": {str(k): v for k, v in sorted(stats.accept_hist.items())},
        "target_forwards": stats.target_forwards,
        "stop_reason": stats.stop_reason,
    }


class Shape:
    """The response and chunk objects of one endpoint (subclasses: text and chat)."""

    object: ClassVar[str]
    chunk_object: ClassVar[str]
    id_prefix: ClassVar[str]

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def choice(self, text: str, finish: str | None) -> dict[str, Any]:
        raise NotImplementedError

    def delta(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def response(self, text: str, stats: Stats, queue_s: float) -> dict[str, Any]:
        """The whole (non-streaming) response."""
        d = self._envelope(self.object, [self.choice(text, FINISH_REASON[stats.stop_reason])])
        d["usage"] = usage(stats)
        d["edgespec"] = extension(stats, queue_s)
        return d

    def chunk(self, text: str | None, first: bool = False) -> dict[str, Any]:
        """A streaming chunk carrying the text delta ``text``."""
        return self._envelope(self.chunk_object, [self.delta(text, None, first)])

    def opening_chunks(self) -> list[dict[str, Any]]:
        """Chunks sent before the first token (chat: the assistant role)."""
        return []

    def final_chunks(
        self, stats: Stats, queue_s: float, include_usage: bool
    ) -> list[dict[str, Any]]:
        """The chunk with ``finish_reason`` and the ``edgespec`` stats, then (when asked
        for) OpenAI's usage-only chunk with an empty ``choices``."""
        last = self._envelope(
            self.chunk_object, [self.delta(None, FINISH_REASON[stats.stop_reason], False)]
        )
        last["edgespec"] = extension(stats, queue_s)
        out = [last]
        if include_usage:
            tail = self._envelope(self.chunk_object, [])
            tail["usage"] = usage(stats)
            out.append(tail)
        return out


class TextShape(Shape):
    """``/v1/completions``: ``text_completion`` objects."""

    object = chunk_object = "text_completion"
    id_prefix = "cmpl"

    def choice(self, text: str, finish: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def delta(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        return self.choice(text or "", finish)


class ChatShape(Shape):
    """``/v1/chat/completions``: ``chat.completion`` and ``chat.completion.chunk`` objects."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def choice(self, text: str, finish: str | None) -> dict[str, Any]:
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }

    def opening_chunks(self) -> list[dict[str, Any]]:
        return [self.chunk("", first=True)]

    def delta(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        d: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            d["content"] = text
        return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <one line of JSON>`` and a blank line."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()
