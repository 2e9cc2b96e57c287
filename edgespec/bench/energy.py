"""Energy meters: measured where the platform exposes it, otherwise a labelled estimate.

Every meter answers the same question, "how many joules did this span of work cost?", and
says how it knows: ``kind`` is ``"measured"`` or ``"estimated"`` and is carried into every
table and plot, so the two are never mixed.

- :class:`RaplMeter`: Linux RAPL powercap, ``<root>/intel-rapl:N/energy_uj`` (micro-joules,
  a counter that wraps at ``max_energy_range_uj``). Top-level packages only, so that
  sub-zones (core, uncore, dram) are not counted twice. Whole-package energy: other
  processes running at the same time are included.
- :class:`BatteryMeter`: Android / Linux battery, ``<root>/*/current_now`` (micro-amps) x
  ``voltage_now`` (micro-volts), sampled on a background thread and integrated over time.
- :class:`PowermetricsMeter`: macOS ``powermetrics`` (needs root), CPU power samples
  averaged over the span.
- :class:`EstimateMeter`: ``cpu_seconds x watts`` (watts drawn by one fully busy core).

Roots are arguments so that tests use fake sysfs trees in temporary folders.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgespec.errors import EdgespecError

POWERCAP_ROOT = Path("/sys/class/powercap")
POWER_SUPPLY_ROOT = Path("/sys/class/power_supply")
#: default power model of the estimate: watts drawn per fully busy CPU core
DEFAULT_WATTS = 5.0
#: the values --energy accepts
ENERGY_SOURCES = ("auto", "rapl", "battery", "powermetrics", "estimate")


@dataclass(frozen=True)
class Energy:
    """Joules spent over one span, and how they were obtained.

    Attributes:
        joules: energy in J.
        kind: "measured" or "estimated".
        source: "rapl", "battery", "powermetrics" or "estimate".
    """

    joules: float
    kind: str
    source: str


class Meter:
    """Base class: ``token = m.start()`` ... ``m.stop(token, cpu_s=..., wall_s=...)``."""

    kind = "measured"
    source = ""

    def describe(self) -> dict[str, Any]:
        """What to record in results.json about this meter."""
        return {"kind": self.kind, "source": self.source}

    def start(self) -> Any:
        return None

    def stop(self, token: Any, *, cpu_s: float, wall_s: float) -> Energy:
        raise NotImplementedError


class RaplMeter(Meter):
    """Sum of the top-level RAPL package counters under ``root`` (wraparound-safe)."""

    source = "rapl"

    def __init__(self, root: Path | str = POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self.zones = sorted(
            p
            for p in self.root.glob("intel-rapl:*")
            if re.fullmatch(r"intel-rapl:\d+", p.name) and (p / "energy_uj").is_file()
        )
        if not self.zones:
            raise EdgespecError(f"no RAPL powercap zones under {self.root}")
        self.ranges = [_read_int(z / "max_energy_range_uj", default=0) for z in self.zones]
        self._read()  # fail now (for example: permission denied) rather than mid-run

    def describe(self) -> dict[str, Any]:
        names = [_read_text(z / "name", default=z.name) for z in self.zones]
        return {**super().describe(), "zones": names}

    def _read(self) -> list[int]:
        try:
            return [int((z / "energy_uj").read_text().strip()) for z in self.zones]
        except (OSError, ValueError) as exc:
            raise EdgespecError(
                f"cannot read RAPL energy counters under {self.root}: {exc}"
            ) from exc

    def start(self) -> list[int]:
        return self._read()

    def stop(self, token: list[int], *, cpu_s: float, wall_s: float) -> Energy:
        end = self._read()
        total_uj = sum(
            counter_delta(a, b, r) for a, b, r in zip(token, end, self.ranges, strict=True)
        )
        return Energy(total_uj / 1e6, self.kind, self.source)


def counter_delta(start: int, end: int, max_range: int) -> int:
    """``end - start`` of a counter that wraps to 0 after ``max_range`` (RAPL energy_uj)."""
    if end >= start:
        return end - start
    if max_range <= 0:
        return 0  # wrapped without a known range: unknowable; count nothing
    return end + (max_range - start)


class _Sampler(Meter):
    """A meter that integrates power samples taken on a background thread."""

    interval_s = 0.05

    def _power_w(self) -> float:
        raise NotImplementedError

    def start(self) -> dict[str, Any]:
        state: dict[str, Any] = {"joules": 0.0, "stop": threading.Event()}
        last = [time.perf_counter(), self._power_w()]

        def loop() -> None:
            while not state["stop"].wait(self.interval_s):
                now, p = time.perf_counter(), self._power_w()
                state["joules"] += (now - last[0]) * (p + last[1]) / 2  # trapezoid
                last[:] = [now, p]

        state["last"] = last
        state["thread"] = threading.Thread(target=loop, daemon=True)
        state["thread"].start()
        return state

    def stop(self, token: dict[str, Any], *, cpu_s: float, wall_s: float) -> Energy:
        token["stop"].set()
        token["thread"].join()
        last = token["last"]
        now, p = time.perf_counter(), self._power_w()
        joules = token["joules"] + (now - last[0]) * (p + last[1]) / 2
        return Energy(joules, self.kind, self.source)


class BatteryMeter(_Sampler):
    """Battery power = |current_now| x voltage_now, from ``root/<supply>/`` (type Battery)."""

    source = "battery"

    def __init__(self, root: Path | str = POWER_SUPPLY_ROOT) -> None:
        self.root = Path(root)
        self.supplies = sorted(
            p
            for p in self.root.glob("*")
            if (p / "current_now").is_file()
            and (p / "voltage_now").is_file()
            and _read_text(p / "type", default="Battery") == "Battery"
        )
        if not self.supplies:
            raise EdgespecError(f"no battery with current_now and voltage_now under {self.root}")
        self._power_w()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "supplies": [p.name for p in self.supplies]}

    def _power_w(self) -> float:
        total = 0.0
        for p in self.supplies:
            try:
                ua = int((p / "current_now").read_text().strip())
                uv = int((p / "voltage_now").read_text().strip())
            except (OSError, ValueError) as exc:
                raise EdgespecError(f"cannot read battery {p}: {exc}") from exc
            total += abs(ua) * 1e-6 * uv * 1e-6
        return total


class PowermetricsMeter(Meter):
    """macOS ``powermetrics --samplers cpu_power``: mean CPU power over the span x wall time."""

    source = "powermetrics"

    def __init__(self, exe: str | None = None, interval_ms: int = 100) -> None:
        self.exe = exe or shutil.which("powermetrics")
        if self.exe is None or platform.system() != "Darwin":
            raise EdgespecError("powermetrics is only available on macOS")
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            raise EdgespecError("powermetrics needs root; run the benchmark with sudo")
        self.interval_ms = interval_ms

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [self.exe or "powermetrics", "--samplers", "cpu_power", "-i", str(self.interval_ms)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def stop(self, token: subprocess.Popen[str], *, cpu_s: float, wall_s: float) -> Energy:
        token.terminate()
        out, _ = token.communicate(timeout=10)
        watts = parse_powermetrics(out)
        return Energy(watts * wall_s, self.kind, self.source)


def parse_powermetrics(text: str) -> float:
    """Mean power in W from powermetrics output ("CPU Power: 1234 mW" lines)."""
    vals = [float(m) for m in re.findall(r"^\s*CPU Power:\s*([\d.]+)\s*mW", text, re.M)]
    if not vals:
        raise EdgespecError("powermetrics printed no 'CPU Power' samples")
    return sum(vals) / len(vals) / 1000.0


class EstimateMeter(Meter):
    """An estimate, not a measurement: joules = CPU seconds x ``watts`` per busy core."""

    kind = "estimated"
    source = "estimate"

    def __init__(self, watts: float = DEFAULT_WATTS) -> None:
        if not watts > 0:
            raise EdgespecError(f"--watts must be > 0, got {watts}")
        self.watts = watts

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "watts_per_core": self.watts}

    def stop(self, token: Any, *, cpu_s: float, wall_s: float) -> Energy:
        return Energy(cpu_s * self.watts, self.kind, self.source)


def open_meter(
    source: str = "auto",
    *,
    watts: float = DEFAULT_WATTS,
    powercap_root: Path | str = POWERCAP_ROOT,
    power_supply_root: Path | str = POWER_SUPPLY_ROOT,
) -> tuple[Meter, list[str]]:
    """The best meter for ``source`` and notes on what was tried.

    ``"auto"`` tries RAPL, then the battery, then powermetrics, and falls back to the
    estimate. Naming a measured source fails with the reason when it is not available.
    """
    if source not in ENERGY_SOURCES:
        raise EdgespecError(f"unknown energy source '{source}'; known: {', '.join(ENERGY_SOURCES)}")
    makers = {
        "rapl": lambda: RaplMeter(powercap_root),
        "battery": lambda: BatteryMeter(power_supply_root),
        "powermetrics": PowermetricsMeter,
    }
    if source == "estimate":
        return EstimateMeter(watts), []
    if source != "auto":
        return makers[source](), []
    notes: list[str] = []
    for maker in makers.values():
        try:
            return maker(), notes
        except EdgespecError as exc:
            notes.append(str(exc))
    return EstimateMeter(watts), notes


def _read_int(path: Path, default: int) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def _read_text(path: Path, default: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default
