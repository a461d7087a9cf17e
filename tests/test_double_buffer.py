"""Flash and PSRAM transfers are DMA on the board's clock, concurrent with the CPU, and the
firmware double-buffers weight tiles (emulator/peripherals.py CpuClock, DmaChannel,
FlashController; runtime_c/runtime.c MatrixStream; docs/board.md and docs/runtime.md).

- the timing model on synthetic transfers and computes of known lengths: 3 tiles of 2 ms
  I/O and 1 ms compute take 2 + 2 + 2 + 1 = 7 ms, not 9;
- the controller: STATUS reads BUSY while a transfer runs and the CPU's clock has not
  reached its end; the bytes land when it completes, not before; touching the controller
  while a transfer is in flight is a bus error;
- the firmware: the DMA of tile i+1 is started before tile i is computed (the CPU executes
  tile i's matrix-vector product while tile i+1 is in flight), so a stage's time is below
  I/O + compute, and the summary reports the overlap per stage kind and per token.
"""

import json
import zlib

import pytest
from conftest import mcugpt
from test_board import image, program  # noqa: F401  (fixtures: the board's test programs)

from compiler.pipeline import compile_model
from emulator.board import Board, BoardFault
from emulator.peripherals import BUSY, DONE, CpuClock, DmaChannel, Faults, FlashController, pipelined_ns
from target import memory_map as mm
from target.flash_layout import read_image
from target.flash_timing import read_time_ns

MS = 1e6  # ns
KiB = 1024
RAM = 256 * KiB


# ----------------------------------------------------------------------------
# the timing model, synthetic


def test_the_closed_form_of_a_double_buffered_stream():
    assert pipelined_ns([2 * MS] * 3, [1 * MS] * 3) == pytest.approx(7 * MS)    # I/O bound: not 9
    assert pipelined_ns([1 * MS] * 3, [2 * MS] * 3) == pytest.approx(7 * MS)    # compute bound
    assert pipelined_ns([3 * MS], [1 * MS]) == pytest.approx(4 * MS)            # one tile: no overlap
    assert pipelined_ns([], []) == 0.0


class _StubFlash:
    """A flash device whose every read takes `read_ns` (and reads zeros)."""

    def __init__(self, read_ns):
        self.read_ns, self.now_ns = read_ns, 0.0

    def read(self, addr, length):
        self.now_ns += self.read_ns
        return bytes(length)


class _StubUc:
    def __init__(self):
        self.writes, self.stopped = [], False

    def mem_write(self, addr, data):
        self.writes.append((addr, len(data)))

    def emu_stop(self):
        self.stopped = True


def _controller(read_ns, ns_per_instruction=1.0):
    clock = CpuClock(None, cpu_hz=1e9, cpi=ns_per_instruction)   # 1 instruction = ns_per_instruction ns
    faults = Faults()
    return FlashController(faults, _StubFlash(read_ns), mm.SRAM_BASE, 1 << 20, clock=clock), clock, faults


def _reg(ctl, uc, name, value=None):
    off = mm.FLASHCTL.reg(name)
    if value is None:
        return ctl._read(uc, off, 4, None)
    ctl._write(uc, off, 4, value, None)


def _start_read(ctl, uc, dst, n=64):
    _reg(ctl, uc, "ADDR", 0)
    _reg(ctl, uc, "DST", dst)
    _reg(ctl, uc, "LEN", n)
    _reg(ctl, uc, "CMD", mm.FLASH_CMD["READ"])


def _wait(ctl, uc):
    polls = 1
    while not _reg(ctl, uc, "STATUS") & DONE:
        polls += 1
    return polls


@pytest.mark.parametrize("io_ms, compute_ms, expected_ms", [(2, 1, 7), (1, 2, 7), (2, 2, 8)])
def test_three_tiles_cost_what_the_double_buffered_schedule_says(io_ms, compute_ms, expected_ms):
    """The firmware's schedule (runtime.c matrix_next_tile) driven against the real
    controller and clock: start 0; then per tile: wait, start the next, compute."""
    ctl, clock, faults = _controller(io_ms * MS)
    uc = _StubUc()
    buffers = [mm.SRAM_BASE, mm.SRAM_BASE + 4096]
    _start_read(ctl, uc, buffers[1])
    for i in range(3):
        _wait(ctl, uc)
        if i + 1 < 3:
            _start_read(ctl, uc, buffers[i % 2])
        clock.execute(int(compute_ms * MS))          # the tile's matrix-vector product
    clock.sync()
    assert clock.now_ns == pytest.approx(expected_ms * MS)
    assert clock.compute_ns == pytest.approx(3 * compute_ms * MS)
    assert clock.stall_ns == pytest.approx((expected_ms - 3 * compute_ms) * MS)
    assert clock.now_ns == pytest.approx(pipelined_ns([io_ms * MS] * 3, [compute_ms * MS] * 3))
    assert faults.first is None and len(uc.writes) == 3


