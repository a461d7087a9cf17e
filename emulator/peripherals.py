"""The board's memory-mapped peripherals: flash controller, PSRAM controller, UART, trace
unit, run control.

Registers and addresses come from target/memory_map.py (the firmware gets the same
numbers through include/memory_map.h). Each peripheral is mapped as MMIO (emulator/mmio.py),
so it costs nothing until the firmware touches it: no Python hook runs on ordinary
instructions. The DMA controllers' plain registers (ADDR, DST/RAM, LEN) are stored by a
native callback, so of a transfer's accesses only CMD and STATUS run Python.

Time: the board has one simulated clock, the CPU's (`CpuClock`): it advances by the cycles
of the instructions the core executed since the last peripheral access (counted per basic
block by emulator/instruction_count.py, timed by the Cortex-M7 pipeline model,
target/m7_pipeline.py) over its clock rate, and jumps forward when the CPU waits for a
transfer. The flash and PSRAM controllers
are DMA engines (`DmaChannel`) on that clock: a transfer starts when its command is
written and runs for its simulated bus time *while the CPU goes on computing*; STATUS
reads BUSY until the CPU's clock reaches its end. So a firmware that starts the next
weight tile before computing on the current one (runtime_c/runtime.c) pays
max(I/O, compute) per tile, not their sum (docs/board.md, "Time").

Registers are 32-bit. A narrower access, an offset with no register, or a write to a
read-only register is a bus error: the peripheral records it in the shared `Faults` and
stops the emulation, and the board turns it into a one-line BoardFault. Callbacks never
raise for a firmware mistake (an exception inside a Unicorn callback would only resurface
later, out of context); they record what happened and let the board report it.
"""

from __future__ import annotations

import codecs
import math
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np
from unicorn import UcError

from emulator.dcache import coherence_message
from emulator.mmio import Registers, map_peripheral
from emulator.psram import Psram, PsramError
from emulator.spi_flash import FlashError, SpiNorFlash
from target import memory_map as mm
from target.m7_pipeline import FIXED

DONE = mm.FLASH_STATUS["DONE"]
BUSY = mm.FLASH_STATUS["BUSY"]
ERROR = mm.FLASH_STATUS["ERROR"]
CRC_RESET = mm.CRC_CTRL["RESET"]
CRC_ENABLE = mm.CRC_CTRL["ENABLE"]


class Faults:
    """What went wrong inside a callback, for the board to report after emu_start returns.

    Only the first fault counts: it is the cause, later ones are consequences.
    """

    def __init__(self):
        self.first: dict | None = None

    def record(self, uc, kind: str, what: str, address: int | None = None) -> None:
        if self.first is None:
            self.first = {"kind": kind, "what": what, "address": address}
        uc.emu_stop()


class Peripheral:
    """Base: a register file at `spec.base`, dispatching 32-bit reads and writes by name."""

    spec: mm.Peripheral
    read_only: tuple[str, ...] = ()

    def __init__(self, faults: Faults):
        self.faults = faults
        self._names = {r.offset: r.name for r in self.spec.registers}
        self._writable = {r.offset: r.name for r in self.spec.registers if r.name not in self.read_only}
        self.regs = {r.name: 0 for r in self.spec.registers}

    def map(self, uc) -> None:
        map_peripheral(uc, self.spec.base, self.spec.size, self._read, self._write)

    def _read(self, uc, offset, size, _ud) -> int:
        name = self._names.get(offset)
        if name is None or size != 4:
            self._bus_error(uc, offset, size, "read")
            return 0
        return self.read(uc, name) & 0xFFFFFFFF

    def _write(self, uc, offset, size, value, _ud) -> None:
        name = self._writable.get(offset)
        if name is None or size != 4:
            self._bus_error(uc, offset, size, "write")
            return
        self.write(uc, name, value & 0xFFFFFFFF)

    def _bus_error(self, uc, offset: int, size: int, access: str) -> None:
        """An access to no register, of a size other than 32 bits, or a write to a read-only one."""
        name = self._names.get(offset)
        addr = self.spec.base + offset
        if name is None:
            what = f"{access} at {self.spec.name}+0x{offset:03x}, which has no register"
        elif size != 4:
            what = f"{size}-byte {access} of {self.spec.name}.{name} (registers are 32-bit)"
        else:
            what = f"write to read-only {self.spec.name}.{name}"
        self.faults.record(uc, "bus_error", what, addr)

    def read(self, uc, name: str) -> int:
        return self.regs[name]

    def write(self, uc, name: str, value: int) -> None:
        self.regs[name] = value


# ----------------------------------------------------------------------------
# the board's clock, and the DMA engines that run on it


