"""What every compiled (TVM) kernel in ``kernels/`` shares: the row buckets, importing TVM,
64-byte aligned operands, and a cache of functions compiled on first use per shape.

A kernel module defines its shape dataclass (with a ``key`` for tuning records) and a
builder ``shape -> PrimFunc``; :class:`CompiledKernels` compiles one function per shape for
the target, through the module's scheduler (untuned, or MetaSchedule's records:
:mod:`edgespec.kernels.tuning`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from edgespec.errors import EdgespecError, missing_extra

if TYPE_CHECKING:
    from tvm.target import Target
    from tvm.tir import PrimFunc

    from edgespec.kernels.tuning import Scheduler

#: the row counts a kernel is compiled for; M rows run in the smallest bucket >= M
BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: the data alignment TVM's compiled code assumes of every operand (``from_dlpack`` checks it)
ALIGN = 64

S = TypeVar("S")


def use_every_core() -> None:
    """Let TVM's thread pool have a worker per core this process may run on.

    TVM sizes its pool once, when first used, to ``TVM_NUM_THREADS`` or else half the
    hardware threads on x86 (it assumes hyper-threading): one worker on a 2-vCPU VM, where
    ``runtime.config_threadpool(0, 2)`` then still runs every parallel loop on one thread
    (measured: a 512-token prefill used 1.45 CPU-s in 1.45 s wall at "2 threads"). Unset, TVM
    also asks the C++ library for the hardware thread count at every parallel launch, which
    glibc answers by reading ``/sys/devices/system/cpu/online`` (an open, a read and a close
    per parallel loop, seen with strace). A value the user set is kept."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("TVM_NUM_THREADS", str(cores or 1))


@contextlib.contextmanager
def torch_kept_out() -> Iterator[None]:
    """Within: ``import torch`` raises ImportError, unless torch is already imported.

    ``tvm_ffi/__init__.py`` imports torch whenever it can (its comment: a symbol clash seen
    on Windows with Python 3.12 and torch 2.9), though nothing edgespec runs through TVM
    touches a torch tensor: on this 2-core VM that is 3.1 of ``import tvm``'s 6.3 s (docs/tvm.md,
    "Start-up time"). torch imported later, by the export pipeline, works as before; only
    tvm_ffi's own torch-tensor conversions are then off, and edgespec hands TVM NumPy arrays.
    """
    if "torch" in sys.modules or "tvm_ffi" in sys.modules:
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


@functools.cache
def tvm_module() -> Any:
    """``import tvm`` (torch kept out: :func:`torch_kept_out`), or the one-line error naming
    the extra to install (once per process: the kernels' wrappers call this on every call).
    The backend, tuning and export call it before any other ``import tvm``."""
    use_every_core()
    try:
        with torch_kept_out():
            import tvm
    except ImportError as e:  # pragma: no cover - depends on the install
        raise missing_extra("apache-tvm", "tvm") from e
    return tvm


def bucket_for(m_rows: int, buckets: Sequence[int], what: str, fix: str) -> int:
    """The smallest bucket that holds ``m_rows`` rows; else one line naming ``what`` kernel
    and the ``fix``."""
    for b in sorted(buckets):
        if b >= m_rows:
            return b
    raise EdgespecError(
        f"{m_rows} rows exceed the largest {what} bucket ({max(buckets)}); {fix} or add a bucket"
    )