def test_the_sequential_schedule_costs_the_sum():
    ctl, clock, _ = _controller(2 * MS)
    uc = _StubUc()
    for _ in range(3):
        _start_read(ctl, uc, mm.SRAM_BASE)
        _wait(ctl, uc)
        clock.execute(int(1 * MS))
    assert clock.sync() == pytest.approx(9 * MS)


def test_status_is_busy_until_the_clock_reaches_the_end_and_the_bytes_land_then():
    ctl, clock, _ = _controller(1 * MS)
    uc = _StubUc()
    _start_read(ctl, uc, mm.SRAM_BASE, 100)
    assert uc.writes == []                                  # nothing lands at the command
    clock.execute(int(0.5 * MS))
    assert _reg(ctl, uc, "STATUS") == BUSY                  # 0.5 ms in: still running
    assert uc.writes == [] and clock.now_ns == pytest.approx(0.5 * MS)
    clock.execute(1000)                                     # more work: not a poll loop
    assert _reg(ctl, uc, "STATUS") == BUSY and clock.stall_ns == 0.0
    # polling again at once: the CPU spins until the end, and the bytes land
    assert _reg(ctl, uc, "STATUS") == DONE and uc.writes == [(mm.SRAM_BASE, 100)]
    assert clock.now_ns == pytest.approx(1 * MS) and clock.stall_ns > 0
    # enough compute in between: the first poll already reads DONE, no wait at all
    _start_read(ctl, uc, mm.SRAM_BASE, 100)
    stalled = clock.stall_ns
    clock.execute(int(3 * MS))
    assert _wait(ctl, uc) == 1 and clock.stall_ns == stalled


def test_a_dma_channel_runs_its_transfers_one_after_another():
    clock = CpuClock(None, 1e9, 1.0)          # 1 ns per instruction
    dma = DmaChannel(clock)
    assert dma.start(5.0) == 5.0
    assert dma.start(5.0) == 10.0            # queued behind the first (the controllers forbid this)
    clock.execute(8)
    assert not dma.poll(wait=False)          # at 8 ns the second is still running
    assert dma.poll(wait=True) and clock.now_ns == 10.0 and clock.stall_ns == 2.0
    assert dma.start(5.0) == 15.0 and not dma.poll(wait=False)
    assert dma.poll(wait=True) and clock.now_ns == 15.0 and clock.stall_ns == 7.0


@pytest.mark.parametrize("name", ["CMD", "ADDR", "CRC_CTRL"])
def test_touching_the_controller_while_a_transfer_is_in_flight_is_a_bus_error(name):
    ctl, clock, faults = _controller(1 * MS)
    uc = _StubUc()
    _start_read(ctl, uc, mm.SRAM_BASE)
    _reg(ctl, uc, name, 1)
    assert uc.stopped and faults.first["kind"] == "bus_error"
    assert f"FLASHCTL.{name} while a DMA transfer is in flight" in faults.first["what"]


# ----------------------------------------------------------------------------
# the controller on the board, with a test program


def test_on_the_board_a_read_runs_while_the_cpu_computes(program, image):
    data = image.read_bytes()
    addr, n = 4096, 8192
    io_ns = read_time_ns("w25q-quad", n, device_size=len(data))
    # spin 0: the first STATUS read sees BUSY; the bytes are not there until DONE
    board = Board(program("dma_async"), image, ram_bytes=RAM)
    r = board.run([0, addr, n, 0], n_new=0)
    first, during, polls, after, crc = (f.split("=")[1] for f in r.text.split())
    assert int(first, 16) == BUSY and int(during) == 0xA5 * n and int(polls) >= 1
    assert int(after) == sum(data[addr:addr + n]) and int(crc, 16) == zlib.crc32(data[addr:addr + n])
    # the CPU summed the buffer while the transfer ran (overlap), then waited for the rest
    s = r.stages[0]
    assert s.io_ns == pytest.approx(io_ns) and 0 < s.overlap_ns < io_ns and s.stall_ns > 0
    assert r.device_ns == pytest.approx(r.compute_ns + r.stall_ns)
    # a long compute: the transfer ends under it, the first poll reads DONE, no wait
    r2 = board.run([0, addr, n, 100_000], n_new=0)
    assert r2.text.split()[2] == "polls=1" and r2.stall_ns == 0.0
    assert r2.stages[0].overlap_ns == pytest.approx(r2.stages[0].io_ns)
    assert r2.device_ns == pytest.approx(r2.compute_ns)
    board.close()