class CpuClock:
    """The board's simulated time, in ns: the CPU's clock.

    now_ns = cycles / cpu_hz + stall_ns, where `cycles` are those of the instructions the CPU
    executed, as the counter charges them (per basic block, by the Cortex-M7 pipeline model:
    target/m7_pipeline.py), and stall_ns is the time the CPU spent waiting for a DMA
    transfer to finish. It moves only when a peripheral looks at it (`sync`, at every MMIO
    access). Without a counter (counting off) compute takes no time and the clock is the I/O
    alone. `execute(n)` charges n instructions run outside the counter's view (models and
    tests) at `cpi` cycles each.

    `events`, when a list (Board(timeline=True)), is the run's timeline on this clock: every
    unit that knows a moment appends it there, in the order things happen (the CPU's waits
    here, the DMA transfers, the CRC passes, the trace unit's stages, positions and tokens;
    mcugpt/timeline.py reads them). None, the default, records nothing.
    """

    def __init__(self, counter=None, cpu_hz: float = 480e6, cpi: float = 1.0):
        if cpu_hz <= 0 or cpi <= 0:
            raise ValueError(f"clock {cpu_hz} Hz and {cpi} cycles per instruction must be positive")
        self.counter = counter
        self.cpu_hz, self.cpi = float(cpu_hz), float(cpi)
        self.ns_per_cycle = 1e9 / self.cpu_hz
        self.instructions = 0      # executed so far (as of the last sync)
        self.cycles = 0.0          # their cycles
        self.stall_ns = 0.0        # CPU time spent waiting for DMA transfers
        self.memory_cycles = 0.0   # of `cycles`: D-cache line fills and write-backs (add_cycles)
        self.now_ns = 0.0          # cycles x ns_per_cycle + stall_ns
        self.events: list[tuple] | None = None
        self._seen = 0
        self._seen_cycles = 0.0
        # the native counter's struct, read directly: sync runs at every peripheral access
        self._native = counter._state if getattr(counter, "kind", None) == "native" else None

    @property
    def compute_ns(self) -> float:
        return self.cycles * self.ns_per_cycle

    def sync(self) -> float:
        """Bring the clock up to the present: charge the instructions executed since the last
        call. Returns now_ns. (Called at every MMIO access: kept lean.)"""
        native = self._native
        if native is not None:
            n = native.instructions
        elif self.counter is not None:
            n = self.counter.count
        else:
            return self.now_ns
        if n != self._seen:
            c = native.cycles / FIXED if native is not None else self.counter.cycles   # (the same figure)
            self.instructions += n - self._seen
            self.cycles += c - self._seen_cycles
            self._seen, self._seen_cycles = n, c
            self.now_ns = self.cycles * self.ns_per_cycle + self.stall_ns
        return self.now_ns

    def execute(self, instructions: int) -> float:
        """Charge `instructions` executed outside the counter's view, at `cpi` cycles each."""
        self.sync()
        self.instructions += int(instructions)
        self.cycles += int(instructions) * self.cpi
        self.now_ns = self.cycles * self.ns_per_cycle + self.stall_ns
        return self.now_ns

    def add_cycles(self, cycles: float) -> None:
        """Charge CPU cycles the counter does not see: the D-cache's line fills and
        write-backs (emulator/dcache.py). They count as compute (`memory_cycles` of it)."""
        self.sync()
        self.cycles += cycles
        self.memory_cycles += cycles
        self.now_ns = self.cycles * self.ns_per_cycle + self.stall_ns

    def stall_until(self, t_ns: float, cause: str = "dma") -> float:
        """The CPU waits (polls a status register) until t_ns, for `cause` ("flash", "psram",
        "crc", "xip": what the timeline names the wait)."""
        now = self.sync()
        if t_ns > now:
            if self.events is not None:
                self.events.append(("wait", cause, now, t_ns))
            self.stall_ns += t_ns - now
            self.now_ns = self.cycles * self.ns_per_cycle + self.stall_ns
        return self.now_ns


class DmaChannel:
    """One DMA engine on the board's clock: its transfers run one after another, each for
    its simulated bus time, concurrently with the CPU.

    `start(duration_ns, retire)` begins a transfer at max(now, end of the previous one);
    `poll(wait)` is a STATUS read: at or after the end it completes the transfer
    (`retire()`: a read's bytes land in RAM then, not before, so a firmware that touches a
    buffer under DMA reads stale bytes); before the end it answers False (BUSY), or, when
    the CPU is spinning on STATUS (`wait`), moves the CPU's clock to the end first.
    """

    def __init__(self, clock: CpuClock, name: str = "dma"):
        self.clock = clock
        self.name = name            # the bus it serves: "flash" or "psram" (names the CPU's waits)
        self.free_at_ns = 0.0
        self._pending: tuple[float, Callable[[], None] | None] | None = None
        self.transfers = 0
        self.overlapped_instructions = 0   # executed by the CPU while transfers were in flight
        self._started_at = 0

    @property
    def in_flight(self) -> bool:
        return self._pending is not None

    @property
    def hung(self) -> bool:
        """The transfer in flight will never complete (an injected fault: emulator/inject.py)."""
        return self._pending is not None and self._pending[0] == math.inf

    def hang(self) -> None:
        """Make the transfer just started one that never completes: its bytes never land and
        STATUS stays BUSY."""
        self.hung_at_ns = self.clock.sync()
        self.free_at_ns = math.inf
        self._pending = (math.inf, None)

    def start(self, duration_ns: float, retire: Callable[[], None] | None = None) -> float:
        """Start a transfer of `duration_ns`; returns its end time."""
        now = self.clock.sync()
        end = max(now, self.free_at_ns) + duration_ns
        self.free_at_ns = end
        self._pending = (end, retire)
        self._started_at = self.clock.instructions
        self.transfers += 1
        return end

    def poll(self, wait: bool) -> bool:
        """True when no transfer is in flight any more (the pending one completed now).
        Before the transfer's end: with `wait` the CPU waits until the end and the transfer
        completes (True); without, nothing happens (False: the transfer is still running)."""
        if self._pending is None:
            return True
        end, retire = self._pending
        if self.clock.sync() < end:
            if not wait:
                return False
            self.clock.stall_until(end, self.name)
        self.overlapped_instructions += self.clock.instructions - self._started_at
        self._pending = None
        if retire is not None:
            retire()
        return True


def pipelined_ns(io_ns, compute_ns) -> float:
    """Time of a double-buffered stream of tiles on this model: tile i+1's transfer runs
    while tile i is computed, so
        io[0] + sum over i of max(io[i + 1], compute[i]) + compute[-1]
    (the closed form of what DmaChannel and CpuClock do for runtime.c's matrix stream;
    tests check the two agree)."""
    io, comp = list(io_ns), list(compute_ns)
    if len(io) != len(comp):
        raise ValueError("one transfer time and one compute time per tile")
    if not io:
        return 0.0
    return io[0] + sum(max(io[i + 1], comp[i]) for i in range(len(io) - 1)) + comp[-1]


