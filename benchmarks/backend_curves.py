"""Both models' cost curves on one backend, as ``controller_replay.py replay`` takes them.

The target's verify curve (forwards of 1 .. 9 tokens) and the draft's, out to the longer
forwards its catch-ups run (the plain steps since it last drafted, fed at once), each timed
as speculation runs them (``cost_curves.measure_verify_curve``: after a one-token forward,
sizes in turns, medians). Prints ``--target-curve`` and ``--draft-curve`` arguments (ms)
and writes the seconds as JSON with ``--out``. The draft is the one ``edgespec.load`` gives
(``draft_quant`` auto: maybe its Q4_0 copy; the output says which).

    .venv/bin/python benchmarks/backend_curves.py --model qwen2.5-coder-1.5b \\
        --draft qwen2.5-coder-0.5b --backend llamacpp \\
        --out docs/results/session37/llamacpp-curves.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--backend", default="llamacpp")
    p.add_argument("--target-sizes", type=int, nargs="+", default=list(range(1, 10)))
    p.add_argument("--draft-sizes", type=int, nargs="+", default=[1, 2, 3, 5, 9, 13, 17, 25, 33])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()

    import edgespec
    from edgespec.errors import EdgespecError
    from edgespec.fileutil import atomic_path
    from edgespec.speculative import cost_curves

    try:
        rt = edgespec.load(a.model, draft=a.draft, backend=a.backend)
    except EdgespecError as exc:
        print(f"backend_curves: {exc}", file=sys.stderr)
        return 2
    assert rt.draft is not None
    out: dict[str, object] = {
        "model": a.model,
        "draft": a.draft,
        "draft_quant": rt.draft_quant,
        "backend": a.backend,
        "device": cost_curves.device_description(),
        "load_average": os.getloadavg()[0],
    }
    print(f"`benchmarks/backend_curves.py {' '.join(sys.argv[1:])}`")
    print(f"({a.backend}; draft as {rt.draft_quant or 'the file'}; {out['device']})\n")
    for role, model, sizes in (
        ("target", rt.target, a.target_sizes),
        ("draft", rt.draft, a.draft_sizes),
    ):
        tokens = cost_curves.curve_tokens(model, rt.tokenizer, 64, max(sizes))
        curve = cost_curves.measure_verify_curve(
            model, sizes, reps=a.reps, vocab=rt.tokenizer.vocab_size, tokens=tokens
        )
        out[role] = {str(n): s for n, s in sorted(curve.items())}
        ms = ",".join(f"{n}:{s * 1e3:.1f}" for n, s in sorted(curve.items()) if n)
        print(f"--{role}-curve {ms}")
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(a.out) as tmp:
            tmp.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