@pytest.mark.parametrize("mmio", ["native", "python"])
@pytest.mark.parametrize("mode, register", [(1, "CMD"), (2, "ADDR")])
def test_on_the_board_a_register_write_in_flight_is_a_fault(program, image, mode, register, mmio, monkeypatch):
    """ADDR included: the native store (emulator/mmio.py) leaves every write to Python while
    a transfer is in flight."""
    monkeypatch.setenv("MCUGPT_MMIO", mmio)
    board = Board(program("dma_async"), image, ram_bytes=RAM)
    with pytest.raises(BoardFault) as e:
        board.run([mode, 0, 4096, 0], n_new=0)
    assert e.value.kind == "bus_error" and f"FLASHCTL.{register} while a DMA transfer is in flight" in str(e.value)
    board.close()


# ----------------------------------------------------------------------------
# the firmware double-buffers


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """tiny with a 160 KiB budget: the matrices stream in several tiles each."""
    return compile_model("tiny", tmp_path_factory.mktemp("tiled"), ram=160 << 10, quiet=True)


def _matrix_reads(log, image):
    """The flash log's weight-tile reads, grouped per matrix blob (in order):
    {tensor name: [(start event index, start instructions, done instructions), ...]}."""
    blobs = {t["offset"]: t for t in image.tensors if t["rows"] > 1 and t["name"] != "wpe.weight"}
    out, current = {}, None
    starts = [i for i, e in enumerate(log) if e[0] == "start" and e[1] == "READ"]
    for i in starts:
        _, _, addr, length, instr, _t0, _t1, _cycles, _ram = log[i]
        done = next(e for e in log[i + 1:] if e[0] == "done")
        if addr in blobs:
            current = blobs[addr]
            out.setdefault(current["name"], [])
        elif current is None or not current["offset"] < addr < current["offset"] + current["size"]:
            current = None
            continue
        out[current["name"]].append((addr, length, instr, done[1]))
    return out


def test_the_dma_of_tile_i_plus_1_starts_before_tile_i_is_computed(tiled, tok):
    qkv = tiled.plan.tensor("h.0.attn.c_attn.weight")
    assert qkv.tiles >= 3
    image = read_image(tiled.out_dir / "flash.img", verify_weights=False)
    with Board(tiled.out_dir / "firmware.elf", tiled.out_dir / "flash.img", ram_bytes=160 << 10,
               record_dma=True) as board:
        result = board.run(tok.encode("Hello"), n_new=2)
        log = board.flashctl.log
    reads = _matrix_reads(log, image)
    w = reads["h.0.attn.c_attn.weight"]
    assert len(w) % qkv.tiles == 0 and len(w) >= qkv.tiles
    for name, tiles in reads.items():
        for k in range(1, len(tiles)):
            (a0, n0, start0, done0), (a1, n1, start1, done1) = tiles[k - 1], tiles[k]
            if a1 != a0 + n0:
                continue                                       # the next token's first tile
            # tile k was started right after tile k-1 landed (a few instructions), and the
            # CPU computed tile k-1 (at least one instruction per multiply-accumulate: one
            # per 4 bytes of fp32 weights) before waiting for tile k
            assert done0 <= start1 < done0 + 200, name
            assert done1 - start1 >= n0 // 4, name
    assert result.dma_overlapped_instructions > 0.5 * result.instructions


def _replay(log, ns_per_cycle, bus_ns):
    """A second implementation of the board's timeline, from the DMA log alone.

    The CPU's time is its cycles (as counted when each event happened) x ns per cycle plus
    the time it has waited. A
    transfer starts when it is issued, or when the one before it ends, and takes its bus time
    (`bus_ns(command, length)`: the datasheet model, not the log). The CPU waits when it sees
    a transfer done before the transfer's end. Returns (stall_ns, [(start, end)] per transfer)."""
    stall, free_at, end, spans = 0.0, 0.0, None, []
    for e in log:
        if e[0] == "start":
            _, command, _addr, length, _instr, _t0, _t1, cycles, _ram = e
            begin = max(cycles * ns_per_cycle + stall, free_at)
            end = free_at = begin + bus_ns(command, length)
            spans.append((begin, end))
        else:
            _, _instr, _now, cycles = e
            now = cycles * ns_per_cycle + stall
            stall += max(0.0, end - now)
    return stall, spans


