"""Exporters: turn a GGUF file or an HF folder into the artifacts a backend runs.

Import the submodules directly (``edgespec.export.hf_onnx``); each keeps its heavy imports
(torch, transformers, optimum) inside its functions.
"""
