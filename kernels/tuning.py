"""TVM targets for this device, and MetaSchedule tuning of the kernels, cached per device.

A tuned schedule is stored as one JSON record per kernel and shape::

    $EDGESPEC_HOME/tvm/<device fingerprint>/<kernel key>.json
    {"format": 1, "key": "qmatmul-Q4_1-m4-n1536-k576", "device": <fingerprint>,
     "device_description": ..., "target": ..., "tvm_version": ..., "trials": 16,
     "tuning_seconds": 61.2, "best_us": 143.0, "trace": <MetaSchedule trace JSON>}

(the fingerprint is :func:`edgespec.speculative.cost_curves.device_fingerprint`). Loading is
forgiving: a missing record means the untuned schedule; a corrupt record, one tuned on another
device or with another TVM version, or one whose trace no longer applies prints one warning
line and falls back to the untuned schedule.

Tuning (:func:`tune`) builds and times the candidates in this process (no worker pools: on a
loaded 2-core machine MetaSchedule's subprocess builder hit its 30 s timeout on every
candidate). The cost model is XGBoost when ``xgboost`` is installed, else random (with the
replay-trace search, which then samples the design space at random), as noted in the record.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from edgespec.errors import EdgespecError
from edgespec.fileutil import atomic_path
from edgespec.home import edgespec_home
from edgespec.speculative.cost_curves import device_description, device_fingerprint

if TYPE_CHECKING:
    from tvm.ir import IRModule
    from tvm.target import Target
    from tvm.tirx import PrimFunc

#: bump when the record layout changes
RECORD_FORMAT = 1
#: the MetaSchedule loggers, kept off the console while tuning (the progress bar says enough)
_MS_LOGGER = "tvm.s_tir.meta_schedule"


#: the LLVM CPU kernels are built for instead of this machine's (:func:`build_for`)
_BUILD_CPU: str | None = None


def host_cpu() -> str:
    """LLVM's name of the CPU kernels are built for: this machine's (``emeraldrapids``,
    ``znver4``, ``cortex-a76``), or the one :func:`build_for` named."""
    if _BUILD_CPU is not None:
        return _BUILD_CPU
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def build_for(cpu: str | None) -> None:
    """Build the kernels compiled from now on in this process for LLVM's CPU ``cpu`` (None:
    this machine's): the target names it, and the instructions chosen by CPU flags (the int8
    dot product, the ``exp`` lookup: :func:`cpu_flags`) are those it has and this machine has.
    The code still runs here, so ``cpu`` must be one this machine can run the instructions of
    (``znver3``, AVX2 without AVX-512, on an AVX-512 machine): for benchmarks and tests of
    another CPU's code (``benchmarks/tvm_backend.py --cpu``, ``pytest --build-cpu``).

    Raises:
        EdgespecError: LLVM does not know ``cpu``.
    """
    global _BUILD_CPU
    if cpu is not None:
        from tvm.target import codegen

        if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
            raise EdgespecError(f"'{cpu}' is not a CPU LLVM knows (e.g. znver3, haswell)")
    _BUILD_CPU = cpu


#: this machine's CPU flags, once read
_PROC_FLAGS: frozenset[str] | None = None


def _proc_flags() -> frozenset[str]:
    """This machine's CPU flags (``/proc/cpuinfo``, read once; empty where unreadable)."""
    global _PROC_FLAGS
    if _PROC_FLAGS is None:
        try:
            with open("/proc/cpuinfo") as f:
                _PROC_FLAGS = frozenset(
                    w for line in f if line.startswith("flags") for w in line.split()
                )
        except OSError:
            _PROC_FLAGS = frozenset()
    return _PROC_FLAGS


def cpu_flags() -> frozenset[str]:
    """The CPU flags kernels choose their instructions by: this machine's, less the AVX flags
    the :func:`build_for` CPU lacks (``avx512_vnni`` is LLVM's ``avx512vnni``)."""
    flags = _proc_flags()
    if _BUILD_CPU is None:
        return flags
    have = _llvm_features(_BUILD_CPU)
    return frozenset(f for f in flags if not f.startswith("avx") or f.replace("_", "") in have)


