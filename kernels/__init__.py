"""TVM TensorIR kernels with their NumPy references and tuning records (``edgespec.kernels``).

Empty for now: the TVM backend and tuned small-batch kernels are a later step (see
docs/benchmarks.md, "What would reach the targets"). The package exists so that the layout
of the design doc imports everywhere (``edgespec/kernels -> ../kernels``).
"""
