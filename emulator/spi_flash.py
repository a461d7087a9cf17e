"""A simulated SPI NOR flash device, driven by the emulated board's flash controller.

This is the device, not the controller: plain Python calls, one per flash
command (read, write enable, page program, erase, read status, JEDEC id). It
keeps the semantics a controller driver must respect on real NOR:

* programming only clears bits (new = old & data); only an erase sets them;
* page program and erase need the write-enable latch (WEL) and leave the part
  BUSY for the program/erase time; WEL clears when the operation finishes;
* a page program wraps inside its 256-byte page.

Where a real part silently ignores a bad command (no WEL, busy, past the end
of the array, which real parts wrap around) this model raises, so firmware bugs
surface as exceptions instead of as wrong weights much later.

Time: the device's clock (device_clock.DeviceClock, the PSRAM's too; a float
in nanoseconds). Each command advances it by its exact
duration from ``flash_timing`` (bus phases plus the deselect time that must
follow). The controller moves it further with ``advance``/``wait_until``/
``wait_ready``, or just by polling ``read_status``, which is allowed while busy.

Storage: the image is used in place through a memoryview, never copied for a
read (images reach 1.5 GB). A writable buffer (bytearray, writable mmap) that
covers the whole device is programmed in place. A read-only one (bytes), or one
shorter than ``size`` (the tail reads as erased 0xFF), is copied into a private
bytearray on the first program or erase; writes are for tests and small images.
"""

from __future__ import annotations

from dataclasses import dataclass

from emulator.device_clock import DeviceClock
from target.flash_timing import FlashTiming, address_bytes, frame_ns, get_preset, read_mode_frame, read_time_ns

__all__ = [
    "SpiNorFlash",
    "ReadFault",
    "FlashError",
    "FlashBusyError",
    "FlashWriteNotEnabledError",
    "FlashAddressError",
    "read_time_ns",
    "STATUS_BUSY",
    "STATUS_WEL",
]

STATUS_BUSY = 0x01  # status register 1, bit 0 (BUSY on Winbond, WIP on Macronix)
STATUS_WEL = 0x02  # bit 1: write enable latch

ERASED = 0xFF


class FlashError(Exception):
    """A command a real part would ignore or misexecute: a firmware bug."""


class FlashBusyError(FlashError):
    """A command other than read status arrived while a program/erase runs."""


class FlashWriteNotEnabledError(FlashError):
    """Page program or erase without a preceding write enable."""


class FlashAddressError(FlashError, IndexError):
    """An access outside the device."""


@dataclass
class ReadFault:
    """A read error to inject (tests): the `nth` read command (1-based) whose bytes overlap
    [addr, addr + length) returns bit `bit` of its first byte in that range flipped, and so do
    the `times - 1` such reads after it. The array is untouched: `times` 1 is a transient error
    (a read again gets the right bytes); a flipped bit in the image itself is a persistent one."""
    addr: int
    length: int = 1
    nth: int = 1
    bit: int = 0
    times: int = 1
    reads: int = 0      # reads that overlapped the range so far
    flipped: int = 0    # reads it has corrupted

    def apply(self, addr: int, data: bytes) -> bytes:
        start, end = max(addr, self.addr), min(addr + len(data), self.addr + self.length)
        if start >= end:
            return data
        self.reads += 1
        if self.reads < self.nth or self.flipped >= self.times:
            return data
        self.flipped += 1
        out = bytearray(data)
        out[start - addr] ^= 1 << self.bit
        return bytes(out)


