"""Declarative strategy options: one frozen dataclass per strategy, one declaration per option.

Each field is declared with :func:`option`: its default, a help text, and optionally its
command-line flags and a converter. From that one declaration come

- validation (the converter runs in ``__post_init__``; cross-field checks in ``validate``),
- ``to_dict`` / ``from_dict`` (JSON round trip; unknown keys are a one-line error),
- the bench spec syntax ``name:key=value:...`` (:func:`parse_spec`; sequences join with
  ``+``, e.g. ``speculative:proposers=ngram+recycle:k=4``),
- argparse flags (:func:`add_flags`), shared between strategies that use the same flag, and
  :func:`options_from_args`, which refuses a flag the chosen strategy does not use.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np

from edgespec.errors import EdgespecError

OptionsT = TypeVar("OptionsT", bound="Options")


def option(
    default: Any,
    help: str,
    *,
    flags: Sequence[str] | None = None,
    check: Callable[[Any, str], Any] | None = None,
    dump: Callable[[Any], Any] | None = None,
    many: bool = False,
    metavar: str | None = None,
    text: bool = False,
) -> Any:
    """A field of an :class:`Options` class.

    Args:
        default: the default value (immutable).
        help: one line for ``--help`` (and the docs).
        flags: command-line spellings; None: ``--`` + the name with dashes; ``()``: no flag
            (set it through the API or a bench spec only).
        check: ``check(value, name) -> value``: validate and normalise, raising a one-line
            :class:`EdgespecError`.
        dump: value -> JSON-safe value for ``to_dict`` (default: tuples and sets become
            lists, anything else is kept).
        many: the value is a sequence of names: the flag may repeat and the bench spec joins
            them with ``+``.
        metavar: the value's name in ``--help``.
        text: the value written as text is kept as text (``none`` is a name, not None).
    """
    meta = {
        "help": help,
        "flags": flags,
        "check": check,
        "dump": dump,
        "many": many,
        "metavar": metavar,
        "text": text,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Options:
    """Base of every strategy's options (see the module docstring).

    Subclasses are frozen dataclasses whose fields come from :func:`option`, set ``kind``
    (the word used in errors: "unknown speculative option(s) ...") and may override
    :meth:`validate` for checks that involve several fields.
    """

    kind: ClassVar[str] = "strategy"

    def __post_init__(self) -> None:
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(getattr(self, f.name), f.name))
        self.validate()

    def validate(self) -> None:
        """Checks that involve several fields (one-line :class:`EdgespecError`)."""

    def to_dict(self) -> dict[str, Any]:
        """Every option, JSON-safe."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            dump = f.metadata.get("dump")
            out[f.name] = dump(value) if dump is not None else _plain(value)
        return out

    @classmethod
    def from_dict(cls: type[OptionsT], d: Mapping[str, Any]) -> OptionsT:
        """The options in ``d`` (missing keys take their defaults); unknown keys are an
        error that lists the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise EdgespecError(
                f"unknown {cls.kind} option(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**d)

    @classmethod
    def parse_value(cls, name: str, text: str) -> Any:
        """The value of option ``name`` written as text (a bench spec or a flag): ``true``,
        ``false``, ``none``, an integer, a number, else the text; names joined by ``+`` for
        a sequence option. The option's check then validates it."""
        spec = {f.name: f for f in fields(cls)}.get(name)
        if spec is not None and spec.metadata.get("many"):
            return [v for v in text.split("+") if v]
        if spec is not None and spec.metadata.get("text"):
            return text
        return parse_text(text)


def parse_text(text: str) -> Any:
    """``true``/``false`` -> bool, ``none`` -> None, integers, numbers (``inf`` too), else
    the text itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return list(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


# --- checks shared by option classes ---------------------------------------------------------


def number(value: Any, name: str) -> float:
    """``value`` as a float (+inf and -inf allowed); one-line error for NaN or non-numbers."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise EdgespecError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(x):
        raise EdgespecError(f"{name} must be a number (or +inf/-inf), got NaN")
    return x


def integer(value: Any, name: str, low: int) -> int:
    """``value`` as an int >= ``low``; one-line error otherwise (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EdgespecError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def at_least(low: int) -> Callable[[Any, str], int]:
    """A check: an integer >= ``low``."""
    return lambda value, name: integer(value, name, low)


def names(value: Any, name: str) -> tuple[str, ...] | None:
    """A check: None, or a non-empty sequence of names (a tuple)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split("+") if v]
    out = tuple(str(v) for v in value)
    if not out:
        raise EdgespecError(f"{name} needs at least one name")
    return out


