"""TVM targets for this device, and MetaSchedule tuning of the kernels (records cached per
device under ``$EDGESPEC_HOME/tvm/<device fingerprint>/``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tvm.target import Target


def host_cpu() -> str:
    """LLVM's name of this machine's CPU (``emeraldrapids``, ``znver4``, ``cortex-a76``)."""
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def host_target(num_cores: int | None = None) -> Target:
    """``Target({"kind": "llvm", "mcpu": <this CPU>, "num-cores": <cores>})``.

    Args:
        num_cores: threads the kernels may use (default: ``os.cpu_count()``).
    """
    from tvm.target import Target

    cores = num_cores or os.cpu_count() or 1
    return Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": cores})
