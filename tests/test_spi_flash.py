"""Specification of the simulated SPI NOR flash (emulator/spi_flash.py).

Timing expectations are written out from the datasheet figures by hand, not
read back from the preset table, so a wrong table entry fails here.
"""

import pytest

from emulator.spi_flash import (
    STATUS_BUSY,
    STATUS_WEL,
    FlashAddressError,
    FlashBusyError,
    FlashWriteNotEnabledError,
    SpiNorFlash,
    read_time_ns,
)
from target.flash_timing import PRESETS, FlashTiming, MiB

W25Q_CLK_NS = 1e9 / 133e6  # one 133 MHz clock
OCTAL_CLK_NS = 1e9 / 200e6  # one 200 MHz clock = 5 ns
DESELECT_NS = 10.0  # tSHSL1, array read -> next command


def pattern(n):
    return bytearray(i * 7 % 251 for i in range(n))


def erased(n):
    return bytearray(b"\xff" * n)


# --- identity and reads --------------------------------------------------------------


def test_jedec_id_is_the_reference_parts():
    assert SpiNorFlash(erased(4096), "w25q-quad").read_jedec_id() == bytes([0xEF, 0x40, 0x18])
    assert SpiNorFlash(erased(4096), "octal-dtr").read_jedec_id() == bytes([0xC2, 0x80, 0x3A])


def test_presets_are_timing_records_and_w25q_is_the_default():
    assert set(PRESETS) >= {"w25q-quad", "octal-dtr"}
    assert all(isinstance(t, FlashTiming) for t in PRESETS.values())
    assert SpiNorFlash(erased(16)).timing.name == "w25q-quad"


@pytest.mark.parametrize("preset, mode", [
    ("w25q-quad", "quad"), ("w25q-quad", "fast"), ("w25q-quad", "single"), ("octal-dtr", "octal"),
])
def test_read_returns_the_stored_bytes(preset, mode):
    data = pattern(8192)
    flash = SpiNorFlash(data, preset)
    assert flash.read(1000, 3000, mode=mode) == bytes(data[1000:4000])
    assert flash.read(0, 1, mode=mode) == bytes(data[:1])
    assert flash.read(8191, 1, mode=mode) == bytes(data[8191:])


def test_read_sees_the_callers_buffer_without_copying_it():
    data = pattern(4096)
    flash = SpiNorFlash(data)
    data[100] = 0x5A
    assert flash.read(100, 1) == b"\x5a"


def test_default_read_mode_is_the_presets_fastest():
    quad = SpiNorFlash(erased(4096), "w25q-quad")
    quad.read(0, 16)
    octal = SpiNorFlash(erased(4096), "octal-dtr")
    octal.read(0, 16)
    assert list(quad.stats()["commands"]) == ["read_quad"]
    assert list(octal.stats()["commands"]) == ["read_octal"]


@pytest.mark.parametrize("preset, mode", [
    ("w25q-quad", "octal"), ("octal-dtr", "quad"), ("octal-dtr", "single"), ("w25q-quad", "dual"),
])
def test_a_mode_the_part_does_not_have_is_rejected(preset, mode):
    flash = SpiNorFlash(erased(4096), preset)
    with pytest.raises(ValueError, match=mode):
        flash.read(0, 16, mode=mode)


def test_read_past_the_end_raises_naming_address_length_and_size():
    flash = SpiNorFlash(erased(4096))
    with pytest.raises(FlashAddressError) as err:
        flash.read(0xFF0, 32)
    message = str(err.value)
    assert "0xff0" in message and "length 32" in message and "4096" in message
    with pytest.raises(FlashAddressError):
        flash.read(-1, 1)
    assert flash.read(0xFE0, 32) == b"\xff" * 32  # the last 32 bytes are fine


def test_zero_length_read_is_rejected():
    with pytest.raises(ValueError):
        SpiNorFlash(erased(4096)).read(0, 0)


# --- read timing against the datasheets ----------------------------------------------