def test_the_board_clock_agrees_with_a_replay_of_the_dma_log(tiled, tok):
    """The board's device time, its stall time and the I/O time per stage equal what an
    independent replay of the flash controller's log gives, with every read timed by the
    datasheet model (target/flash_timing.py read_time_ns)."""
    image = tiled.out_dir / "flash.img"
    with Board(tiled.out_dir / "firmware.elf", image, ram_bytes=160 << 10, record_dma=True) as board:
        result = board.run(tok.encode("Hello"), n_new=2)
        log = board.flashctl.log
    assert {e[1] for e in log if e[0] == "start"} == {"READ"}
    ns_per_cycle = 1e9 / 480e6                          # sim64's 480 MHz
    stall, spans = _replay(log, ns_per_cycle, lambda cmd, n: read_time_ns("w25q-quad", n, device_size=16 << 20))
    logged = [(e[5], e[6]) for e in log if e[0] == "start"]
    assert len(spans) == len(logged) > 100
    for (a0, a1), (b0, b1) in zip(spans, logged):
        assert a0 == pytest.approx(b0, rel=1e-9, abs=1e-3) and a1 == pytest.approx(b1, rel=1e-9, abs=1e-3)
    assert result.stall_ns == pytest.approx(stall, rel=1e-9)
    assert result.device_ns == pytest.approx(result.cycles * ns_per_cycle + stall, rel=1e-9)
    io = sum(b - a for a, b in spans)
    assert result.flash_ns == pytest.approx(io, rel=1e-9)   # the flash device's own count of its bus time
    # the double-buffered tiles hide part of the I/O: the CPU waited for less than all of it
    assert 0 < stall < 0.9 * io


def test_multi_tile_stages_take_less_than_io_plus_compute(tiled, tok):
    with Board(tiled.out_dir / "firmware.elf", tiled.out_dir / "flash.img", ram_bytes=160 << 10) as board:
        result = board.run(tok.encode("Hello"), n_new=2)
    plan = tiled.plan
    for s in result.stages:
        multi = any(t.tiles > 1 for _role, t in plan.matrices(plan.stages[s.index]))
        assert s.device_ns >= max(s.io_ns, s.compute_ns) * (1 - 1e-9), s.name
        assert s.device_ns <= (s.io_ns + s.compute_ns) * (1 + 1e-9), s.name
        if multi:
            assert s.overlap_ns > 0.3 * min(s.io_ns, s.compute_ns), s.name
        elif plan.stages[s.index].kind in ("ln_1", "ln_2"):
            # sequential loads: only the poll loop's few instructions run under each transfer
            assert 0 <= s.overlap_ns < 0.01 * s.io_ns, s.name
    p = result.per_position[-1]
    assert p.device_ns == pytest.approx(p.compute_ns + p.stall_ns)
    assert p.overlap_ns > 0


def test_the_summary_reports_the_overlap_per_stage_kind_and_per_token(tiled):
    r = json.loads(mcugpt("run", "--build", tiled.out_dir, "--prompt", "Hello", "--tokens", "2", "--json",
                          check=True).stdout)
    d = r["device"]
    # overlapping can only hide time: the slower of I/O and compute <= device <= their sum
    assert max(d["io_s_per_token"], d["compute_s_per_token"]) <= d["s_per_token"] * (1 + 1e-9)
    assert d["s_per_token"] <= d["sequential_s_per_token"] * (1 + 1e-9)
    assert d["overlap_s_per_token"] > 0 and 0 < d["overlap_fraction"] <= 1 + 1e-9
    kinds = {k["kind"]: k for k in r["stage_kinds"]}
    for k in kinds.values():
        assert max(k["io_s"], k["compute_s"]) <= k["device_s"] * (1 + 1e-9) <= (k["io_s"] + k["compute_s"]) * (1 + 2e-9)
        assert 0 <= k["overlap_fraction"] <= 1 + 1e-9
    assert kinds["mlp"]["overlap_s"] > 0 and kinds["attn_qkv"]["overlap_s"] > 0
    assert all("overlap_s" in s and "instructions" in s for s in r["stages"])
