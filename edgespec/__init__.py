"""edgespec: an on-device LLM inference runtime with device-aware speculative decoding.

Quick start::

    import edgespec
    rt = edgespec.load()                      # smollm2-135m, best installed backend
    print(rt.generate("Write a haiku about the sea", max_new_tokens=48).text)
    for piece in rt.stream("Once upon a time", max_new_tokens=32):
        print(piece, end="", flush=True)
"""

from __future__ import annotations

from edgespec.engine import GenerationResult
from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime, load
from edgespec.sampling import GenerationParams

__version__ = "0.1.0"
__all__ = ["EdgespecError", "GenerationParams", "GenerationResult", "Runtime", "load"]
