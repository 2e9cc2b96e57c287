"""Chunk-sparse feed-forward networks (``edgespec.sparse``).

- :mod:`~edgespec.sparse.blockffn`: BlockFFN models (Song et al. 2025) read from their
  authors' HF format (MiniCPM config + safetensors) into a NumPy forward whose FFN computes
  only the union of the expert blocks a chunk activates.
- :mod:`~edgespec.sparse.stats`: token-level and chunk-level sparsity, per layer and per
  chunk size.
- :mod:`~edgespec.sparse.tiny`: tiny random BlockFFN models in that exact format, with router
  offsets fitted to a target token-level sparsity, and optionally routers built to have
  chunk-level sparsity (``ChunkLocalRouter``) (tests and benchmarks).
- :mod:`~edgespec.sparse.backend`: the ``blockffn`` backend (``--backend blockffn``).
- :mod:`~edgespec.sparse.kernel`: the ``sparse_ffn`` / ``dense_ffn`` kernel chosen by name
  (``--sparse-kernel numpy|tvm|tvm-q8``).
- :mod:`~edgespec.sparse.neuron`, :mod:`~edgespec.sparse.layout`, :mod:`~edgespec.sparse.cli`:
  training-free neuron thresholds for dense models (``edgespec sparsify``, lossy) and their
  place in a bundle; :mod:`~edgespec.sparse.methods` is the registry of what is thresholded
  (``cats``, ``act-up``, ``teal``); :mod:`~edgespec.sparse.dense` runs a ``cats`` bundle
  chunk-sparse.

The kernels (``sparse_ffn``, ``dense_ffn``) come from :data:`edgespec.kernels.KERNELS`.
"""