# --- the bench spec syntax -------------------------------------------------------------------


def parse_spec(spec: str, options_class: type[Options] | None) -> tuple[str, dict[str, Any]]:
    """``"name[:key=value...]"`` -> (name, {key: value}), values parsed by ``options_class``
    and checked by building the options (``options_class`` None: no options allowed)."""
    name, *parts = spec.strip().split(":")
    opts: dict[str, Any] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise EdgespecError(f"strategy option '{part}' in '{spec}' is not key=value")
        opts[key] = value if options_class is None else options_class.parse_value(key, value)
    if opts and options_class is None:
        raise EdgespecError(f"strategy '{name}' takes no options, got {', '.join(sorted(opts))}")
    if options_class is not None:
        options_class.from_dict(opts)
    return name, opts


# --- command-line flags ----------------------------------------------------------------------


@dataclass
class Flag:
    """One command-line flag and the options it sets, per strategy.

    Attributes:
        spellings: e.g. ``("--k",)``.
        dest: the argparse destination (``opt_k``), apart from every other flag's.
        uses: {strategy: option name}.
        helps: {help text: [strategies]} in the order first seen.
        many: repeatable (a sequence option); boolean: ``--x`` / ``--no-x``.
        metavar: the value's name.
    """

    spellings: tuple[str, ...]
    dest: str
    uses: dict[str, str] = field(default_factory=dict)
    helps: dict[str, list[str]] = field(default_factory=dict)
    many: bool = False
    boolean: bool = False
    metavar: str | None = None

    def help(self) -> str:
        return "; ".join(f"{', '.join(who)}: {text}" for text, who in self.helps.items())


def collect_flags(classes: Mapping[str, type[Options] | None]) -> list[Flag]:
    """The flags of every strategy's options, merged by spelling (first seen first)."""
    flags: dict[tuple[str, ...], Flag] = {}
    for strategy, cls in classes.items():
        for f in fields(cls) if cls is not None else ():
            spellings = _spellings(f)
            if not spellings:
                continue
            flag = flags.get(spellings)
            if flag is None:
                dest = "opt_" + spellings[0].lstrip("-").replace("-", "_")
                flag = flags[spellings] = Flag(
                    spellings,
                    dest,
                    many=bool(f.metadata.get("many")),
                    boolean=isinstance(f.default, bool),
                    metavar=f.metadata.get("metavar"),
                )
            flag.uses[strategy] = f.name
            flag.helps.setdefault(f.metadata.get("help", ""), []).append(strategy)
    return list(flags.values())


def _spellings(f: Field[Any]) -> tuple[str, ...]:
    given = f.metadata.get("flags", ())
    if given is None:
        return ("--" + f.name.replace("_", "-"),)
    return tuple(given)


def add_flags(p: argparse.ArgumentParser | Any, flags: Iterable[Flag]) -> None:
    """Add ``flags`` to a parser (or an argument group); every default is None, so that
    :func:`options_from_args` can tell which ones the user gave."""
    for flag in flags:
        kw: dict[str, Any] = {"dest": flag.dest, "default": None, "help": flag.help()}
        if flag.boolean:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["metavar"] = flag.metavar or flag.dest[4:].upper()
            if flag.many:
                kw["action"] = "append"
        p.add_argument(*flag.spellings, **kw)


def options_from_args(
    a: argparse.Namespace,
    strategy: str,
    options_class: type[Options] | None,
    flags: Iterable[Flag],
) -> dict[str, Any]:
    """{option: value} of the flags the user gave for ``strategy``, checked by building the
    options; a given flag that ``strategy`` does not use is a one-line error."""
    given: dict[str, Any] = {}
    for flag in flags:
        raw = getattr(a, flag.dest, None)
        if raw is None:
            continue
        if strategy not in flag.uses:
            users = ", ".join(sorted(flag.uses))
            raise EdgespecError(
                f"{flag.spellings[0]} does not apply to --strategy {strategy} "
                f"(it is an option of {users})"
            )
        assert options_class is not None  # a strategy without options uses no flag
        name = flag.uses[strategy]
        if flag.boolean:
            given[name] = bool(raw)
        elif flag.many:
            given[name] = [v for text in raw for v in options_class.parse_value(name, text)]
        else:
            given[name] = options_class.parse_value(name, raw)
    if options_class is not None:
        options_class.from_dict(given)
    return given


__all__ = [
    "Flag",
    "Options",
    "add_flags",
    "at_least",
    "collect_flags",
    "integer",
    "names",
    "number",
    "option",
    "options_from_args",
    "parse_spec",
    "parse_text",
]