@functools.cache
def _llvm_features(cpu: str) -> frozenset[str]:
    """The features LLVM's CPU ``cpu`` has (``avx2``, ``avx512vnni``, ...)."""
    from tvm.target import Target, codegen

    return frozenset(codegen.llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": cpu})))


def host_target(num_cores: int | None = None) -> Target:
    """``Target({"kind": "llvm", "mcpu": <this CPU>, "num-cores": <cores>})``.

    Args:
        num_cores: threads the kernels may use (default: ``os.cpu_count()``).
    """
    from tvm.target import Target

    cores = num_cores or os.cpu_count() or 1
    return Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": cores})


def records_dir() -> Path:
    """``$EDGESPEC_HOME/tvm/<device fingerprint>/``: this device's tuning records."""
    return edgespec_home() / "tvm" / device_fingerprint()


def warn(message: str) -> None:
    """One warning line on stderr (``edgespec: warning: ...``)."""
    print(f"edgespec: warning: {' '.join(message.split())}", file=sys.stderr)


@dataclass(frozen=True)
class TuningRecord:
    """The best schedule MetaSchedule found for one kernel shape on one device.

    Attributes:
        key: the kernel and shape (``qmatmul-Q4_1-m4-n1536-k576``).
        device: the device fingerprint it was tuned on.
        device_description: CPU model, cores, machine, OS (for people).
        target: the TVM target, as its string.
        tvm_version: ``tvm.__version__`` at tuning time.
        trials: the trial budget.
        tuning_seconds: wall time of the tuning run.
        best_us: median run time of the best candidate, microseconds.
        untuned_us: median run time of the untuned schedule, timed right after the search
            the same way; :func:`tuned_scheduler` keeps the untuned schedule when it is the
            faster one (a small trial budget may find nothing better).
        cost_model: "xgb" or "random".
        trace: the schedule's MetaSchedule trace (``Trace.as_json``), replayed by
            :func:`apply_record` onto the unscheduled function.
    """

    key: str
    device: str
    device_description: str
    target: str
    tvm_version: str
    trials: int
    tuning_seconds: float
    best_us: float
    untuned_us: float
    cost_model: str
    trace: Any

    def save(self, path: Path) -> None:
        """Write the record atomically."""
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"format": RECORD_FORMAT, **asdict(self)}, indent=1))

    @classmethod
    def read(cls, path: Path) -> TuningRecord:
        """Parse a record; raises :class:`EdgespecError` naming what is wrong."""
        try:
            data = json.loads(path.read_text())
            if data.pop("format") != RECORD_FORMAT:
                raise ValueError("unknown record format")
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise EdgespecError(f"corrupt tuning record {path} ({e})") from e


def _tvm_version() -> str:
    from edgespec.kernels.compiled import tvm_module

    return str(tvm_module().__version__)


def load_record(path: Path) -> TuningRecord | None:
    """The record at ``path`` if it is usable on this device, else None.

    Missing: None, silently (untuned). Corrupt, another device, another TVM version: one
    warning line, then None.
    """
    if not path.exists():
        return None
    try:
        record = TuningRecord.read(path)
    except EdgespecError as e:
        warn(f"{e}; using the untuned schedule (delete it or tune again)")
        return None
    if record.device != device_fingerprint():
        warn(
            f"tuning record {path.name} was tuned on another device ({record.device_description});"
            f" using the untuned schedule here (tune on this device to get a tuned one)"
        )
        return None
    if record.tvm_version != _tvm_version():
        warn(
            f"tuning record {path.name} was made with TVM {record.tvm_version}, this is "
            f"{_tvm_version()}; using the untuned schedule (tune again)"
        )
        return None
    return record