# ----------------------------------------------------------------------------
# flash controller: SPI NOR commands, a DMA engine and a CRC unit on the read path


class _DmaPeripheral(Peripheral):
    """A controller whose commands run on a DmaChannel: CMD starts one, STATUS reads BUSY
    until the board's clock reaches its end, then DONE. A CPU that keeps polling STATUS
    (a second read within SPIN_INSTRUCTIONS of one that answered BUSY) waits: its clock
    moves to the transfer's end and the read answers DONE.

    One command at a time: touching the controller's registers while a transfer is in
    flight (any write but STATUS, or a read of a result register) is a firmware bug, so it
    is a bus error naming the register, as on a controller that rejects it. `log`, when
    a list, receives ("start", command, address, length, instructions, start_ns, end_ns, cycles, ram)
    and ("done", instructions, now_ns, cycles) per transfer, for tests. The clock's timeline
    (CpuClock.events), when recorded, receives ("dma", bus, command, address, bytes, start_ns,
    end_ns, ram) per transfer.

    ADDR, the RAM end (`ram_register`) and LEN, the transfer's parameters, are plain: a
    write only stores the word. They live in `plain_regs` (an emulator.mmio.Registers), where
    the native write callback stores them without running Python; `plain_regs.busy` is set
    while a transfer is in flight, so that every write then reaches `write` (a bus error).
    """

    results: tuple[str, ...] = ()   # registers that hold a transfer's result
    bus = "dma"                     # "flash" or "psram"
    ram_register = "RAM"            # the register holding the transfer's RAM address

    def __init__(self, faults: Faults, clock: CpuClock | None, commands: dict[str, int],
                 ram_base: int, ram_size: int):
        super().__init__(faults)
        self.clock = clock if clock is not None else CpuClock()
        self.dma = DmaChannel(self.clock, self.bus)
        self.log: list[tuple] | None = None
        self._busy_at: int | None = None   # instructions at the last STATUS read that answered BUSY
        self._commands = {v: k for k, v in commands.items()}
        self.ram_base, self.ram_size = ram_base, ram_size
        self.tcm: tuple[int, int] | None = None   # (base, size) of a data TCM the DMA may also write
        self.dcache = None                         # emulator.dcache.DCacheModel over the SRAM, or None
        self.steal_cycles_per_word = 0.0           # bus sharing (target/boards.py dma_steal_cycles_per_word)
        self.bus_cycles = 0.0                      # CPU cycles lost to this controller's transfers so far
        self.errors: list[str] = []
        self.injector = None   # emulator/inject.py Injector: faults to inject (mcugpt run --inject)
        self.plain_regs = Registers()
        self._plain = {name: self.spec.reg(name) // 4 for name in ("ADDR", self.ram_register, "LEN")}
        for name, i in self._plain.items():
            self.plain_regs.plain |= 1 << i
            del self.regs[name]   # their one home is plain_regs
        self._addr_i, self._ram_i, self._len_i = self._plain.values()
        self.mmio = "python"   # "native" when the native callback stores the plain registers (map)

    def map(self, uc) -> None:
        self.mmio = map_peripheral(uc, self.spec.base, self.spec.size, self._read, self._write, self.plain_regs)

    def _params(self) -> tuple[int, int, int]:
        """ADDR, the RAM address (DST or RAM) and LEN, as last written."""
        words = self.plain_regs.words
        return words[self._addr_i], words[self._ram_i], words[self._len_i]

    def _value(self, name: str) -> int:
        """A register's value as the firmware last wrote it (or the controller set it)."""
        i = self._plain.get(name)
        return self.regs[name] if i is None else self.plain_regs.words[i]

    def write(self, uc, name, value):
        if name == "STATUS":   # write-1-to-clear
            self.regs["STATUS"] &= ~value
            return
        if self.dma._pending is not None:
            self._busy_error(uc, name, "write")
            return
        if name == "CMD":
            stale = self.dcache.unmaintained() if self.dcache is not None else None
            if stale is not None:
                self.faults.record(uc, "coherence", coherence_message(stale), stale)
                return
            self.regs["CMD"] = value
            self.regs["STATUS"] = self._execute(uc, value)
            self.plain_regs.busy = self.dma._pending is not None
        else:
            self._write_register(name, value)

    def _write_register(self, name, value):
        """A write to a register other than STATUS or CMD, no transfer in flight."""
        i = self._plain.get(name)
        if i is None:
            self.regs[name] = value
        else:
            self.plain_regs.words[i] = value

    def _execute(self, uc, cmd: int) -> int:
        raise NotImplementedError

    def _ram_range_ok(self, start: int, length: int) -> bool:
        if self.tcm is not None and self.tcm[0] <= start and start + length <= self.tcm[0] + self.tcm[1]:
            return True
        return self.ram_base <= start and start + length <= self.ram_base + self.ram_size

    def _share_bus(self, words: float) -> None:
        """The CPU loses cycles to a transfer's words on the memory it computes from."""
        if self.steal_cycles_per_word:
            cycles = words * self.steal_cycles_per_word
            self.bus_cycles += cycles
            self.clock.add_cycles(cycles)

    def _dma_wrote(self, uc, dst: int, length: int) -> None:
        """A transfer landed in RAM: the D-cache's copies of those lines are stale now."""
        if self.dcache is not None:
            self.dcache.dma_wrote(dst, length)

    def _busy_error(self, uc, name: str, access: str) -> None:
        """A register access that must wait for the transfer in flight: a bus error."""
        self.faults.record(uc, "bus_error", f"{access} of {self.spec.name}.{name} while a DMA transfer is in "
                                            f"flight (STATUS BUSY): poll STATUS until DONE first",
                           self.spec.base + self.spec.reg(name))

    # A STATUS read that comes this few instructions after one that answered BUSY is a
    # poll loop spinning: the CPU would spin until the end, so its clock jumps there at
    # once (one more poll, not millions, whatever the transfer's length).
    SPIN_INSTRUCTIONS = 64

    # A CPU spinning on a transfer that never completes: each spinning poll moves its clock on by
    # the time waited so far (at least this), so a bound of D is reached in about log2(D / 1 us)
    # polls, overshot by at most the time already waited.
    HUNG_SPIN_NS = 1000.0

    def _status(self) -> int:
        dma = self.dma
        if dma._pending is None:
            return self.regs["STATUS"]
        clock = self.clock
        clock.sync()
        spinning = self._busy_at is not None and clock.instructions - self._busy_at <= self.SPIN_INSTRUCTIONS
        if dma.hung:
            if spinning:
                clock.stall_until(clock.now_ns + max(self.HUNG_SPIN_NS, clock.now_ns - dma.hung_at_ns), self.bus)
            self._busy_at = clock.instructions
            return BUSY
        if not dma.poll(wait=spinning):
            self._busy_at = clock.instructions
            return BUSY
        self._busy_at = None
        self.plain_regs.busy = 0
        self.regs["STATUS"] = DONE
        if self.log is not None:
            self.log.append(("done", clock.instructions, clock.now_ns, clock.cycles))
        return DONE

    def _start(self, command: str, addr: int, length: int, duration_ns: float, retire=None) -> int:
        self._busy_at = None
        end = self.dma.start(duration_ns, retire)
        if (self.injector is not None and command in ("READ", "WRITE")
                and self.injector.dma_hangs(self.bus, command, addr, length)):
            self.dma.hang()
            return BUSY
        if self.clock.events is not None:   # LEN is the data moved by READ, WRITE, PAGE_PROGRAM only
            moved = length if command in ("READ", "WRITE", "PAGE_PROGRAM") else 0
            self.clock.events.append(("dma", self.bus, command, addr, moved, end - duration_ns, end,
                                      self.plain_regs.words[self._ram_i]))
        if self.log is not None:
            self.log.append(("start", command, addr, length, self.clock.instructions, end - duration_ns, end,
                             self.clock.cycles, self.plain_regs.words[self._ram_i]))
        return BUSY

    def _fail(self, msg: str) -> int:
        self.errors.append(msg)
        return ERROR | DONE


class FlashController(_DmaPeripheral):
    """Each command is a DMA job on the board's clock: CMD starts it; STATUS reads BUSY until
    it has run for its simulated flash time, then DONE (see _DmaPeripheral, DmaChannel).

    READ        LEN bytes at flash ADDR -> RAM DST in one `uc.mem_write`, when the transfer
                completes (the first STATUS read that answers DONE); through the CRC unit
                when CRC_CTRL.ENABLE is set, in command order.
    READ_ID     JEDEC_ID = manufacturer << 16 | type << 8 | capacity.
    READ_STATUS DEV_STATUS = the device's status register 1 (BUSY bit 0, WEL bit 1).
    WRITE_ENABLE, PAGE_PROGRAM (LEN bytes from RAM at DST to flash ADDR), SECTOR_ERASE
    (the 4 KiB sector holding ADDR): the controller then polls the device until it is
    ready (auto-polling, as the STM32 OCTOSPI does), so the program/erase time is part of
    the command's time and the next command finds the device idle.

    The CRC unit: with `crc_ns_per_byte` 0 it sits on the DMA's data path and costs nothing
    (a controller that checksums what it moves). Otherwise it is fed by a second DMA pass
    (the STM32H7RS way: its CRC unit has no DMA request of its own): each READ's bytes go
    through it after the READ ends, at `crc_ns_per_byte`, one pass after another; reading
    CRC_VALUE or writing CRC_CTRL waits (the CPU stalls) until the passes are done.
    `crc_ns` sums the passes' time.

    An out-of-range read, a DST range outside SRAM, a zero LEN, an unknown command or a
    command the device refuses (no write enable...) sets STATUS = ERROR | DONE at once and
    records why in `errors` (the firmware decides what to do; the board quotes the detail
    if it exits with FLASH_ERROR). STATUS is write-1-to-clear.
    """

    spec = mm.FLASHCTL
    bus = "flash"
    ram_register = "DST"
    read_only = ("CRC_VALUE", "JEDEC_ID", "DEV_STATUS")
    results = ("CRC_VALUE", "JEDEC_ID", "DEV_STATUS")

    def __init__(self, faults: Faults, flash: SpiNorFlash, ram_base: int, ram_size: int,
                 clock: CpuClock | None = None, crc_ns_per_byte: float = 0.0):
        super().__init__(faults, clock, mm.FLASH_CMD, ram_base, ram_size)
        self.flash = flash
        self.crc = 0
        self.crc_enabled = False
        self.crc_ns_per_byte = crc_ns_per_byte
        self.crc_free_at_ns = 0.0   # when the CRC unit has finished the passes queued so far
        self.crc_ns = 0.0

    def _crc_wait(self) -> None:
        self.clock.stall_until(self.crc_free_at_ns, "crc")   # no wait when the passes are done

    def read(self, uc, name):
        if name == "STATUS":
            return self._status()
        if name in self.results and self.dma._pending is not None:
            self._busy_error(uc, name, "read")
            return 0
        if name == "CRC_VALUE":
            self._crc_wait()
            return self.crc
        if name == "CRC_CTRL":
            return CRC_ENABLE if self.crc_enabled else 0
        return self._value(name)

    def _write_register(self, name, value):
        if name == "CRC_CTRL":
            self._crc_wait()
            if value & CRC_RESET:
                self.crc = 0
            self.crc_enabled = bool(value & CRC_ENABLE)
        else:
            super()._write_register(name, value)

    def _execute(self, uc, cmd: int) -> int:
        name = self._commands.get(cmd)
        addr, dst, length = self._params()
        f = self.flash
        before = f.now_ns
        retire = None
        try:
            if name == "READ":
                if length == 0:
                    return self._fail(f"READ of 0 bytes at flash 0x{addr:x}")
                if not self._ram_range_ok(dst, length):
                    return self._fail(f"READ of {length} bytes to 0x{dst:08x}..0x{dst + length:08x}: "
                                      f"not inside SRAM (0x{self.ram_base:08x}..0x{self.ram_base + self.ram_size:08x})")
                data = f.read(addr, length)
                crc_pass = self.crc_enabled and self.crc_ns_per_byte > 0
                if self.crc_enabled:
                    self.crc = zlib.crc32(data, self.crc)
                retire = lambda: self._land(uc, dst, data)  # the DMA: one write, when it completes
            elif name == "READ_ID":
                self.regs["JEDEC_ID"] = int.from_bytes(f.read_jedec_id(), "big")
            elif name == "READ_STATUS":
                self.regs["DEV_STATUS"] = f.read_status()
            elif name == "WRITE_ENABLE":
                f.write_enable()
            elif name == "PAGE_PROGRAM":
                if not self._ram_range_ok(dst, length):
                    return self._fail(f"PAGE_PROGRAM source 0x{dst:08x} ({length} bytes) is not inside SRAM")
                f.page_program(addr, bytes(uc.mem_read(dst, length)))
                f.wait_ready()
            elif name == "SECTOR_ERASE":
                f.sector_erase(addr)
                f.wait_ready()
            else:
                return self._fail(f"unknown flash command {cmd}")
        except (FlashError, ValueError, UcError) as e:
            return self._fail(f"{name}: {e}")
        status = self._start(name, addr, length, f.now_ns - before, retire)
        if name == "READ":   # the transfer's words, and the CRC pass's, share the CPU's memory
            self._share_bus(length / 4 * (2 if crc_pass else 1))
        if name == "READ" and crc_pass:   # the second pass starts when the read has landed
            duration = length * self.crc_ns_per_byte
            start = max(self.crc_free_at_ns, self.dma.free_at_ns)
            self.crc_free_at_ns = start + duration
            self.crc_ns += duration
            if self.clock.events is not None:
                self.clock.events.append(("crc", addr, length, start, start + duration))
        return status

    def _land(self, uc, dst: int, data: bytes) -> None:
        try:
            uc.mem_write(dst, data)
        except UcError as e:  # the range was checked at the command: only a board bug gets here
            self.faults.record(uc, "bus_error", f"DMA write of {len(data)} bytes at 0x{dst:08x}: {e}", dst)
        self._dma_wrote(uc, dst, len(data))


# ----------------------------------------------------------------------------
# PSRAM controller: DMA between the external PSRAM and SRAM


class PsramController(_DmaPeripheral):
    """Each transfer is a DMA job on the board's clock, like the flash controller's: CMD
    starts it, STATUS reads BUSY until it has run for its simulated PSRAM time, then DONE.

    READ   LEN bytes at PSRAM ADDR -> SRAM at RAM, with one `uc.mem_write` when the
           transfer completes.
    WRITE  LEN bytes of SRAM at RAM (one `uc.mem_read`, at the command) -> PSRAM ADDR.

    The device (emulator/psram.py) gives each transfer its bus time. A board without PSRAM
    (`psram` None), a zero LEN, an ADDR range past the end of the device, a RAM range not
    inside SRAM or an unknown command sets STATUS = ERROR | DONE and records why in
    `errors` (the board quotes it if the firmware exits with PSRAM_ERROR). STATUS is
    write-1-to-clear.
    """

    spec = mm.PSRAMCTL
    bus = "psram"

    def __init__(self, faults: Faults, psram: Psram | None, ram_base: int, ram_size: int,
                 clock: CpuClock | None = None):
        super().__init__(faults, clock, mm.PSRAM_CMD, ram_base, ram_size)
        self.psram = psram

    def read(self, uc, name):
        if name == "STATUS":
            return self._status()
        return self._value(name)

    def _execute(self, uc, cmd: int) -> int:
        name = self._commands.get(cmd)
        addr, ram, length = self._params()
        if name is None:
            return self._fail(f"unknown PSRAM command {cmd}")

        def what():   # formatted only when a transfer fails
            return f"{name} of {length:,} bytes at PSRAM 0x{addr:x}"

        if self.psram is None:
            return self._fail(f"{what()}: this board has no PSRAM")
        if length == 0:
            return self._fail(f"{what()}: zero length")
        if addr + length > self.psram.size:
            return self._fail(f"{what()}: past the end of the {self.psram.size:,}-byte PSRAM")
        if not self._ram_range_ok(ram, length):
            return self._fail(f"{what()}: SRAM range 0x{ram:08x}..0x{ram + length:08x} is not inside SRAM "
                              f"(0x{self.ram_base:08x}..0x{self.ram_base + self.ram_size:08x})")
        before = self.psram.now_ns
        retire = None
        try:
            if name == "READ":
                data = self.psram.read(addr, length)
                if self.injector is not None:
                    data = self.injector.psram_read(addr, data)

                def retire():   # the DMA: one write, when it completes
                    uc.mem_write(ram, data)
                    self._dma_wrote(uc, ram, length)
            else:
                self.psram.write(addr, bytes(uc.mem_read(ram, length)))  # one read, at the command
        except (PsramError, ValueError, UcError) as e:
            return self._fail(f"{what()}: {e}")
        self._share_bus(length / 4)
        return self._start(name, addr, length, self.psram.now_ns - before, retire)


# ----------------------------------------------------------------------------
# UART: text out, streamed as it arrives


class Uart(Peripheral):
    """Each DATA write sends one byte. `on_text` gets decoded text as soon as a character
    is complete: GPT-2 tokens are byte sequences, and a multi-byte UTF-8 character may be
    split across two tokens (two runs of writes); the incremental decoder holds the first
    part back until the rest arrives. Invalid UTF-8 becomes U+FFFD."""

    spec = mm.UART
    read_only = ("STATUS",)

    def __init__(self, faults: Faults, on_text: Callable[[str], None] | None = None):
        super().__init__(faults)
        self.on_text = on_text
        self.data = bytearray()
        self._parts: list[str] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, uc, name):
        return 1 if name == "STATUS" else 0  # always ready to send

    def write(self, uc, name, value):
        byte = value & 0xFF
        self.data.append(byte)
        self._emit(self._decoder.decode(bytes((byte,))))

    def _emit(self, piece: str) -> None:
        if piece:
            self._parts.append(piece)
            if self.on_text is not None:
                self.on_text(piece)

    def finish(self) -> str:
        """Flush an incomplete trailing character (as U+FFFD) and return all the text."""
        self._emit(self._decoder.decode(b"", final=True))
        return "".join(self._parts)