def aligned_zeros(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Zeros whose data starts on an :data:`ALIGN`-byte boundary (NumPy guarantees 16)."""
    dt = np.dtype(dtype)
    n = math.prod(shape) * dt.itemsize
    raw = np.zeros(n + ALIGN, np.uint8)
    at = -address(raw) % ALIGN
    return raw[at : at + n].view(dt).reshape(shape)


#: the huge page size :class:`HugeArena` aligns to (x86-64's and arm64's 2 MiB)
HUGE_PAGE = 2 << 20


def stack_buffer(shape: tuple[Any, ...], dtype: str) -> Any:
    """A kernel's small scratch buffer (accumulators, lookup tables), for use inside a
    TVMScript function: ``T.alloc_buffer`` in the default "global" scope.

    TVM lowers a "global" allocation of constant size under 1 KB on the CPU to a stack
    alloca, which LLVM keeps in registers; a "local" one (``T.alloc_local``) becomes a
    ``TVMBackendAllocWorkspace`` call, heap memory that every update is stored to and
    reloaded from. On the int8 matmuls that was about a dozen stores per KB of codes: a cold
    Q4_K matrix at T = 1 streamed 23.5 GB/s against 28.3 with the accumulators on the stack
    (``benchmarks/tvm_q8_stream.py``, docs/tvm.md). Not always faster: the 32-block kernel's
    row-block sums were slower on the stack (kernels/qlinear_q8.py). Buffers of 1 KB or more
    go to the workspace either way.
    """
    from tvm.script import tirx as T

    return T.alloc_buffer(shape, dtype)


class HugeArena:
    """One anonymous memory map for many arrays, on transparent huge pages where the kernel
    gives them (``madvise(MADV_HUGEPAGE)``: what Linux's default ``madvise`` setting asks
    for; elsewhere, or with huge pages off, ordinary pages).

    A model's weights stream from memory on every token: on 2 MiB pages the hardware walks
    512 times fewer page tables for them than on 4 KiB ones (here the Qwen 1.5B's one-token
    forward about 1 % faster, SmolLM2's at 4,000 tokens of context 3-5 %:
    `benchmarks/tvm_huge_pages.py`). Arrays placed here start on
    a 4096-byte boundary and keep the map alive (their base is the map's buffer), so the
    tensors made from them with DLPack need nothing else held.

    Args:
        nbytes: the space to reserve; pages are only backed as they are written.
    """

    def __init__(self, nbytes: int) -> None:
        import mmap

        self.size = max(int(nbytes), 1) + HUGE_PAGE
        flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
        self._map = mmap.mmap(-1, self.size, flags=flags) if flags else mmap.mmap(-1, self.size)
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            with contextlib.suppress(OSError):  # huge pages unsupported: ordinary ones
                self._map.madvise(advice)
        self._buf = np.frombuffer(self._map, dtype=np.uint8)
        self._at = -address(self._buf) % HUGE_PAGE  # the first huge page boundary

    @staticmethod
    def _pages(nbytes: int) -> int:
        """``nbytes`` rounded up to whole 4096-byte pages: what an array takes here."""
        return -(-nbytes // 4096) * 4096

    @classmethod
    def footprint(cls, a: np.ndarray) -> int:
        """The bytes :meth:`place` takes for ``a`` (rounded up to 4096)."""
        return cls._pages(a.nbytes)

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A new C-contiguous array of zeros in the arena (fresh anonymous memory is zero).

        Raises:
            EdgespecError: the arena is full (more placed than reserved).
        """
        dt = np.dtype(dtype)
        nbytes = math.prod(shape) * dt.itemsize
        n = self._pages(nbytes)
        if self._at + n > self.size:
            raise EdgespecError(
                f"huge-page arena full: {n} more bytes than the {self.size} reserved"
            )
        out = self._buf[self._at : self._at + nbytes].view(dt).reshape(shape)
        self._at += n
        return out

    def place(self, a: np.ndarray) -> np.ndarray:
        """A C-contiguous copy of ``a`` in the arena; read from its file when ``a`` is a
        whole memory-mapped file's array (:func:`mapped_file`: one ``readinto`` instead of a
        page fault per 4 KiB of the map; peak memory 125 MB lower on the Qwen 1.5B, start
        time unresolved, docs/tvm.md "Start-up time").

        Raises:
            EdgespecError: the arena is full (more placed than reserved).
        """
        out = self.zeros(a.shape, a.dtype)
        src = mapped_file(a)
        if src is not None and out.nbytes:
            path, offset = src
            with contextlib.suppress(OSError), open(path, "rb") as f:
                f.seek(offset)
                if f.readinto(memoryview(out.reshape(-1).view(np.uint8))) == out.nbytes:
                    return out
        out[...] = a
        return out


def mapped_file(a: np.ndarray) -> tuple[str, int] | None:
    """``(path, byte offset)`` of the file whose mapping ``a`` is, whole and C-contiguous
    (``np.load(..., mmap_mode="r")``'s array, or a view of all of it); else None."""
    import mmap

    if not a.flags.c_contiguous:
        return None
    b: Any = a
    while isinstance(b, np.ndarray):
        if isinstance(b, np.memmap) and isinstance(b.base, mmap.mmap):
            whole = address(b) == address(a) and b.nbytes == a.nbytes and b.flags.c_contiguous
            return (str(b.filename), int(b.offset)) if whole and b.filename else None
        b = b.base
    return None


def address(a: np.ndarray) -> int:
    """The address of ``a``'s first element (``a.ctypes.data`` without building a ctypes
    object: several times faster, and the kernels' wrappers ask on every call)."""
    return int(a.__array_interface__["data"][0])


def is_aligned(a: np.ndarray, at: int | None = None) -> bool:
    """True when ``a`` can be handed to a kernel in place: C-contiguous, :data:`ALIGN`-aligned
    (``at``: ``address(a)`` when the caller has it already)."""
    return bool(a.flags.c_contiguous) and (address(a) if at is None else at) % ALIGN == 0


def as_operand(a: np.ndarray) -> Any:
    """``a`` as a TVM tensor: in place when float32, C-contiguous and aligned, else a copy."""
    if a.dtype != np.float32 or not is_aligned(a):
        b = aligned_zeros(a.shape, np.float32)
        b[...] = a
        a = b
    return tvm_module().runtime.from_dlpack(a)


class BuildChoice:
    """A choice of instructions that kernels built now use (a dot product, a table lookup):
    the CPU's best (``best()``), unless a :meth:`building_with` block overrides it.

    Args:
        what: what is chosen, for the error message ("dot product").
        names: the known choices.
        best: the CPU's best choice.
    """

    def __init__(self, what: str, names: Collection[str], best: Callable[[], str]) -> None:
        self.what, self.names, self.best = what, names, best
        self._override: str | None = None

    def current(self) -> str:
        """The override of the enclosing :meth:`building_with` block, else ``best()``."""
        return self._override or self.best()

    @contextlib.contextmanager
    def building_with(self, name: str | None) -> Iterator[None]:
        """Kernels built inside this block use ``name`` (None: ``best()``); for tests and
        benchmarks.

        Raises:
            EdgespecError: ``name`` is not one of ``names``.
        """
        if name is not None and name not in self.names:
            known = ", ".join(self.names)
            raise EdgespecError(f"unknown {self.what} {name}; known: {known}")
        self._override = name
        try:
            yield
        finally:
            self._override = None


class CompiledKernels(Generic[S]):
    """Compiled functions per shape ``S``, built on first use (thread-safe).

    Args:
        build: ``shape -> PrimFunc``, the kernel's TensorIR.
        func_name: the function's name in the compiled module.
        scheduler: ``(func, target, key) -> IRModule`` (the untuned schedule, or tuned).
        target: default :func:`edgespec.kernels.tuning.host_target`.
        buckets: the row counts compiled (lazily, on first use).
    """

    def __init__(
        self,
        build: Callable[[S], PrimFunc],
        func_name: str,
        scheduler: Scheduler,
        *,
        target: Target | None = None,
        buckets: Sequence[int] = BUCKETS,
    ) -> None:
        self.build, self.func_name = build, func_name
        self.target = target
        self.scheduler: Scheduler = scheduler
        self.buckets = tuple(sorted(buckets))
        self._built: dict[S, Any] = {}
        self._lock = threading.Lock()

    def function(self, shape: S) -> Any:
        """The compiled function for ``shape`` (compiled on first use)."""
        fn = self._built.get(shape)
        if fn is None:
            tvm = tvm_module()
            from edgespec.kernels.tuning import host_target

            with self._lock:
                if self.target is None:
                    self.target = host_target()
                key = str(getattr(shape, "key", shape))
                mod = self.scheduler(self.build(shape), self.target, key)
                fn = tvm.compile(mod, target=self.target)[self.func_name]
                self._built[shape] = fn
        return fn
