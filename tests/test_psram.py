"""Specification of the simulated PSRAM (emulator/psram.py, target/psram_timing.py).

Timing expectations are written out from the datasheet figures by hand, not
read back from the preset table, so a wrong table entry fails here.
"""

import dataclasses
import random

import pytest

from emulator.psram import Psram, PsramAddressError, transfer_time_ns
from target.psram_timing import PRESETS, MiB, PsramTiming, get_preset, split_bursts

OCTAL_CLK_NS = 1e9 / 200e6  # one 200 MHz clock = 5 ns
QUAD_CLK_NS = 1e9 / 80e6  # one 80 MHz clock = 12.5 ns

# APS6408L octal DDR: command 1 clock (8 bits on 8 lines) + 32-bit address on
# 8 lines DDR (2 clocks) + latency 7 clocks (read LC and write WLC at 200 MHz);
# data 2 bytes per clock; tCPH 15 ns after each burst; 1 KiB rows.
OCTAL_OVERHEAD = 1 + 2 + 7
OCTAL_TCPH = 15.0
# APS6404L in QPI: EBh = 2 command clocks + 24-bit address on 4 lines (6
# clocks) + 6 wait cycles; 38h = 2 + 6, no wait; data 2 clocks per byte;
# tCPH 18 ns; tCEM 8 us = 640 clocks at 80 MHz.
QUAD_READ_OVERHEAD = 2 + 6 + 6
QUAD_WRITE_OVERHEAD = 2 + 6
QUAD_TCPH = 18.0


def pattern(n, seed=0):
    return bytes((i * 7 + seed) % 251 for i in range(n))


# --- the presets ---------------------------------------------------------------------


def test_presets_are_timing_records_and_octal_is_the_default():
    assert set(PRESETS) >= {"octal-psram-200", "quad-psram-80"}
    assert all(isinstance(t, PsramTiming) for t in PRESETS.values())
    psram = Psram()
    assert psram.timing.name == "octal-psram-200"
    assert psram.size == 8 * MiB  # 64 Mbit reference part
    assert Psram(preset="quad-psram-80").size == 8 * MiB


def test_an_unknown_preset_is_rejected_by_name():
    with pytest.raises(KeyError, match="hyper"):
        get_preset("hyperram")


def test_peak_rates_are_the_data_phase_rates():
    assert PRESETS["octal-psram-200"].peak_bytes_per_s == 400e6  # 200 MHz x 2 bytes (8 lines DDR)
    assert PRESETS["quad-psram-80"].peak_bytes_per_s == 40e6  # 80 MHz x 4 bits


# --- storage ---------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["octal-psram-200", "quad-psram-80"])
def test_data_written_reads_back(preset):
    psram = Psram(64 * 1024, preset)
    data = pattern(5000, seed=3)
    psram.write(1000, data)  # crosses several page boundaries and (quad) the tCEM split
    assert psram.read(1000, 5000) == data
    assert psram.read(0, 1000) == bytes(1000)  # untouched bytes are still zero
    assert psram.read(6000, 10) == bytes(10)
    psram.write(1500, b"\x01\x02")
    assert psram.read(1499, 4) == bytes([data[499], 1, 2, data[502]])


def test_a_new_device_is_zero_filled_and_takes_any_size():
    psram = Psram(4096)
    assert psram.size == 4096
    assert psram.read(0, 4096) == bytes(4096)


def test_write_accepts_any_bytes_like_but_not_an_int():
    psram = Psram(4096)
    psram.write(0, bytearray(b"ab"))
    psram.write(2, memoryview(b"cd"))
    assert psram.read(0, 4) == b"abcd"
    with pytest.raises(TypeError):
        psram.write(0, 5)


def test_sizes_the_address_cannot_reach_are_rejected():
    Psram(16 * MiB, "quad-psram-80")  # 24-bit address: 16 MiB is the limit
    with pytest.raises(ValueError):
        Psram(16 * MiB + 1, "quad-psram-80")
    with pytest.raises(ValueError):
        Psram(0)


# --- out of range --------------------------------------------------------------------


def test_read_past_the_end_raises_naming_address_length_and_size():
    psram = Psram(4096)
    with pytest.raises(PsramAddressError) as err:
        psram.read(0xFF0, 32)
    message = str(err.value)
    assert "0xff0" in message and "length 32" in message and "4096" in message
    assert isinstance(err.value, IndexError)
    assert psram.read(0xFE0, 32) == bytes(32)  # the last 32 bytes are fine