# ----------------------------------------------------------------------------
# trace unit: stage accounting, tokens, positions, the logits debug channel


class _Timing:
    """Derived times of a StageStats / PositionStats (all in simulated ns)."""

    @property
    def io_ns(self) -> float:
        """Bus time of the flash and PSRAM transfers issued."""
        return self.flash_ns + self.psram_ns

    @property
    def device_ns(self) -> float:
        """Time on the board's clock: the CPU computing, plus the CPU waiting for DMA."""
        return self.compute_ns + self.stall_ns

    @property
    def overlap_ns(self) -> float:
        """I/O time hidden under compute: io + compute - device (= io - stall)."""
        return self.io_ns - self.stall_ns


@dataclass
class StageStats(_Timing):
    """What one stage cost over the whole run (all its calls, summed)."""

    index: int
    name: str
    calls: int = 0
    flash_bytes: int = 0      # bytes moved over the flash bus (data phases)
    flash_ns: float = 0.0     # simulated flash time, program/erase waits included
    psram_bytes: int = 0      # bytes moved to and from PSRAM (reads + writes)
    psram_ns: float = 0.0     # simulated PSRAM bus time
    wall_s: float = 0.0       # host seconds spent emulating it
    instructions: int = 0     # executed by the CPU (counted)
    cycles: float = 0.0       # their cycles (the pipeline model's)
    compute_ns: float = 0.0   # cycles / clock
    crc_ns: float = 0.0       # the CRC unit's passes over what it read (0 when the CRC is inline)
    stall_ns: float = 0.0     # the CPU waiting for DMA transfers to finish
    memory_cycles: float = 0.0  # of `cycles`: D-cache line fills and write-backs


