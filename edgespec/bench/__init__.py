"""Benchmarking and profiling: ``edgespec bench``, ``edgespec profile``, ``edgespec report``.

- :mod:`~edgespec.bench.runner`: the interleaved benchmark loop and results.json.
- :mod:`~edgespec.bench.energy`: RAPL, battery and powermetrics meters, and the estimate.
- :mod:`~edgespec.bench.report`: summary, report.md and results.csv from results.json.
- :mod:`~edgespec.bench.plots`: the PNG plots (matplotlib, Agg).
- :mod:`~edgespec.bench.profiler`: one generation's per-phase timeline.
- :mod:`~edgespec.bench.schema`: the JSON schema of results.json and a validator.

Kept light at import: the CLI imports :mod:`edgespec.bench.cli` on every start.
"""