def test_write_past_the_end_raises_and_changes_nothing():
    psram = Psram(4096)
    with pytest.raises(PsramAddressError, match="length 2"):
        psram.write(4095, b"\xaa\xbb")
    with pytest.raises(PsramAddressError):
        psram.write(-1, b"\xaa")
    assert psram.read(4094, 2) == b"\x00\x00"
    assert psram.now_ns == pytest.approx(transfer_time_ns("octal-psram-200", 2, False))  # only the read


def test_negative_address_and_empty_transfers_are_rejected():
    psram = Psram(4096)
    with pytest.raises(PsramAddressError):
        psram.read(-1, 1)
    with pytest.raises(ValueError):
        psram.read(0, 0)
    with pytest.raises(ValueError):
        psram.write(0, b"")
    assert psram.now_ns == 0.0


# --- octal timing against the datasheet ----------------------------------------------


def test_octal_small_read_and_write_cost_the_datasheet_clocks():
    # 64 B = 32 data clocks (8 lines DDR); 1 + 2 + 7 clocks before the data.
    expected = (OCTAL_OVERHEAD + 32) * OCTAL_CLK_NS + OCTAL_TCPH
    assert expected == 225.0
    assert transfer_time_ns("octal-psram-200", 64, write=False) == pytest.approx(expected)
    assert transfer_time_ns("octal-psram-200", 64, write=True) == pytest.approx(expected)  # WLC = 7 too
    psram = Psram()
    psram.read(0, 64)
    assert psram.now_ns == pytest.approx(225.0)
    psram.write(64, bytes(64))
    assert psram.now_ns == pytest.approx(450.0)


def test_octal_odd_byte_costs_a_whole_clock():
    assert transfer_time_ns("octal-psram-200", 1, False) == pytest.approx((OCTAL_OVERHEAD + 1) * 5 + 15)
    assert transfer_time_ns("octal-psram-200", 3, False) == pytest.approx((OCTAL_OVERHEAD + 2) * 5 + 15)


def test_octal_row_is_one_burst_and_a_large_read_is_one_burst_per_row():
    row = (OCTAL_OVERHEAD + 512) * OCTAL_CLK_NS + OCTAL_TCPH  # 1 KiB = 512 clocks
    assert row == 2625.0
    assert transfer_time_ns("octal-psram-200", 1024, False) == pytest.approx(row)
    assert transfer_time_ns("octal-psram-200", 4096, False) == pytest.approx(4 * row)
    assert split_bursts("octal-psram-200", 4096, False, addr=512) == [
        (512, 512), (1024, 1024), (2048, 1024), (3072, 1024), (4096, 512)]


def test_octal_burst_crossing_a_row_boundary_is_split_in_two():
    # 64 B at 1000: 24 B up to the 1 KiB boundary, then 40 B, each a full command.
    at_0 = transfer_time_ns("octal-psram-200", 64, False, addr=0)
    crossing = transfer_time_ns("octal-psram-200", 64, False, addr=1000)
    assert split_bursts("octal-psram-200", 64, False, addr=1000) == [(1000, 24), (1024, 40)]
    assert crossing == pytest.approx((OCTAL_OVERHEAD + 12) * 5 + 15 + (OCTAL_OVERHEAD + 20) * 5 + 15)
    assert crossing == pytest.approx(290.0)
    assert crossing - at_0 == pytest.approx(OCTAL_OVERHEAD * 5 + 15)  # one more command + tCPH
    assert transfer_time_ns("octal-psram-200", 24, False, addr=1000) == pytest.approx(
        (OCTAL_OVERHEAD + 12) * 5 + 15)  # ending exactly on the boundary is one burst


def test_octal_row_fits_in_tcem_at_200_mhz_so_rows_not_tcem_split_it():
    # A full 1 KiB row burst is 522 clocks = 2.61 us < tCEM 4 us, even with the
    # doubled latency (529 clocks).
    timing = PRESETS["octal-psram-200"]
    assert (OCTAL_OVERHEAD + 512) * OCTAL_CLK_NS < 4000
    for worst in (False, True):
        assert all(n == 1024 for _, n in split_bursts(timing, 64 * 1024, False, worst_case=worst))


def test_octal_burst_is_split_by_tcem_when_tcem_is_shorter():
    # The same part with a 1 us tCEM: 200 clocks per burst, 10 of them command,
    # address and latency, leaving 190 data clocks = 380 bytes.
    short = dataclasses.replace(PRESETS["octal-psram-200"], max_ce_low_ns=1000)
    assert split_bursts(short, 1024, False) == [(0, 380), (380, 380), (760, 264)]
    expected = (200 + 200 + OCTAL_OVERHEAD + 132) * OCTAL_CLK_NS + 3 * OCTAL_TCPH
    assert expected == 2755.0
    assert transfer_time_ns(short, 1024, False) == pytest.approx(expected)