def test_quad_read_of_4096_bytes_costs_the_datasheet_clocks():
    # EBh 1-4-4: 8 command clocks, 24-bit address on 4 lines = 6, mode byte = 2,
    # 4 dummy, 2 clocks per byte; then tSHSL before the next command.
    expected = (8 + 6 + 2 + 4 + 2 * 4096) * W25Q_CLK_NS + DESELECT_NS
    assert expected == pytest.approx(61_754.36, abs=0.01)
    assert read_time_ns("w25q-quad", 4096, "quad") == pytest.approx(expected)
    flash = SpiNorFlash(erased(16 * MiB), "w25q-quad")
    flash.read(0, 4096)
    assert flash.now_ns == pytest.approx(expected)


def test_fast_and_single_reads_cost_the_datasheet_clocks():
    # 0Bh 1-1-1 at 133 MHz: 8 command + 24 address + 8 dummy + 8 per byte.
    assert read_time_ns("w25q-quad", 256, "fast") == pytest.approx((8 + 24 + 8 + 8 * 256) * W25Q_CLK_NS + 10)
    # 03h 1-1-1 at 50 MHz (20 ns per clock), no dummy: 2080 clocks = 41.6 us.
    assert read_time_ns("w25q-quad", 256, "single") == pytest.approx(41_600 + 10)


def test_address_width_is_4_bytes_above_16_mib():
    small = (8 + 6 + 2 + 4 + 2 * 4096) * W25Q_CLK_NS + 10
    big = (8 + 8 + 2 + 4 + 2 * 4096) * W25Q_CLK_NS + 10  # 32-bit address on 4 lines = 8 clocks
    assert read_time_ns("w25q-quad", 4096, device_size=16 * MiB) == pytest.approx(small)
    assert read_time_ns("w25q-quad", 4096, device_size=1536 * MiB) == pytest.approx(big)
    assert SpiNorFlash(b"", "w25q-quad", size=16 * MiB).address_bytes == 3
    assert SpiNorFlash(b"", "w25q-quad", size=16 * MiB + 4096).address_bytes == 4
    flash = SpiNorFlash(b"", "w25q-quad", size=32 * MiB)
    flash.read(0, 4096)
    assert flash.now_ns == pytest.approx(big)


def test_octal_dtr_read_clocks_and_400_mb_per_s_peak():
    # 8D-8D-8D at 200 MHz: 2-byte command = 1 clock, 4-byte address = 2 clocks,
    # 20 dummy clocks, 2 bytes per clock.
    assert read_time_ns("octal-dtr", 4096) == pytest.approx((1 + 2 + 20 + 2048) * OCTAL_CLK_NS + 10)
    flash = SpiNorFlash(erased(1 * MiB), "octal-dtr")
    flash.read(0, 1 * MiB)
    mb_per_s = 1 * MiB / (flash.now_ns * 1e-9) / 1e6
    assert 399.9 < mb_per_s < 400.0


def test_quad_continuous_rate_is_about_66_mb_per_s():
    mb_per_s = 1 * MiB / (read_time_ns("w25q-quad", 1 * MiB) * 1e-9) / 1e6
    assert 66.4 < mb_per_s < 66.5  # 133 MHz * 4 bits / 8


# --- program and erase ---------------------------------------------------------------


def program(flash, addr, data):
    flash.write_enable()
    flash.page_program(addr, data)
    flash.wait_ready()


def erase_sector(flash, addr):
    flash.write_enable()
    flash.sector_erase(addr)
    flash.wait_ready()


def test_program_cannot_set_bits_but_erase_does():
    flash = SpiNorFlash(bytearray(8192))  # all 0x00
    program(flash, 0x100, b"\xff" * 16)
    assert flash.read(0x100, 16) == b"\x00" * 16
    erase_sector(flash, 0x100)
    assert flash.read(0, 4096) == b"\xff" * 4096
    program(flash, 0x100, b"\xff" * 16)
    assert flash.read(0x100, 16) == b"\xff" * 16


def test_program_ands_new_data_into_old():
    flash = SpiNorFlash(erased(4096))
    program(flash, 0, b"\xf0")
    program(flash, 0, b"\x3c")
    assert flash.read(0, 1) == b"\x30"


def test_page_program_wraps_inside_its_page():
    flash = SpiNorFlash(erased(4096))
    program(flash, 0x100 + 254, b"\x01\x02\x03\x04")
    assert flash.read(0x100 + 254, 2) == b"\x01\x02"
    assert flash.read(0x100, 2) == b"\x03\x04"  # wrapped to the start of the same page
    assert flash.read(0x200, 2) == b"\xff\xff"  # the next page is untouched