class SpiNorFlash(DeviceClock):
    """A SPI NOR flash device with a simulated clock and per-command counters.

    ``data`` is the array contents (bytes, bytearray, memoryview, mmap...).
    ``preset`` is a name from ``flash_timing.PRESETS`` or a ``FlashTiming``.
    ``size`` is the device size in bytes; it defaults to ``len(data)`` and may
    be larger (the rest reads as erased). ``chips``: the size is that many
    identical packages on one bus, each behind its own chip select, laid end to
    end; a read that spans two of them is two read commands. A chip's size sets
    the address width: 3 bytes up to 16 MiB, 4 above.
    ``worst_case`` waits the datasheet maximum program/erase times instead of
    the typical ones.
    """

    def __init__(
        self,
        data,
        preset: str | FlashTiming = "w25q-quad",
        size: int | None = None,
        *,
        chips: int = 1,
        worst_case: bool = False,
    ):
        self.timing = get_preset(preset)
        mem = memoryview(data)
        if mem.ndim != 1 or mem.format not in ("B", "b", "c"):
            mem = mem.cast("B")
        self._mem = mem
        self.size = len(mem) if size is None else int(size)
        if self.size < len(mem):
            raise ValueError(f"device size {self.size} is smaller than the image ({len(mem)} bytes)")
        if self.size <= 0:
            raise ValueError("device size must be positive")
        if chips < 1 or self.size % chips:
            raise ValueError(f"{self.size} bytes cannot be {chips} equal chips")
        self.chips = chips
        self.chip_size = self.size // chips
        self.address_bytes = address_bytes(self.timing, self.chip_size)
        self.worst_case = worst_case
        self._read_ns: dict[tuple[int, str], tuple[float, str]] = {}   # (length, mode) -> (one read's ns, its kind)
        self.faults: list[ReadFault] = []   # read errors to inject (tests)

        DeviceClock.__init__(self)
        self._wel = False
        self._busy_until_ns: float | None = None  # end of the running program/erase
        self.reset_stats()

    # -- clock ---------------------------------------------------------------

    @property
    def busy(self) -> bool:
        self._finish_if_done()
        return self._busy_until_ns is not None

    @property
    def busy_until_ns(self) -> float | None:
        """When the running program/erase finishes, or None if idle."""
        self._finish_if_done()
        return self._busy_until_ns

    def wait_ready(self) -> float:
        """Skip to the end of the running program/erase, if any; returns the new time."""
        until = self.busy_until_ns
        return self._now_ns if until is None else self.wait_until(until)

    # -- commands ------------------------------------------------------------

    def read_jedec_id(self) -> bytes:
        """9Fh: manufacturer, memory type, capacity code of the preset's reference part."""
        self._require_idle("read_jedec_id")
        t = self.timing
        ident = bytes(t.jedec_id)
        self._charge("read_jedec_id", frame_ns(t.status_frame, t.status_addr_bytes, 3), t.deselect_ns, 3)
        return ident

    def read_status(self) -> int:
        """05h: status register 1 (BUSY bit 0, WEL bit 1). Allowed while busy.

        The value is the one at the start of the command.
        """
        self._finish_if_done()
        status = (STATUS_BUSY if self._busy_until_ns is not None else 0) | (STATUS_WEL if self._wel else 0)
        t = self.timing
        self._charge("read_status", frame_ns(t.status_frame, t.status_addr_bytes, 1), t.deselect_ns, 1)
        return status

    def write_enable(self) -> None:
        """06h: set WEL, which page program and erase require."""
        self._require_idle("write_enable")
        self._wel = True
        self._charge_write_command("write_enable", addr_bytes=0, data_bytes=0)

    def write_disable(self) -> None:
        """04h: clear WEL."""
        self._require_idle("write_disable")
        self._wel = False
        self._charge_write_command("write_disable", addr_bytes=0, data_bytes=0)

    def read(self, addr: int, length: int, mode: str | None = None) -> bytes:
        """Read ``length`` bytes at ``addr`` with one read command of ``mode``.

        ``mode`` is one of the preset's read modes ("quad", "fast", "single"
        for w25q-quad; "octal" for octal-dtr); None picks the preset's fastest.
        """
        name = self.timing.default_read_mode if mode is None else mode
        if name not in self.timing.read_modes:
            read_mode_frame(self.timing, mode)  # rejects a bad mode before anything else
        self._finish_if_done()
        if self._busy_until_ns is not None:   # _require_idle, without formatting its message per read
            self._require_idle(f"read ({name})")
        if length <= 0:
            raise ValueError(f"read length must be positive, got {length}")
        self._check_range("read", addr, length)
        data = self._get(addr, length)
        for fault in self.faults:
            data = fault.apply(addr, data)
        start = addr
        while start < addr + length:   # one command per chip the read touches
            n = min(addr + length, (start // self.chip_size + 1) * self.chip_size) - start
            cost = self._read_ns.get((n, name))
            if cost is None:   # a run repeats the same few read sizes thousands of times
                cost = self._read_ns[n, name] = (read_time_ns(self.timing, n, name, device_size=self.chip_size),
                                                 f"read_{name}")
            elapsed, kind = cost
            # read_time_ns includes the deselect time; split it back out for _charge.
            self._charge(kind, elapsed - self.timing.deselect_ns, self.timing.deselect_ns, n)
            start += n
        return data

    def xip_lines(self, addr: int, length: int, line: int = 32, mode: str | None = None) -> float:
        """The XIP runtime read [addr, addr + length) in place: each `line`-byte line it
        covers is a D-cache miss, one read command of `line` bytes (command, address, dummy
        and data phases). Charged together; returns their time in ns."""
        name, _ = read_mode_frame(self.timing, mode)
        if length <= 0:
            return 0.0
        self._check_range("XIP read", addr, length)
        lines = (addr + length - 1) // line - addr // line + 1
        one = read_time_ns(self.timing, line, name, device_size=self.chip_size)
        self._spend(lines * one)
        c = self._counters.setdefault("xip_line", {"count": 0, "bytes": 0, "ns": 0.0, "busy_ns": 0.0})
        c["count"] += lines
        c["bytes"] += lines * line
        c["ns"] += lines * one
        return lines * one

    def page_program(self, addr: int, data) -> None:
        """02h: program up to one page; bits only go 1 -> 0.

        Bytes that run past the end of the page wrap to the start of the same
        page, as on the real part. More than a page of data is rejected (a
        real part would keep only the last page_size bytes).
        """
        self._require_idle("page_program")
        if isinstance(data, int):  # bytes(5) would silently mean five zero bytes
            raise TypeError("page_program data must be bytes-like, not int")
        data = bytes(data)
        page = self.timing.page_size
        if not 0 < len(data) <= page:
            raise ValueError(f"page program takes 1..{page} bytes, got {len(data)}")
        self._check_range("page_program", addr, 1)
        self._require_wel("page_program")

        offset = addr % page
        page_start = addr - offset
        first = min(len(data), page - offset)
        self._check_range("page_program", addr, first)
        self._and_into(addr, data[:first])
        if first < len(data):
            self._check_range("page_program", page_start, len(data) - first)
            self._and_into(page_start, data[first:])

        t = self.timing
        busy = t.page_program_max_ns if self.worst_case else t.page_program_ns
        self._charge_write_command("page_program", self.address_bytes, len(data), busy_ns=busy)

    def sector_erase(self, addr: int) -> None:
        """20h: erase the sector (4 KiB) containing ``addr`` to 0xFF."""
        t = self.timing
        busy = t.sector_erase_max_ns if self.worst_case else t.sector_erase_ns
        self._erase("sector_erase", addr, t.sector_size, busy)

    def block_erase(self, addr: int) -> None:
        """D8h: erase the block (64 KiB) containing ``addr`` to 0xFF."""
        t = self.timing
        busy = t.block_erase_max_ns if self.worst_case else t.block_erase_ns
        self._erase("block_erase", addr, t.block_size, busy)

    # -- counters ------------------------------------------------------------

    def stats(self) -> dict:
        """Counters since construction or the last reset_stats(), as plain data.

        ``commands[kind]`` has count, bytes (data-phase bytes), ns (bus time
        plus deselect) and busy_ns (program/erase time started). ``total`` sums
        them. ``elapsed_ns`` = total ns + ``idle_ns`` (time let pass by
        advance/wait_until/wait_ready).
        """
        commands = {kind: dict(c) for kind, c in sorted(self._counters.items())}
        total = {"count": 0, "bytes": 0, "ns": 0.0, "busy_ns": 0.0}
        for c in commands.values():
            for key in total:
                total[key] += c[key]
        return {
            "preset": self.timing.name,
            "commands": commands,
            "total": total,
            **self._clock_stats(),
        }

    def reset_stats(self) -> None:
        """Zero the counters; the clock keeps running."""
        self._counters: dict[str, dict] = {}
        self._reset_clock_stats()

    # -- internals -----------------------------------------------------------

    def _finish_if_done(self) -> None:
        if self._busy_until_ns is not None and self._now_ns >= self._busy_until_ns:
            self._busy_until_ns = None
            self._wel = False  # the part clears WEL when a program/erase completes

    def _require_idle(self, what: str) -> None:
        self._finish_if_done()
        if self._busy_until_ns is not None:
            raise FlashBusyError(
                f"{what} issued while the flash is busy until t={self._busy_until_ns:.1f} ns "
                f"(now t={self._now_ns:.1f} ns); poll read_status() until BUSY clears"
            )

    def _require_wel(self, what: str) -> None:
        if not self._wel:
            raise FlashWriteNotEnabledError(f"{what} without write_enable() first (WEL is 0)")

    def _check_range(self, what: str, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise FlashAddressError(
                f"{what} at address {addr:#x} ({addr}) of length {length} is outside the "
                f"device of size {self.size:#x} ({self.size}) bytes"
            )

    def _get(self, addr: int, length: int) -> bytes:
        stored = len(self._mem)
        end = addr + length
        if end <= stored:
            return bytes(self._mem[addr:end])  # one memcpy of exactly the requested bytes
        if addr >= stored:
            return bytes([ERASED]) * length
        return bytes(self._mem[addr:stored]) + bytes([ERASED]) * (end - stored)

    def _writable(self) -> memoryview:
        if self._mem.readonly or len(self._mem) < self.size:
            # Copy-on-first-write: a read-only image is never copied.
            private = bytearray([ERASED]) * self.size
            private[: len(self._mem)] = self._mem
            self._mem = memoryview(private)
        return self._mem

    def _and_into(self, addr: int, data: bytes) -> None:
        mem = self._writable()
        n = len(data)
        old = int.from_bytes(mem[addr : addr + n], "little")
        mem[addr : addr + n] = (old & int.from_bytes(data, "little")).to_bytes(n, "little")

    def _erase(self, kind: str, addr: int, unit: int, busy_ns: float) -> None:
        self._require_idle(kind)
        self._check_range(kind, addr, 1)
        self._require_wel(kind)
        start = addr - addr % unit
        end = min(start + unit, self.size)
        mem = self._writable()
        mem[start:end] = bytes([ERASED]) * (end - start)
        self._charge_write_command(kind, self.address_bytes, 0, busy_ns=busy_ns)

    def _charge_write_command(self, kind: str, addr_bytes: int, data_bytes: int, busy_ns: float = 0.0) -> None:
        t = self.timing
        bus_ns = frame_ns(t.command_frame, addr_bytes, data_bytes)
        if busy_ns:
            # The internal operation starts when chip select rises, at the end of the bus phases.
            self._busy_until_ns = self._now_ns + bus_ns + busy_ns
        self._charge(kind, bus_ns, t.deselect_after_write_ns, data_bytes, busy_ns)

    def _charge(self, kind: str, bus_ns: float, deselect_ns: float, nbytes: int, busy_ns: float = 0.0) -> None:
        ns = bus_ns + deselect_ns
        self._spend(ns)
        c = self._counters.get(kind)
        if c is None:
            c = self._counters[kind] = {"count": 0, "bytes": 0, "ns": 0.0, "busy_ns": 0.0}
        c["count"] += 1
        c["bytes"] += nbytes
        c["ns"] += ns
        c["busy_ns"] += busy_ns