def test_octal_worst_case_doubles_the_read_latency_only():
    # Refresh collision in variable-latency mode (or fixed latency): 2 x 7 clocks.
    assert transfer_time_ns("octal-psram-200", 64, False, worst_case=True) == pytest.approx(
        (1 + 2 + 14 + 32) * OCTAL_CLK_NS + OCTAL_TCPH)
    assert transfer_time_ns("octal-psram-200", 64, True, worst_case=True) == pytest.approx(225.0)
    psram = Psram(preset="octal-psram-200", worst_case=True)
    psram.read(0, 64)
    assert psram.now_ns == pytest.approx(260.0)


def test_octal_large_read_approaches_400_mb_per_s():
    psram = Psram()
    psram.read(0, 1 * MiB)
    mb_per_s = 1 * MiB / (psram.now_ns * 1e-9) / 1e6
    # 1024 rows x 2625 ns: 512 of every 525 clocks (tCPH = 3 clocks) carry data.
    assert mb_per_s == pytest.approx(400 * 512 / 525, rel=1e-9)
    assert 385 < mb_per_s < 400


# --- quad timing against the datasheet -----------------------------------------------


def test_quad_small_read_and_write_cost_the_datasheet_clocks():
    # 32 B = 64 data clocks on 4 lines.
    read = (QUAD_READ_OVERHEAD + 64) * QUAD_CLK_NS + QUAD_TCPH
    write = (QUAD_WRITE_OVERHEAD + 64) * QUAD_CLK_NS + QUAD_TCPH
    assert (read, write) == (993.0, 918.0)
    assert transfer_time_ns("quad-psram-80", 32, False) == pytest.approx(read)
    assert transfer_time_ns("quad-psram-80", 32, True) == pytest.approx(write)
    psram = Psram(preset="quad-psram-80")
    psram.write(0, bytes(32))
    psram.read(0, 32)
    assert psram.now_ns == pytest.approx(read + write)


def test_quad_burst_is_split_by_tcem():
    # tCEM 8 us = 640 clocks; a read burst has 640 - 14 = 626 data clocks = 313 B.
    full = 640 * QUAD_CLK_NS + QUAD_TCPH
    assert full == 8018.0
    assert transfer_time_ns("quad-psram-80", 313, False) == pytest.approx(full)
    assert split_bursts("quad-psram-80", 314, False) == [(0, 313), (313, 1)]
    assert transfer_time_ns("quad-psram-80", 314, False) == pytest.approx(
        full + (QUAD_READ_OVERHEAD + 2) * QUAD_CLK_NS + QUAD_TCPH)
    # 1 KiB read: 313 + 313 + 313 + 85.
    assert transfer_time_ns("quad-psram-80", 1024, False) == pytest.approx(
        3 * full + (QUAD_READ_OVERHEAD + 170) * QUAD_CLK_NS + QUAD_TCPH)
    assert transfer_time_ns("quad-psram-80", 1024, False) == pytest.approx(26_372.0)
    # A write burst has 640 - 8 = 632 data clocks = 316 B: 316 x 3 + 76.
    assert split_bursts("quad-psram-80", 1024, True) == [(0, 316), (316, 316), (632, 316), (948, 76)]
    assert transfer_time_ns("quad-psram-80", 1024, True) == pytest.approx(
        3 * full + (QUAD_WRITE_OVERHEAD + 152) * QUAD_CLK_NS + QUAD_TCPH)


def test_quad_linear_burst_crosses_a_page_boundary_for_free():
    # APS6404L: a linear burst crosses the 1 KiB page boundary invisibly (<= 84 MHz).
    assert split_bursts("quad-psram-80", 64, False, addr=1000) == [(1000, 64)]
    assert transfer_time_ns("quad-psram-80", 64, False, addr=1000) == pytest.approx(
        (QUAD_READ_OVERHEAD + 128) * QUAD_CLK_NS + QUAD_TCPH)


def test_quad_burst_crosses_at_most_one_page_boundary():
    # "can cross page boundary one time only in a burst": with a tCEM long
    # enough for 3 KiB, a 3 KiB read at 1000 must still stop at 2048.
    long_cem = dataclasses.replace(PRESETS["quad-psram-80"], max_ce_low_ns=100_000)
    assert split_bursts(long_cem, 3072, False, addr=1000) == [(1000, 1048), (2048, 2024)]


def test_quad_has_no_variable_latency():
    assert transfer_time_ns("quad-psram-80", 32, False, worst_case=True) == pytest.approx(993.0)


