"""The idle clock every external memory device keeps: flash (spi_flash.py) and PSRAM (psram.py).

A device owns a simulated time in nanoseconds (a float: a 133 MHz clock is not a whole
number of nanoseconds). Its commands move it forward by their bus time (`_spend`); the
controller lets time pass between commands with `advance`/`wait_until`, counted as idle.
The board's CPU clock (peripherals.CpuClock) is separate: the DMA engines run transfers on
it, and charge the devices their bus time.
"""

from __future__ import annotations


class DeviceClock:
    def __init__(self):
        self._now_ns = 0.0
        self._idle_ns = 0.0
        self._stats_since_ns = 0.0

    @property
    def now_ns(self) -> float:
        return self._now_ns

    def advance(self, ns: float) -> float:
        """Let ``ns`` nanoseconds pass outside any command; returns the new time."""
        if ns < 0:
            raise ValueError(f"cannot advance the clock by a negative time ({ns} ns)")
        self._now_ns += ns
        self._idle_ns += ns
        return self._now_ns

    def wait_until(self, t_ns: float) -> float:
        """Let time pass until ``t_ns`` (no-op if already later); returns the new time."""
        return self.advance(max(0.0, t_ns - self._now_ns))

    def _spend(self, ns: float) -> None:
        """A command's bus time."""
        self._now_ns += ns

    def _reset_clock_stats(self) -> None:
        """Zero the idle count; the clock keeps running."""
        self._idle_ns = 0.0
        self._stats_since_ns = self._now_ns

    def _clock_stats(self) -> dict:
        """idle_ns (time let pass by advance/wait_until), elapsed_ns (since the last reset:
        bus time + idle), now_ns."""
        return {"idle_ns": self._idle_ns, "elapsed_ns": self._now_ns - self._stats_since_ns, "now_ns": self._now_ns}