@dataclass
class PositionStats(_Timing):
    """What computing one position (one token through every stage) cost."""

    position: int
    stages: list[int] = field(default_factory=list)  # stage indices that ran, in order
    flash_bytes: int = 0
    flash_ns: float = 0.0
    psram_bytes: int = 0
    psram_ns: float = 0.0
    wall_s: float = 0.0
    instructions: int = 0
    cycles: float = 0.0
    compute_ns: float = 0.0
    stall_ns: float = 0.0
    crc_ns: float = 0.0
    memory_cycles: float = 0.0


class StageCall(NamedTuple):
    """One call of one stage: what `Trace.calls` records, in order."""

    position: int | None      # the position being computed (None before the first POSITION)
    index: int                # stage index
    instructions: int
    io_ns: float              # flash + PSRAM bus time of the transfers it issued
    stall_ns: float           # the CPU waiting for transfers


class Trace(Peripheral):
    """STAGE opens a stage (closing the running one); TRACE_IDLE closes it.

    A stage is charged the flash bytes and the simulated flash time of the commands issued
    while it is open, likewise the PSRAM bytes and time of its transfers, the instructions
    the CPU executed and the time it waited for transfers (on the board's CpuClock), and
    the host time that passed. TOKEN appends a generated token and its wall time. The logits channel: on
    the LOGITS_COUNT write, COUNT float32 at LOGITS_ADDR are copied into [FIRST:FIRST + COUNT]
    of the current step's logits; a step ends at a TOKEN write, so the logits dumped before
    token k are the ones that chose it.

    On the clock's timeline (CpuClock.events, when recorded): ("stage", index or TRACE_IDLE,
    ns) at each STAGE write, ("position", pos, ns), ("token", token, ns), and ("xip", flash
    address, bytes read, start_ns, end_ns) for the XIP runtime's in-place reads.
    """

    spec = mm.TRACE

    def __init__(self, faults: Faults, flash: SpiNorFlash, stage_name: Callable[[int], str],
                 vocab_size: int = 0, psram: Psram | None = None, clock: CpuClock | None = None,
                 crc_ns: Callable[[], float] = lambda: 0.0):
        super().__init__(faults)
        self.flash = flash
        self.psram = psram
        self.crc_ns = crc_ns      # the CRC unit's pass time so far (FlashController.crc_ns)
        self.clock = clock if clock is not None else CpuClock()
        self.stage_name = stage_name
        self.vocab_size = vocab_size
        self.stages: dict[int, StageStats] = {}
        self.calls: list[StageCall] = []    # every stage call, in order
        self.current: int | None = None
        self._opened = self._now()
        self.tokens: list[int] = []
        self.token_times: list[float] = []  # perf_counter at each TOKEN write
        self.token_ns: list[float] = []     # the board's clock at each TOKEN write
        self.boot_wall: float | None = None  # perf_counter when the first position started
        self.positions: list[int] = []
        self.boot_ns: float | None = None   # the board's clock when the first position started
        self.on_position: Callable[[int], None] | None = None   # told each POSITION (progress)
        # told (stage index, position) as each stage ends, before the next one starts: its
        # output buffers are then in RAM, not yet overwritten (mcugpt/check_stages.py)
        self.on_stage_end: Callable[[int, int | None], None] | None = None
        self.per_position: list[PositionStats] = []
        self._position_opened = self._opened
        self.logits: list[np.ndarray | None] = []
        self._step_logits: np.ndarray | None = None
        # (tensor index or CRC_RETRY_SECTION, the stage open, at boot: before the first position)
        self.crc_retries: list[tuple[int, int | None, bool]] = []

    def _now(self) -> tuple:
        """(flash bytes, flash ns, PSRAM bytes, PSRAM ns, perf_counter, instructions, stall ns,
        cycles, CRC ns, memory cycles) so far."""
        if self.psram is None:
            pb, pns = 0, 0.0
        else:
            total = self.psram.stats()["total"]
            pb, pns = total["bytes"], total["ns"]
        c = self.clock
        c.sync()
        return (self.flash.stats()["total"]["bytes"], self.flash.now_ns, pb, pns, time.perf_counter(),
                c.instructions, c.stall_ns, c.cycles, self.crc_ns(), c.memory_cycles)

    def _charge(self, acc, opened, now) -> None:
        acc.flash_bytes += now[0] - opened[0]
        acc.flash_ns += now[1] - opened[1]
        acc.psram_bytes += now[2] - opened[2]
        acc.psram_ns += now[3] - opened[3]
        acc.wall_s += now[4] - opened[4]
        acc.instructions += now[5] - opened[5]
        acc.cycles += now[7] - opened[7]
        acc.crc_ns += now[8] - opened[8]
        acc.memory_cycles += now[9] - opened[9]
        acc.compute_ns = acc.cycles * self.clock.ns_per_cycle
        acc.stall_ns += now[6] - opened[6]

    def _close(self) -> None:
        if self.current is None:
            return
        now, was = self._now(), self._opened
        self._charge(self.stages[self.current], was, now)
        self.calls.append(StageCall(self.positions[-1] if self.positions else None, self.current,
                                    now[5] - was[5], now[1] - was[1] + now[3] - was[3], now[6] - was[6]))
        self.current = None

    def _close_position(self) -> None:
        if self.per_position:
            p = self.per_position[-1]  # closed once: at the next POSITION, or at the end
            p.flash_bytes, p.psram_bytes, p.flash_ns, p.psram_ns, p.wall_s = 0, 0, 0.0, 0.0, 0.0
            p.instructions, p.cycles, p.compute_ns, p.stall_ns, p.crc_ns = 0, 0.0, 0.0, 0.0, 0.0
            p.memory_cycles = 0.0
            self._charge(p, self._position_opened, self._now())

    def finish(self) -> None:
        self._close()
        self._close_position()

    def read(self, uc, name):
        if name == "STAGE":
            return mm.TRACE_IDLE if self.current is None else self.current
        return self.regs[name]

    def write(self, uc, name, value):
        self.regs[name] = value
        events = self.clock.events
        if name == "STAGE":
            if self.current is not None and self.on_stage_end is not None:
                self.on_stage_end(self.current, self.positions[-1] if self.positions else None)
            self._close()
            if value != mm.TRACE_IDLE:
                s = self.stages.get(value)
                if s is None:
                    s = self.stages[value] = StageStats(value, self.stage_name(value))
                s.calls += 1
                self.current = value
                if self.per_position:
                    self.per_position[-1].stages.append(value)
                self._opened = self._now()
            if events is not None:   # the clock is synced: _close or _now just read it
                events.append(("stage", value, self.clock.now_ns))
        elif name == "TOKEN":
            self.tokens.append(value)
            self.token_times.append(time.perf_counter())
            self.token_ns.append(self.clock.sync())
            self.logits.append(self._step_logits)
            self._step_logits = None
            if events is not None:
                events.append(("token", value, self.token_ns[-1]))
        elif name == "POSITION":
            if not self.positions:   # the end of boot: image checks, weight checks, resident loads
                self.boot_ns = self.clock.sync()
                self.boot_wall = time.perf_counter()
            self.positions.append(value)
            if self.on_position is not None:
                self.on_position(value)
            self._close_position()
            self.per_position.append(PositionStats(value))
            self._position_opened = self._now()
            if events is not None:
                events.append(("position", value, self.clock.now_ns))
        elif name == "CRC_RETRY":
            self.crc_retries.append((value, self.current, not self.positions))
        elif name == "XIP_LEN":   # the CPU reads these in place: it stalls for every line fill
            moved = self.flash.stats()["total"]["bytes"] if events is not None else 0
            try:
                ns = self.flash.xip_lines(self.regs["XIP_ADDR"], value, mm.XIP_LINE)
            except (FlashError, ValueError) as e:
                self.faults.record(uc, "bus_error", f"XIP read of {value:,} bytes at flash 0x{self.regs['XIP_ADDR']:x}: {e}")
                return
            start = self.clock.sync()
            if events is not None:   # whole lines move: the bytes the flash counted
                moved = self.flash.stats()["total"]["bytes"] - moved
                events.append(("xip", self.regs["XIP_ADDR"], moved, start, start + ns))
            self.clock.stall_until(start + ns, "xip")
        elif name == "LOGITS_COUNT":
            self._logits_tile(uc, self.regs["LOGITS_ADDR"], self.regs["LOGITS_FIRST"], value)

    def _logits_tile(self, uc, addr: int, first: int, count: int) -> None:
        try:
            tile = np.frombuffer(bytes(uc.mem_read(addr, 4 * count)), "<f4")
        except UcError:
            self.faults.record(uc, "bus_error", f"logits tile of {count} floats at 0x{addr:08x} "
                                                f"is outside mapped memory", addr)
            return
        end = first + count
        step = self._step_logits
        if step is None:
            step = np.full(max(self.vocab_size, end), np.nan, np.float32)
        elif len(step) < end:
            step = np.concatenate([step, np.full(end - len(step), np.nan, np.float32)])
        step[first:end] = tile
        self._step_logits = step


