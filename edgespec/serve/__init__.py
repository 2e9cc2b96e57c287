"""``edgespec serve``: an OpenAI-compatible HTTP server over a loaded :class:`Runtime`.

Modules: :mod:`.options` (the server's settings), :mod:`.protocol` (request validation and
the OpenAI response shapes), :mod:`.worker` (one generation at a time per model, in a
thread, behind a bounded queue), :mod:`.metrics` (Prometheus text), :mod:`.app` (the
starlette app) and :mod:`.cli` (the command). starlette and uvicorn come with the ``serve``
extra and are imported only here, never by the core.
"""
