"""kernels/compiled.py: TVM's pool is sized before TVM is imported; tvm_backend's
set_tvm_threads sets the same variable for callers that imported tvm themselves."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = (
    "import os\n"
    "from edgespec.kernels.compiled import tvm_module\n"
    "tvm_module()\n"
    "print(os.environ['TVM_NUM_THREADS'])\n"
)


#: a benchmark's way in: tvm imported directly, then the pool sized for one thread
BENCH_CODE = (
    "import os\n"
    "import tvm\n"
    "from edgespec.runtimes.tvm_backend import set_tvm_threads\n"
    "set_tvm_threads(tvm, 1)\n"
    "print(os.environ['TVM_NUM_THREADS'])\n"
)


def _run(env: dict[str, str], code: str = CODE) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_tvm_num_threads_is_every_allowed_cpu_unless_set() -> None:
    """Unset: the CPUs this process may run on (TVM's default, half the hardware threads on
    x86, is one worker on a 2-vCPU VM, and it reads sysfs at every parallel launch); set by
    the user: kept."""
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    assert _run(env) == str(len(os.sched_getaffinity(0)))
    assert _run({**env, "TVM_NUM_THREADS": "1"}) == "1"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_set_tvm_threads_sets_tvm_num_threads_unless_set() -> None:
    """A benchmark that imports tvm itself and sizes the pool with set_tvm_threads gets the
    variable too (unset, each parallel loop read sysfs: a 576 x 576 matrix's 9-row call timed
    23 us instead of 12); a value the user set is kept."""
    pytest.importorskip("tvm")
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    assert _run(env, BENCH_CODE) == str(len(os.sched_getaffinity(0)))
    assert _run({**env, "TVM_NUM_THREADS": "1"}, BENCH_CODE) == "1"


#: tvm through the kernels' way in, then torch, then a TVM function compiled and run
TORCH_CODE = (
    "import sys\n"
    "import numpy as np\n"
    "from edgespec.kernels.compiled import tvm_module\n"
    "tvm = tvm_module()\n"
    "print('torch' in sys.modules)\n"
    "import torch\n"
    "print(torch.ones(2).sum().item())\n"
    "from tvm import te\n"
    "a = te.placeholder((4,), name='a')\n"
    "b = te.compute((4,), lambda i: a[i] * 2.0, name='b')\n"
    "f = tvm.compile(te.create_prim_func([a, b]), target='llvm')\n"
    "x = tvm.runtime.tensor(np.arange(4, dtype='float32'))\n"
    "y = tvm.runtime.empty((4,), 'float32')\n"
    "f(x, y)\n"
    "print(y.numpy().tolist())\n"
)


def test_tvm_is_imported_without_torch_and_torch_still_imports_after() -> None:
    """tvm_ffi imports torch when it can (3 of ``import tvm``'s 6 s on the 2-core VM);
    tvm_module keeps it out, and torch imported afterwards (the export pipeline) works, as
    does TVM."""
    pytest.importorskip("tvm")
    pytest.importorskip("torch")
    assert _run(dict(os.environ), TORCH_CODE).splitlines() == [
        "False",
        "2.0",
        "[0.0, 2.0, 4.0, 6.0]",
    ]