# ----------------------------------------------------------------------------
# run control


class SysCtl(Peripheral):
    """ARG0..2 then EXIT: the run stops with that code (`exit_code`, `exit_args`)."""

    spec = mm.SYSCTL

    def __init__(self, faults: Faults):
        super().__init__(faults)
        self.exit_code: int | None = None
        self.exit_args: tuple[int, int, int] = (0, 0, 0)

    def write(self, uc, name, value):
        self.regs[name] = value
        if name == "EXIT":
            self.exit_code = value
            self.exit_args = (self.regs["ARG0"], self.regs["ARG1"], self.regs["ARG2"])
            uc.emu_stop()


# ----------------------------------------------------------------------------
# the core's cycle counter (DWT)


class CycleCounter:
    """The ARMv7-M DWT page (0xE0001000) as the firmware uses it: CYCCNT, the CPU's clock
    cycles so far (stalls included: it counts time, as on silicon), modulo 2^32. It always
    counts (the enables in DEMCR and DWT_CTRL are plain words here); other words read back
    what was written."""

    BASE, SIZE = mm.DWT_CTRL, 0x1000
    CYCCNT = mm.DWT_CYCCNT - mm.DWT_CTRL

    def __init__(self, clock: CpuClock):
        self.clock = clock
        self.words: dict[int, int] = {}

    def map(self, uc) -> None:
        map_peripheral(uc, self.BASE, self.SIZE, self._read, self._write)

    def _read(self, uc, offset, size, _ud) -> int:
        if offset == self.CYCCNT:
            return int(self.clock.sync() / self.clock.ns_per_cycle) & 0xFFFFFFFF
        return self.words.get(offset, 0)

    def _write(self, uc, offset, size, value, _ud) -> None:
        self.words[offset] = value


