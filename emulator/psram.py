"""A simulated external PSRAM device, for the KV cache when the MCU's SRAM is too small.

This is the device, not the controller or the DMA: plain Python calls, one per
transfer (``read``, ``write``). A transfer is what one DMA request moves; the
model cuts it into bursts exactly as ``psram_timing`` says (tCEM, page rule),
charges each burst its command, address, latency and data clocks plus the
CE# high time after it, and moves the whole transfer in one copy.

Where a real part would silently wrap an address past its end, this model
raises ``PsramAddressError``, so a bad KV-cache offset surfaces at once.

Time: the device's clock (device_clock.DeviceClock, the flash's too). Each
transfer advances it by ``transfer_time_ns``; ``advance``/``wait_until`` let
time pass outside transfers (the controller idling, or computing).

Storage: a zero-filled bytearray of ``size`` bytes (real PSRAM powers up with
undefined contents; zero keeps runs reproducible).
"""

from __future__ import annotations

from emulator.device_clock import DeviceClock
from target.psram_timing import PsramTiming, get_preset, split_bursts, transfer_time_ns

__all__ = [
    "Psram",
    "PsramError",
    "PsramAddressError",
    "transfer_time_ns",
]

_DIRECTIONS = ("read", "write")


class PsramError(Exception):
    """An access a real part would misexecute: a firmware or planner bug."""


class PsramAddressError(PsramError, IndexError):
    """An access outside the device."""


class Psram(DeviceClock):
    """A PSRAM device with a simulated clock and per-direction counters.

    ``size`` is the device size in bytes; None means the preset's reference
    part (8 MiB for both presets). It may be larger as long as the preset's
    address width reaches it. ``preset`` is a name from
    ``psram_timing.PRESETS`` or a ``PsramTiming``. ``worst_case`` charges
    every read the doubled (refresh-collision / fixed) latency.
    """

    def __init__(
        self,
        size: int | None = None,
        preset: str | PsramTiming = "octal-psram-200",
        *,
        worst_case: bool = False,
    ):
        self.timing = get_preset(preset)
        self.size = self.timing.capacity if size is None else int(size)
        if self.size <= 0:
            raise ValueError(f"device size must be positive, got {self.size}")
        reach = 1 << (8 * self.timing.address_bytes)
        if self.size > reach:
            raise ValueError(
                f"device size {self.size} is beyond the {self.timing.address_bytes}-byte address "
                f"of preset {self.timing.name!r} ({reach} bytes)"
            )
        self.worst_case = worst_case
        # (length, write, address within its page) -> (ns, bursts): the address matters only
        # through the page rule, and a run repeats the same transfers thousands of times
        self._costs: dict[tuple[int, bool, int], tuple[float, int]] = {}
        self._mem = bytearray(self.size)
        DeviceClock.__init__(self)
        self.reset_stats()

    # -- transfers -----------------------------------------------------------

    def transfer_time_ns(self, length: int, write: bool, addr: int = 0) -> float:
        """What a transfer would cost on this device (its preset and worst_case), without doing it."""
        return transfer_time_ns(self.timing, length, write, addr, worst_case=self.worst_case)

    def bursts(self, addr: int, length: int, write: bool) -> list[tuple[int, int]]:
        """The (address, length) bursts a transfer would be cut into."""
        return split_bursts(self.timing, length, write, addr, worst_case=self.worst_case)

    def read(self, addr: int, length: int) -> bytes:
        """Read ``length`` bytes at ``addr``; the clock advances by the transfer's time."""
        if length <= 0:
            raise ValueError(f"read length must be positive, got {length}")
        self._check_range("read", addr, length)
        data = bytes(self._mem[addr : addr + length])
        self._charge("read", addr, length)
        return data

    def write(self, addr: int, data) -> None:
        """Write the bytes-like ``data`` at ``addr``; the clock advances by the transfer's time."""
        if isinstance(data, int):  # bytes(5) would silently mean five zero bytes
            raise TypeError("write data must be bytes-like, not int")
        view = memoryview(data).cast("B")
        length = len(view)
        if length <= 0:
            raise ValueError("write of zero bytes")
        self._check_range("write", addr, length)
        self._mem[addr : addr + length] = view
        self._charge("write", addr, length)

    # -- counters ------------------------------------------------------------

    def stats(self) -> dict:
        """Counters since construction or the last reset_stats(), as plain data.

        ``read`` and ``write`` each have count (transfers), bursts, bytes and
        ns (bus time including tCPH after each burst). ``total`` sums them.
        ``elapsed_ns`` = total ns + ``idle_ns`` (time let pass by
        advance/wait_until).
        """
        per_dir = {d: dict(self._counters[d]) for d in _DIRECTIONS}
        total = {key: per_dir["read"][key] + per_dir["write"][key] for key in per_dir["read"]}
        return {
            "preset": self.timing.name,
            "read": per_dir["read"],
            "write": per_dir["write"],
            "total": total,
            **self._clock_stats(),
        }

    def reset_stats(self) -> None:
        """Zero the counters; the clock keeps running."""
        self._counters = {d: {"count": 0, "bursts": 0, "bytes": 0, "ns": 0.0} for d in _DIRECTIONS}
        self._reset_clock_stats()

    # -- internals -----------------------------------------------------------

    def _check_range(self, what: str, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise PsramAddressError(
                f"{what} at address {addr:#x} ({addr}) of length {length} is outside the "
                f"PSRAM of size {self.size:#x} ({self.size}) bytes"
            )

    def _charge(self, direction: str, addr: int, length: int) -> None:
        write = direction == "write"
        key = (length, write, addr % self.timing.page_size)
        if key not in self._costs:
            self._costs[key] = (transfer_time_ns(self.timing, length, write, addr, worst_case=self.worst_case),
                                len(split_bursts(self.timing, length, write, addr, worst_case=self.worst_case)))
        ns, nbursts = self._costs[key]
        self._spend(ns)
        c = self._counters[direction]
        c["count"] += 1
        c["bursts"] += nbursts
        c["bytes"] += length
        c["ns"] += ns
