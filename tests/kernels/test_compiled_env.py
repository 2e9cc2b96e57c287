"""kernels/compiled.py: TVM's pool is sized before TVM is imported."""

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


def _run(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True
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
