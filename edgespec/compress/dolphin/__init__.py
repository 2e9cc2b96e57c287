"""Dolphin-style memory compression (lossy): the compressor's pooled hidden states become N
input embeddings of the target through a trained projector.

- :mod:`~edgespec.compress.dolphin.memory`: the projector (NumPy), pooling, and what the
  target receives at generation (``--compress memory``).
- :mod:`~edgespec.compress.dolphin.train`: ``edgespec train-compressor`` (torch, CPU).
- :mod:`~edgespec.compress.dolphin.torch_lm`: the frozen target in torch, sharing the NumPy
  reference's weights.

See docs/compression.md.
"""