def apply_record(func: PrimFunc, record: TuningRecord) -> IRModule:
    """Replay ``record``'s trace on ``func``; raises :class:`EdgespecError` if it fails."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        s_tir.schedule.Trace.apply_json_to_schedule(record.trace, sch)
    except Exception as e:  # TVM raises its own error types for a trace that does not apply
        raise EdgespecError(
            f"tuning record {record.key} does not apply to this kernel ({type(e).__name__})"
        ) from e
    return sch.mod


#: (unscheduled func, target, kernel key) -> scheduled module
Scheduler = Callable[["PrimFunc", "Target", str], "IRModule"]


def tuned_scheduler(fallback: Scheduler, directory: Path | None = None) -> Scheduler:
    """A scheduler that uses this device's record of each key, else ``fallback``.

    Args:
        fallback: the untuned schedule (e.g. :func:`edgespec.kernels.qmatmul.schedule_cpu`).
        directory: where the records are (default :func:`records_dir`; a bundle's folder).
    """

    def schedule(func: PrimFunc, target: Target, key: str) -> IRModule:
        record = load_record((directory or records_dir()) / f"{key}.json")
        if record is not None and record.best_us < record.untuned_us:
            try:
                return apply_record(func, record)
            except EdgespecError as e:
                warn(f"{e}; using the untuned schedule")
        return fallback(func, target, key)

    return schedule


def _has_xgboost() -> bool:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _quiet_meta_schedule() -> Iterator[None]:
    """MetaSchedule prints its task tables to stdout; keep them in its log files only.

    Its logging setup lists the logger's handlers by name and fails on an unnamed one (pytest's
    capture handlers stay on it after a first tuning run), so those are set aside meanwhile."""
    logger = logging.getLogger(_MS_LOGGER)
    level = logger.level
    unnamed = [h for h in logger.handlers if h.get_name() is None]
    for h in unnamed:
        logger.removeHandler(h)
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        for h in unnamed:
            logger.addHandler(h)


def _random_arg(info: Any, rng: np.random.Generator, dev: Any) -> Any:
    """A random tensor for MetaSchedule's ``["TENSOR", dtype, shape]`` argument info."""
    import tvm

    _, dtype, shape = info
    shape, dtype = tuple(int(s) for s in shape), str(dtype)
    if "float" in dtype:
        data = rng.standard_normal(shape).astype(dtype)
    else:
        data = rng.integers(-8, 8, shape).astype(dtype)
    return tvm.runtime.tensor(data, dev)


#: (MetaSchedule argument info, rng, device) -> a TVM tensor to call a candidate with
ArgMaker = Callable[[Any, np.random.Generator, Any], Any]


def _in_process(
    target: Target, number: int, repeat: int, bar: tqdm, make_arg: ArgMaker = _random_arg
) -> tuple[Any, Any, list[Any]]:
    """A MetaSchedule builder, runner and progress callback that work in this process."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.measure_callback import (
        AddToDatabase,
        PyMeasureCallback,
        UpdateCostModel,
    )
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    built: dict[str, Any] = {}
    rng = np.random.default_rng(0)

    @derived_object
    class Builder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            out = []
            for inp in build_inputs:
                try:
                    lib = tvm.compile(inp.mod, target=inp.target)
                except Exception as e:  # a candidate that does not compile is a result
                    out.append(BuilderResult(None, f"{type(e).__name__}: {e}"))
                    continue
                name = f"candidate-{len(built)}"
                built[name] = lib
                out.append(BuilderResult(name, None))
            return out

    @derived_object
    class Done(PyRunnerFuture):
        def __init__(self, result: Any) -> None:
            super().__init__()
            self.res = result

        def done(self) -> bool:
            return True

        def result(self) -> Any:
            return self.res

    @derived_object
    class Runner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            dev = tvm.cpu(0)
            futures = []
            for inp in runner_inputs:
                lib = built.pop(inp.artifact_path)
                try:
                    args = [make_arg(a.as_json(), rng, dev) for a in inp.args_info]
                    timer = lib.mod.time_evaluator(
                        lib.mod.entry_name, dev, number=number, repeat=repeat
                    )
                    res = RunnerResult([float(t) for t in timer(*args).results], None)
                except Exception as e:  # a candidate that crashes is a result
                    res = RunnerResult(None, f"{type(e).__name__}: {e}")
                futures.append(Done(res))
            return futures

    @derived_object
    class Progress(PyMeasureCallback):
        def apply(self, task_scheduler: Any, task_id: int, cands: Any, b: Any, r: Any) -> None:
            bar.update(len(cands))

    # MetaSchedule's default list also removes build folders, which in-process builds lack
    callbacks = [AddToDatabase(), UpdateCostModel(), Progress()]
    return Builder(), Runner(), callbacks


def time_module(
    mod: IRModule,
    target: Target,
    number: int = 20,
    repeat: int = 3,
    make_arg: ArgMaker = _random_arg,
) -> float:
    """Median seconds of one call of ``mod``'s ``main`` on random arguments (CPU)."""
    import tvm
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    rng = np.random.default_rng(0)
    dev = tvm.cpu(0)
    args = [make_arg(info.as_json(), rng, dev) for info in ArgInfo.from_prim_func(mod["main"])]
    lib = tvm.compile(mod, target=target)
    timer = lib.mod.time_evaluator(lib.mod.entry_name, dev, number=number, repeat=repeat)
    return float(np.median([float(t) for t in timer(*args).results]))


