"""The Cortex-M7's L1 data cache in front of the board's SRAM: what the streamed data costs
the CPU, and whether the firmware keeps the cache coherent with the DMA.

On an STM32H7 the AXI SRAM is reached through the D-cache (target/boards.py DCache: 32 KB,
4-way, 32-byte lines, the cycles of a line fill and of a write-back); the data TCM is
beside it, zero-wait and never cached. A DMA transfer writes memory, not the cache, so the
firmware invalidates the lines a transfer wrote (SCB->DCIMVAC) before reading them, and
cleans the lines it wrote (SCB->DCCMVAC) before a DMA reads them (runtime_c/hal_board.c).

What is modelled, from events the board sees (no hook on the CPU's loads and stores):
- A line a DMA wrote into the SRAM and the firmware then invalidated is read by the CPU
  once, from memory: one line fill. The firmware reads every byte it streams (a weight
  tile, a block of the KV cache, a resident tensor at boot), so this is the fill count of
  the streamed data. A line cleaned for a DMA read costs a write-back (the CPU just wrote
  it: the KV cache's new keys and values).
- Coherence: a DMA that starts, or a run that ends, while lines an earlier DMA wrote into the
  SRAM were never invalidated is a fault naming the address: on the board the CPU could read
  stale bytes from the cache there.
- The stalls are charged to the CPU's clock as cycles (CpuClock.add_cycles).

What is not: the CPU's own accesses to the SRAM (activations, resident weights after boot,
the stack) are taken as cache hits. Watching every access needs a memory hook, and with a
memory hook firing inside a Thumb IT block Unicorn 2.1.4 loses the IT state and skips
instructions (unicorn-engine/unicorn#2309; we reproduced it on this firmware's startup), so the
model stays with events. docs/boards.md bounds what this leaves out.
"""

from __future__ import annotations

from target import memory_map as mm
from target.boards import DCache

INVALIDATE, CLEAN = 1, 2


class DCacheModel:
    """The D-cache over the SRAM [base, base + size), with `spec`'s geometry and costs,
    charging its stalls to `clock` (a peripherals.CpuClock)."""

    def __init__(self, spec: DCache, base: int, size: int, clock):
        self.spec, self.base, self.size, self.clock = spec, base, size, clock
        self.shift = spec.line.bit_length() - 1
        self.enabled = False
        self._streamed = bytearray(-(-size // spec.line))  # per line: a DMA wrote it, not invalidated since
        self._pending = 0                                   # lines set in _streamed
        self.line_fills = self.writebacks = self.maintenance_ops = 0

    def _lines(self, addr: int, length: int) -> range | None:
        """The SRAM line indices a range covers, or None when it is not in the SRAM."""
        if length <= 0 or not self.base <= addr < self.base + self.size:
            return None
        end = min(addr + length, self.base + self.size)
        return range((addr - self.base) >> self.shift, ((end - 1 - self.base) >> self.shift) + 1)

    # -- what the firmware does (SCB registers) --------------------------------------

    def set_enabled(self, on: bool) -> None:
        self.enabled = on

    def maintain(self, addr: int, op: int) -> None:
        """op INVALIDATE, CLEAN or both, on the line holding `addr`."""
        self.maintenance_ops += 1
        offset = addr - self.base   # one line: no _lines (this runs once per line the DMA wrote)
        if not self.enabled or not 0 <= offset < self.size:
            return
        i = offset >> self.shift
        if op & CLEAN:
            self.writebacks += 1
            self.clock.add_cycles(self.spec.writeback_cycles)
        if op & INVALIDATE and self._streamed[i]:
            self._streamed[i] = 0
            self._pending -= 1
            self.line_fills += 1   # the CPU's next read of the line comes from memory
            self.clock.add_cycles(self.spec.fill_cycles)

    # -- what the DMA does -----------------------------------------------------------

    def dma_wrote(self, addr: int, length: int) -> None:
        lines = self._lines(addr, length)
        if lines is None or not self.enabled:
            return
        view = memoryview(self._streamed)[lines.start:lines.stop]
        self._pending += len(view) - bytes(view).count(1)
        view[:] = b"\1" * len(view)

    def unmaintained(self) -> int | None:
        """The address of a line a DMA wrote and the firmware has not invalidated, or None."""
        if self._pending == 0:
            return None
        return self.base + (self._streamed.find(1) << self.shift)

    # -- results ---------------------------------------------------------------------

    def stats(self) -> dict:
        return {"enabled": self.enabled, "line_fills": self.line_fills, "writebacks": self.writebacks,
                "maintenance_ops": self.maintenance_ops,
                "stall_cycles": self.line_fills * self.spec.fill_cycles + self.writebacks * self.spec.writeback_cycles}

    @property
    def ccsidr(self) -> int:
        """The D-cache's CCSIDR, as CMSIS reads it to invalidate by set and way."""
        return ((self.spec.sets - 1) << 13) | ((self.spec.ways - 1) << 3) | ((self.spec.line // 16).bit_length() - 1)


def coherence_message(addr: int) -> str:
    return (f"a DMA wrote SRAM line 0x{addr:08x} and the firmware did not invalidate it in the D-cache "
            f"(SCB DCIMVAC at 0x{mm.SCB_DCIMVAC:08x}) before going on: on the board the CPU could read stale "
            f"bytes there")
