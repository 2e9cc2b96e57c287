"""The JSON schema of results.json (draft 2020-12), and a validator.

:func:`validate` uses the ``jsonschema`` package when it is installed (the [dev] extra) and
otherwise a small built-in checker of the keywords used here (type, required, properties,
additionalProperties, items, enum, minimum), so the core keeps needing only NumPy.
``edgespec bench --schema`` prints the schema.
"""

from __future__ import annotations

from typing import Any

from edgespec.errors import EdgespecError

_NUM = {"type": "number"}
_NUM_OR_NULL = {"type": ["number", "null"]}
_STR_OR_NULL = {"type": ["string", "null"]}
_HIST = {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}

#: every field of a run record, in the order results.csv lists them (notes excepted)
RUN_PROPERTIES: dict[str, Any] = {
    "run": {"type": "integer", "minimum": 0},
    "prompt": {"type": "string"},
    "kind": {"type": "string"},
    "label": {"type": "string"},
    "backend": {"type": "string"},
    "strategy": {"type": "string"},
    "lossy": {"type": "boolean"},
    "new_tokens": {"type": "integer", "minimum": 0},
    "wall_s": {"type": "number", "minimum": 0},
    "ttft_s": {"type": "number", "minimum": 0},
    "cpu_s": {"type": "number", "minimum": 0},
    "tok_s": _NUM_OR_NULL,
    "decode_tok_s": _NUM_OR_NULL,
    "ratio": _NUM_OR_NULL,
    "cpu_s_per_token": _NUM_OR_NULL,
    "cpu_ratio": _NUM_OR_NULL,
    "peak_rss_mb": _NUM,
    "energy_kind": {"enum": ["measured", "estimated"]},
    "energy_j": {"type": "number", "minimum": 0},
    "j_per_token": _NUM_OR_NULL,
    "j_per_accepted": _NUM_OR_NULL,
    "energy_ratio": _NUM_OR_NULL,
    "target_forwards": {"type": "integer", "minimum": 0},
    "accepted_draft_tokens": {"type": "integer", "minimum": 0},
    "mean_accepted": _NUM,
    "agree_baseline": {"type": "number", "minimum": 0, "maximum": 1},
    "agree_plain": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "accept_hist": _HIST,
    "k_trace": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    # per step, in step with k_trace: the proposer that drafted ("" for a plain step) and
    # the draft tokens accepted
    "proposer_trace": {"type": "array", "items": {"type": "string"}},
    "accepted_trace": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    # two-model strategies (null otherwise): share of tokens written while the large model
    # was in charge, and model switches
    "large_share": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "switches": {"type": ["integer", "null"], "minimum": 0},
    "first_divergence": {"type": ["integer", "null"], "minimum": 0},
    "divergence_gap": _NUM_OR_NULL,
    "near_tie": {"type": ["boolean", "null"]},
    # the near-tie bound the divergence was judged by (logits) and where it came from:
    # "calibrate" (stored with the cost curve) or "measured" (measured in this run)
    "near_tie_bound": {"type": "number", "minimum": 0},
    "near_tie_bound_source": {"enum": ["calibrate", "measured"]},
    "notes": {"type": "array", "items": {"type": "string"}},
}
#: run-record fields that results.json files written before them may lack
RUN_OPTIONAL = frozenset(
    {
        "large_share",
        "switches",
        "proposer_trace",
        "accepted_trace",
        "first_divergence",
        "divergence_gap",
        "near_tie",
        "near_tie_bound",
        "near_tie_bound_source",
    }
)