def test_quad_large_read_approaches_40_mb_per_s():
    psram = Psram(preset="quad-psram-80")
    psram.read(0, 1 * MiB)
    mb_per_s = 1 * MiB / (psram.now_ns * 1e-9) / 1e6
    # 3350 full bursts of 313 B (640 clocks + tCPH) and one of 26 B.
    expected_ns = (3350 * 640 + QUAD_READ_OVERHEAD + 52) * QUAD_CLK_NS + 3351 * QUAD_TCPH
    assert psram.now_ns == pytest.approx(expected_ns)
    assert 38.5 < mb_per_s < 40


# --- the burst rules hold for any transfer -------------------------------------------


@pytest.mark.parametrize("preset", ["octal-psram-200", "quad-psram-80"])
@pytest.mark.parametrize("write", [False, True])
def test_every_burst_respects_tcem_and_the_page_rule(preset, write):
    timing = PRESETS[preset]
    frame = timing.write_frame if write else timing.read_frame
    rng = random.Random(1)
    for _ in range(200):
        addr, length = rng.randrange(0, 1 << 20), rng.randrange(1, 20_000)
        bursts = split_bursts(timing, length, write, addr)
        assert bursts[0][0] == addr and sum(n for _, n in bursts) == length
        assert all(a + n == b for (a, n), (b, _) in zip(bursts, bursts[1:]))  # contiguous
        for a, n in bursts:
            clocks = 1 + 2 if preset.startswith("octal") else 2 + 6
            clocks += frame.dummy_clocks + -(-8 * n // timing.data_bits_per_clock)
            assert clocks * 1e9 / timing.clock_hz <= timing.max_ce_low_ns
            crossings = (a + n - 1) // 1024 - a // 1024
            assert crossings <= (0 if preset.startswith("octal") else 1)


def test_zero_length_transfer_time_is_zero():
    assert transfer_time_ns("quad-psram-80", 0, False) == 0.0
    assert split_bursts("octal-psram-200", 0, True) == []


# --- clock and counters --------------------------------------------------------------


def test_the_clock_only_moves_forward():
    psram = Psram(16)
    psram.advance(100)
    psram.wait_until(50)
    assert psram.now_ns == 100
    with pytest.raises(ValueError):
        psram.advance(-1)


def test_counters_add_up():
    psram = Psram(64 * 1024, "octal-psram-200")
    psram.write(0, bytes(4096))  # 4 bursts
    psram.write(1000, bytes(64))  # 2 bursts (crosses a row)
    psram.read(0, 64)
    psram.read(0, 2048)  # 2 bursts
    psram.read(10, 1)
    psram.advance(1234.5)
    stats = psram.stats()

    assert stats["preset"] == "octal-psram-200"
    assert stats["write"] == {
        "count": 2, "bursts": 6, "bytes": 4160,
        "ns": pytest.approx(4 * 2625 + 290)}
    assert stats["read"]["count"] == 3 and stats["read"]["bursts"] == 4
    assert stats["read"]["bytes"] == 64 + 2048 + 1
    assert stats["read"]["ns"] == pytest.approx(225 + 2 * 2625 + (OCTAL_OVERHEAD + 1) * 5 + 15)
    for key in ("count", "bursts", "bytes", "ns"):
        assert stats["total"][key] == pytest.approx(stats["read"][key] + stats["write"][key])
    # Every nanosecond is a transfer or time let pass outside one.
    assert stats["idle_ns"] == 1234.5
    assert stats["elapsed_ns"] == pytest.approx(stats["total"]["ns"] + stats["idle_ns"])
    assert stats["elapsed_ns"] == pytest.approx(psram.now_ns)


def test_reset_stats_zeroes_counters_but_not_the_clock():
    psram = Psram(4096)
    psram.read(0, 16)
    now = psram.now_ns
    psram.reset_stats()
    assert psram.stats()["total"] == {"count": 0, "bursts": 0, "bytes": 0, "ns": 0.0}
    assert psram.now_ns == now
    psram.write(0, bytes(16))
    assert psram.stats()["elapsed_ns"] == pytest.approx(transfer_time_ns("octal-psram-200", 16, True))
    assert psram.stats()["read"]["count"] == 0


def test_the_device_predicts_its_own_transfers():
    psram = Psram(64 * 1024, "quad-psram-80")
    predicted = psram.transfer_time_ns(5000, write=True, addr=777)
    assert psram.bursts(777, 5000, write=True) == split_bursts("quad-psram-80", 5000, True, 777)
    psram.write(777, bytes(5000))
    assert psram.now_ns == pytest.approx(predicted)