def tune(
    func: PrimFunc,
    key: str,
    untuned: Scheduler,
    *,
    target: Target | None = None,
    trials: int = 16,
    directory: Path | None = None,
    progress: bool = True,
    number: int = 20,
    repeat: int = 3,
    seed: int = 0,
    make_arg: ArgMaker = _random_arg,
    space: Any = "post-order-apply",
) -> TuningRecord:
    """Tune ``func`` with MetaSchedule and store the best schedule as a record.

    Args:
        func: the unscheduled kernel (e.g. :func:`edgespec.kernels.qmatmul.qmatmul_func`).
        key: the kernel and shape; the record is ``<directory>/<key>.json``.
        untuned: the schedule used without a record, timed against the best one found.
        target: default :func:`host_target`.
        trials: the trial budget (candidates built and timed).
        directory: default :func:`records_dir`.
        progress: show a tqdm bar of the trials.
        number, repeat: timing of each candidate (``repeat`` medians of ``number`` runs).
        seed: the search's random seed.
        make_arg: the arguments candidates are timed on (default: random tensors, integers
            in [-8, 8); a kernel whose integer operand indexes rows passes valid indices).
        space: MetaSchedule's design space (default: its generic rules; a kernel whose
            generic space fails passes ``ScheduleFn`` of its own schedule's knobs).
    """
    import tvm
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise EdgespecError(f"the trial budget must be at least 1; got {trials}")
    if _BUILD_CPU is not None:  # records are this device's, and would not say for which CPU
        raise EdgespecError(
            f"the kernels are being built for {_BUILD_CPU} (build_for), not this CPU; tune on "
            "the CPU itself"
        )
    target = target or host_target()
    cost_model = "xgb" if _has_xgboost() else "random"
    mod = tvm.IRModule({"main": func})
    t0 = time.perf_counter()
    with (
        tqdm(total=trials, desc=f"tune {key}", unit="trial", disable=not progress) as bar,
        tempfile.TemporaryDirectory(prefix="edgespec-tune-") as work,
        _quiet_meta_schedule(),
    ):
        builder, runner, callbacks = _in_process(target, number, repeat, bar, make_arg)
        db = ms.tune_tir(
            mod,
            target,
            work,
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 8),
            builder=builder,
            runner=runner,
            cost_model=cost_model,
            strategy="evolutionary" if cost_model == "xgb" else "replay-trace",
            measure_callbacks=callbacks,
            space=space,
            num_tuning_cores=1,
            seed=seed,
        )
        best = db.query_tuning_record(mod, target, workload_name="main")
    if best is None or not best.run_secs:
        raise EdgespecError(f"tuning {key} found no valid schedule in {trials} trials")
    sch = s_tir.Schedule(func)
    best.trace.apply_to_schedule(sch, remove_postproc=False)
    best_s = time_module(sch.mod, target, number, repeat, make_arg)
    untuned_s = time_module(untuned(func, target, key), target, number, repeat, make_arg)
    record = TuningRecord(
        key=key,
        device=device_fingerprint(),
        device_description=device_description(),
        target=str(target),
        tvm_version=_tvm_version(),
        trials=trials,
        tuning_seconds=round(time.perf_counter() - t0, 2),
        best_us=round(best_s * 1e6, 2),
        untuned_us=round(untuned_s * 1e6, 2),
        cost_model=cost_model,
        trace=json.loads(json.dumps(best.trace.as_json(remove_postproc=False), default=_jsonable)),
    )
    record.save((directory or records_dir()) / f"{key}.json")
    return record


def _jsonable(obj: Any) -> Any:
    """TVM containers and scalars in a trace's JSON -> plain Python."""
    if hasattr(obj, "items"):
        return dict(obj.items())
    if hasattr(obj, "__iter__") and not isinstance(obj, str):
        return list(obj)
    if hasattr(obj, "value"):
        return obj.value
    return str(obj)