RUN = {
    "type": "object",
    "required": [f for f in RUN_PROPERTIES if f not in RUN_OPTIONAL],
    "properties": RUN_PROPERTIES,
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "edgespec-bench/1",
    "title": "edgespec bench results",
    "type": "object",
    "required": [
        "schema",
        "complete",
        "error",
        "started",
        "finished",
        "command",
        "command_line",
        "machine",
        "versions",
        "settings",
        "energy",
        "baseline",
        "configs",
        "prompts",
        "runs",
    ],
    "properties": {
        "schema": {"enum": ["edgespec-bench/1"]},
        "complete": {"type": "boolean"},
        "error": _STR_OR_NULL,
        "started": {"type": "string"},
        "finished": _STR_OR_NULL,
        "command": {"type": "array", "items": {"type": "string"}},
        "command_line": {"type": "string"},
        "machine": {
            "type": "object",
            "required": ["description", "fingerprint", "platform", "cpu_count"],
            "properties": {
                "description": {"type": "string"},
                "fingerprint": {"type": "string"},
                "platform": {"type": "string"},
                "cpu_count": {"type": ["integer", "null"]},
            },
        },
        "versions": {
            "type": "object",
            "required": ["edgespec", "python"],
            "additionalProperties": _STR_OR_NULL,
        },
        "settings": {
            "type": "object",
            "required": ["model", "strategies", "backends", "runs", "warmup", "max_new_tokens"],
            "properties": {
                "runs": {"type": "integer", "minimum": 1},
                "warmup": {"type": "integer", "minimum": 0},
                "max_new_tokens": {"type": "integer", "minimum": 1},
                "strategies": {"type": "array", "items": {"type": "string"}},
                "backends": {"type": "array", "items": _STR_OR_NULL},
            },
        },
        "energy": {
            "type": "object",
            "required": ["kind", "source"],
            "properties": {
                "kind": {"enum": ["measured", "estimated"]},
                "source": {"enum": ["rapl", "battery", "powermetrics", "estimate"]},
                "notes": {"type": "array", "items": {"type": "string"}},
            },
        },
        "baseline": {
            "type": "object",
            "required": ["label", "description"],
            "properties": {"label": {"type": "string"}, "description": {"type": "string"}},
        },
        "configs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["label", "strategy", "backend", "options", "lossy"],
                "properties": {
                    "label": {"type": "string"},
                    "strategy": {"type": "string"},
                    "backend": _STR_OR_NULL,
                    "options": {"type": ["object", "null"]},
                    "lossy": {"type": "boolean"},
                },
            },
        },
        "prompts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["id", "kind", "workload", "chat"],
                "properties": {
                    "id": {"type": "string"},
                    "kind": {"type": "string"},
                    "workload": {"type": "string"},
                    "chat": {"type": "boolean"},
                    "prompt_tokens": {"type": "integer", "minimum": 1},
                },
            },
        },
        "runs": {"type": "array", "items": RUN},
    },
}


def validate(doc: Any) -> None:
    """Raise :class:`EdgespecError` naming the first problem when ``doc`` breaks the schema."""
    try:
        import jsonschema
    except ImportError:
        errors = check(doc, SCHEMA)
        if errors:
            raise EdgespecError(f"results.json does not match the schema: {errors[0]}") from None
        return
    try:
        jsonschema.validate(doc, SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise EdgespecError(
            f"results.json does not match the schema at {where}: {exc.message}"
        ) from None


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[name])


def check(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Problems of ``value`` against ``schema`` (the keywords :data:`SCHEMA` uses)."""
    where = path or "(top)"
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return [f"{where}: {value!r} is not of type {' or '.join(types)}"]
    errs: list[str] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errs.append(f"{where}: {value} is less than {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errs.append(f"{where}: {value} is greater than {schema['maximum']}")
    if isinstance(value, dict):
        errs += [
            f"{where}: '{k}' is required" for k in schema.get("required", []) if k not in value
        ]
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for k, v in value.items():
            if k in props:
                errs += check(v, props[k], f"{path}/{k}")
            elif isinstance(extra, dict):
                errs += check(v, extra, f"{path}/{k}")
            elif extra is False:
                errs.append(f"{where}: unexpected property '{k}'")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += check(v, schema["items"], f"{path}/{i}")
    return errs