def test_page_program_of_more_than_a_page_is_rejected():
    flash = SpiNorFlash(erased(4096))
    flash.write_enable()
    with pytest.raises(ValueError):
        flash.page_program(0, b"\x00" * 257)


def test_sector_and_block_erase_cover_exactly_their_unit():
    flash = SpiNorFlash(bytearray(256 * 1024))
    erase_sector(flash, 0x1234)  # any address inside the sector
    assert flash.read(0x1000, 4096) == b"\xff" * 4096
    assert flash.read(0x0FFF, 1) == b"\x00" and flash.read(0x2000, 1) == b"\x00"
    flash.write_enable()
    flash.block_erase(0x2_0001)
    flash.wait_ready()
    assert flash.read(0x2_0000, 64 * 1024) == b"\xff" * (64 * 1024)
    assert flash.read(0x1_FFFF, 1) == b"\x00" and flash.read(0x3_0000, 1) == b"\x00"


def test_program_and_erase_without_write_enable_are_rejected():
    flash = SpiNorFlash(erased(8192))
    with pytest.raises(FlashWriteNotEnabledError):
        flash.page_program(0, b"\x00")
    with pytest.raises(FlashWriteNotEnabledError):
        flash.sector_erase(0)
    flash.write_enable()
    flash.write_disable()
    with pytest.raises(FlashWriteNotEnabledError):
        flash.block_erase(0)
    assert flash.read(0, 1) == b"\xff"


def test_wel_is_set_by_write_enable_and_cleared_when_the_program_finishes():
    flash = SpiNorFlash(erased(4096))
    assert flash.read_status() == 0
    flash.write_enable()
    assert flash.read_status() == STATUS_WEL
    flash.page_program(0, b"\x00")
    assert flash.read_status() == STATUS_BUSY | STATUS_WEL
    flash.wait_ready()
    assert flash.read_status() == 0
    with pytest.raises(FlashWriteNotEnabledError):
        flash.page_program(1, b"\x00")  # WEL does not survive the program


def test_commands_while_busy_are_rejected_until_the_program_time_has_passed():
    flash = SpiNorFlash(erased(4096), "w25q-quad")
    flash.write_enable()
    start = flash.now_ns
    flash.page_program(0, b"\x00" * 256)
    # 02h 1-1-1: 8 command + 24 address + 2048 data clocks, then tPP = 0.4 ms typ.
    done = start + (8 + 24 + 8 * 256) * W25Q_CLK_NS + 0.4e6
    assert flash.busy_until_ns == pytest.approx(done)
    for command in (lambda: flash.read(0, 1), flash.write_enable, flash.write_disable,
                    flash.read_jedec_id, lambda: flash.sector_erase(0)):
        with pytest.raises(FlashBusyError):
            command()
    flash.wait_until(done - 1)
    assert flash.read_status() & STATUS_BUSY
    flash.wait_until(done)
    assert flash.read_status() & STATUS_BUSY == 0
    assert flash.read(0, 1) == b"\x00"


def test_polling_status_alone_moves_the_clock_past_busy():
    flash = SpiNorFlash(erased(4096), "w25q-quad")
    flash.write_enable()
    flash.sector_erase(0)
    start = flash.now_ns
    polls = 0
    while flash.read_status() & STATUS_BUSY:
        polls += 1
    # 45 ms typical 4 KiB erase; each poll is 16 clocks + 10 ns.
    assert flash.now_ns - start >= 45e6 - 1
    assert polls == pytest.approx(45e6 / (16 * W25Q_CLK_NS + 10), rel=0.01)