# ----------------------------------------------------------------------------
# System Control Block: the Cortex-M7's architectural registers the firmware touches


class SystemControl:
    """The ARMv7-M System Control Space page (0xE000E000), as the firmware uses it: CPUID,
    CPACR (the FPU's enable), and the cache control registers, which drive the D-cache model
    (emulator/dcache.py): CCR.DC turns it on, CSSELR/CCSIDR give its geometry (CMSIS reads
    them to invalidate it by set and way, DCISW), and DCIMVAC/DCCMVAC/DCCIMVAC maintain one
    line by address. Other words read back what was written. Without a D-cache (sim64) CLIDR
    reads 0, so the firmware leaves the cache off and does no maintenance."""

    BASE, SIZE = 0xE000E000, 0x1000
    CPUID, CPUID_M7 = 0xD00, 0x411FC272    # Cortex-M7 r1p2
    CLIDR, CCSIDR, CSSELR, DCISW = (mm.SCB_CLIDR - BASE, mm.SCB_CCSIDR - BASE, mm.SCB_CSSELR - BASE,
                                    mm.SCB_DCISW - BASE)
    _BY_OFFSET = {mm.SCB_DCIMVAC - BASE: 1, mm.SCB_DCCMVAC - BASE: 2, mm.SCB_DCCIMVAC - BASE: 3}

    def __init__(self, dcache=None):
        self.dcache = dcache
        self.words: dict[int, int] = {self.CPUID: self.CPUID_M7}
        self.maintenance_ops = 0

    def map(self, uc) -> None:
        map_peripheral(uc, self.BASE, self.SIZE, self._read, self._write)

    def _read(self, uc, offset, size, _ud) -> int:
        if offset == self.CLIDR:   # level 1: separate I- and D-caches (0b011), or none
            return 0b011 if self.dcache is not None else 0
        if offset == self.CCSIDR:
            return self.dcache.ccsidr if self.dcache is not None else 0
        word = self.words.get(offset & ~3, 0)
        return (word >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def _write(self, uc, offset, size, value, _ud) -> None:
        op = self._BY_OFFSET.get(offset)
        if op is not None:
            self.maintenance_ops += 1
            if self.dcache is not None:
                self.dcache.maintain(value, op)
            return
        if offset == self.DCISW:   # whole-cache invalidation at reset: nothing is streamed yet
            self.maintenance_ops += 1
            return
        mask = ((1 << (8 * size)) - 1) << (8 * (offset & 3))
        word = self.words.get(offset & ~3, 0)
        self.words[offset & ~3] = (word & ~mask) | ((value << (8 * (offset & 3))) & mask)
        if self.BASE + offset == mm.SCB_CCR and self.dcache is not None:
            self.dcache.set_enabled(bool(self.words[offset & ~3] & mm.SCB_CCR_DC))
