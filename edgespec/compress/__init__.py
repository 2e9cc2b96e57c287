"""Context compression: shorter prompts for the target, labelled lossy.

- :mod:`edgespec.compress.core`: self-information scoring and coarse-to-fine selection.
- :mod:`edgespec.compress.prompt`: the compressor model of a runtime, and what the target
  receives.

``rt.generate(prompt, compress=0.5)`` or ``context_budget=1024``; ``edgespec generate
--compress 0.5 | --context-budget 1024 [--compressor MODEL]``. See docs/compression.md.
"""

from edgespec.compress.core import CompressOptions, select, self_information, split_question
from edgespec.compress.prompt import Compressed, Compression, Compressor, compress_prompt

__all__ = [
    "CompressOptions",
    "Compressed",
    "Compression",
    "Compressor",
    "compress_prompt",
    "select",
    "self_information",
    "split_question",
]