@pytest.mark.parametrize("preset, kind, typ_ns, max_ns", [
    ("w25q-quad", "page_program", 0.4e6, 3e6),
    ("w25q-quad", "sector_erase", 45e6, 400e6),
    ("w25q-quad", "block_erase", 150e6, 2000e6),
    ("octal-dtr", "page_program", 0.15e6, 1.5e6),
    ("octal-dtr", "sector_erase", 25e6, 120e6),
    ("octal-dtr", "block_erase", 220e6, 650e6),
])
def test_busy_time_is_the_typical_or_with_worst_case_the_maximum(preset, kind, typ_ns, max_ns):
    for worst_case, expected in ((False, typ_ns), (True, max_ns)):
        flash = SpiNorFlash(erased(64 * 1024), preset, worst_case=worst_case)
        flash.write_enable()
        if kind == "page_program":
            flash.page_program(0, b"\x00")
        else:
            getattr(flash, kind)(0)
        bus_end = flash.now_ns - 50.0  # tSHSL2 after a write command
        assert flash.busy_until_ns - bus_end == pytest.approx(expected)
        assert flash.stats()["commands"][kind]["busy_ns"] == expected


# --- storage -------------------------------------------------------------------------


def test_a_writable_image_is_programmed_in_place():
    data = erased(4096)
    program(SpiNorFlash(data), 10, b"\x00")
    assert data[10] == 0


def test_a_read_only_image_is_left_alone_and_copied_on_first_write():
    data = bytes(erased(4096))
    flash = SpiNorFlash(data)
    program(flash, 10, b"\x00")
    assert flash.read(10, 1) == b"\x00"
    assert data[10] == 0xFF


def test_a_device_larger_than_the_image_reads_erased_past_it():
    flash = SpiNorFlash(b"\x11\x22", size=4096)
    assert flash.size == 4096
    assert flash.read(0, 4) == b"\x11\x22\xff\xff"
    program(flash, 3000, b"\x00")
    assert flash.read(0, 2) == b"\x11\x22" and flash.read(3000, 1) == b"\x00"
    with pytest.raises(ValueError):
        SpiNorFlash(b"\x00" * 10, size=8)


# --- clock and counters --------------------------------------------------------------


def test_the_clock_only_moves_forward():
    flash = SpiNorFlash(erased(16))
    flash.advance(100)
    flash.wait_until(50)
    assert flash.now_ns == 100
    with pytest.raises(ValueError):
        flash.advance(-1)


def test_counters_add_up():
    flash = SpiNorFlash(erased(64 * 1024), "w25q-quad")
    flash.read_jedec_id()
    flash.read(0, 4096)
    flash.read(4096, 100, mode="fast")
    flash.read(0, 10, mode="quad")
    program(flash, 0, b"\x00" * 200)
    flash.advance(1234.5)
    stats = flash.stats()
    commands = stats["commands"]

    assert commands["read_quad"]["count"] == 2 and commands["read_quad"]["bytes"] == 4106
    assert commands["read_quad"]["ns"] == pytest.approx(
        read_time_ns("w25q-quad", 4096) + read_time_ns("w25q-quad", 10))
    assert commands["read_fast"]["bytes"] == 100
    assert commands["read_jedec_id"]["bytes"] == 3
    assert commands["write_enable"]["count"] == 1 and commands["write_enable"]["ns"] == pytest.approx(
        8 * W25Q_CLK_NS + 50)
    assert commands["page_program"] == {
        "count": 1, "bytes": 200, "busy_ns": 0.4e6,
        "ns": pytest.approx((8 + 24 + 8 * 200) * W25Q_CLK_NS + 50)}

    total = stats["total"]
    for key in ("count", "bytes", "ns", "busy_ns"):
        assert total[key] == pytest.approx(sum(c[key] for c in commands.values()))
    assert total["count"] == 6
    # Every nanosecond is a command or time let pass outside one (here 1234.5 + the wait for tPP).
    assert stats["elapsed_ns"] == pytest.approx(total["ns"] + stats["idle_ns"])
    assert stats["elapsed_ns"] == pytest.approx(flash.now_ns)
    assert stats["idle_ns"] > 0.4e6


def test_reset_stats_zeroes_counters_but_not_the_clock():
    flash = SpiNorFlash(erased(4096))
    flash.read(0, 16)
    now = flash.now_ns
    flash.reset_stats()
    assert flash.stats()["commands"] == {}
    assert flash.stats()["total"]["count"] == 0
    assert flash.now_ns == now
    flash.read(0, 16)
    assert flash.stats()["elapsed_ns"] == pytest.approx(read_time_ns("w25q-quad", 16, device_size=4096))
