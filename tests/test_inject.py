"""Fault injection (`mcugpt run --inject`, emulator/inject.py): every fault a board can suffer is
detected and reported, never turned into wrong tokens and never a hang.

- transient (flash-flip): a check fails, the read is read again, and the tokens and logits
  are those of the clean run; the report says which read was hit and that it was retried;
- persistent (flash-stuck, flash-dead) and hung transfers (dma-hang): one line naming the
  stage and the tensor, exit 1, in a bounded (simulated and host) time;
- a PSRAM flip (psram-flip) fails a KV row's or a tier tail's check word: read again, exact;
  reads that keep failing end in one line naming the row or the tile;
- a fault the build cannot detect (a flip in a tile of a --verify boot build) is refused
  before the run, in one line saying why and what to do.

The tiny model on sim64 (every weight streamed, the CRC inline) and on the STM32H7S78-DK
(--verify stream, the KV cache in PSRAM under a 160 KiB budget; and a --verify boot build)."""

import json
import random
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from compiler.pipeline import compile_model
from emulator.board import Board, FirmwareError
from emulator.inject import Injector, parse
from target.boards import dma_timeout_ns, get_board
from target.flash_layout import STAGE_ENTRY, TENSOR_ENTRY, read_image

PROMPT = "Hello"
N_NEW = 3
KiB = 1024
H7 = "stm32h7s78-dk"


@pytest.fixture(scope="module")
def builds(tiny_build, tmp_path_factory):
    h7 = compile_model("tiny", tmp_path_factory.mktemp("h7_stream"), board=H7, ram=160 * KiB, verify="stream",
                       quiet=True)
    return {"sim64": (tiny_build.out_dir, "sim64"), H7: (h7.out_dir, H7)}


@pytest.fixture(scope="module")
def boot_checked(tmp_path_factory):
    return compile_model("tiny", tmp_path_factory.mktemp("h7_boot"), board=H7, dtype="int8", group="none",
                         quiet=True).out_dir


def run(build, tok, specs=(), seed=0, record_dma=False):
    """(result, error message or None, injector) of one run with these --inject values."""
    out, board = build
    injector = Injector([parse(s) for s in specs], seed)
    with Board.for_profile(out / "firmware.elf", out / "flash.img", get_board(board), record_dma=record_dma) as b:
        b.injector = injector
        try:
            result, error = b.run(tok.encode(PROMPT), n_new=N_NEW, dump_logits=True, timeout_s=120), None
        except FirmwareError as e:
            result, error = e.result, str(e)
        if record_dma:
            injector.dma = sorted([(e[4], "flash", e) for e in b.flashctl.log if e[0] == "start"]
                                  + [(e[4], "psram", e) for e in b.psramctl.log if e[0] == "start"])
    return result, error, injector


def same_answer(a, b):
    return a.tokens == b.tokens and all(np.array_equal(x, y) for x, y in zip(a.logits, b.logits))


def tensor(build, name):
    img = read_image(build[0] / "flash.img", verify_weights=False)
    return next((i, t) for i, t in enumerate(img.tensors) if t["name"] == name)


def cli(build_dir, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "mcugpt.cli", "run", "--build", str(build_dir), "--prompt", PROMPT,
                           "--tokens", str(N_NEW), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False)


def one_error_line(proc):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("mcugpt: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def clean(builds, tok):
    """Each build's clean run, and how many flash reads and DMA transfers it makes."""
    out = {}
    for name, build in builds.items():
        result, error, injector = run(build, tok, ["flash-flip@4000000000"], record_dma=True)
        assert error is None
        out[name] = (result, injector)
    return out


BOARDS = ["sim64", H7]


# ----------------------------------------------------------------------------
# transient: a flipped bit in one read is read again, and the answer is exact


@pytest.mark.parametrize("board", BOARDS)
def test_a_bit_flipped_in_any_flash_read_is_retried_and_the_answer_is_exact(builds, clean, tok, board):
    """Reads spread over the whole run, boot to the last token: each flip is caught by a check
    and read again (or lands in a byte the firmware never uses), and the tokens and logits
    are the clean run's."""
    base, counted = clean[board]
    total = counted.flash_reads
    retried = 0
    for n in range(7, total, total // 9):
        result, error, injector = run(builds[board], tok, [f"flash-flip@{n}"])
        assert error is None, f"flash-flip@{n}: {error}"
        assert same_answer(result, base), f"flash-flip@{n}"
        [hit] = injector.outcomes(result)
        assert hit["handled"] in ("retried", "unchecked"), hit
        retried += hit["handled"] == "retried"
    assert retried >= 6


@pytest.mark.parametrize("board", BOARDS)
def test_a_flip_in_a_streamed_tile_runs_the_forward_pass_again(builds, clean, tok, board):
    build = builds[board]
    base, counted = clean[board]
    index, w = tensor(build, "h.1.mlp.c_proj.weight")
    # the read of the tile's first bytes at position 1 (the second forward pass)
    tile_reads = [e for _, bus, e in counted.dma if bus == "flash" and e[2] == w["offset"]]
    n = next(k for k, (_, bus, e) in enumerate(counted.dma, 1) if e is tile_reads[1])
    flash_n = sum(1 for _, bus, _e in counted.dma[:n] if bus == "flash")
    result, error, injector = run(build, tok, [f"flash-flip@{flash_n}"])
    assert error is None and same_answer(result, base)
    [hit] = injector.outcomes(result)
    assert hit["handled"] == "retried" and hit["tensor"] == index and hit["position"] == 1
    assert hit["detail"].endswith(f"tensor {index} 'h.1.mlp.c_proj.weight' in stage 12 (h1.mlp)")


@pytest.mark.parametrize("name, field, byte", [
    ("h.0.ln_2.bias", "rows", 0),        # fails the role's shape check
    ("h.0.ln_2.bias", "offset", 2),      # +64 KiB or more: another sector of the weights, so the vector's CRC fails
    ("wpe.weight", "offset", 2),         # the same for a row: its row CRC fails
])
def test_a_flip_in_a_tensor_entry_is_read_again_with_the_entry(builds, clean, tok, name, field, byte):
    """A flipped bit in a TensorEntry must not end the run, nor make the read it directs wrong
    twice: the check that fails reads the entry again too."""
    base, counted = clean["sim64"]
    build = builds["sim64"]
    h = read_image(build[0] / "flash.img", verify_weights=False).header
    index, _ = tensor(build, name)
    entry = h["tables_offset"] + h["stage_count"] * STAGE_ENTRY.size + index * TENSOR_ENTRY.size
    target = entry + TENSOR_ENTRY.offset_of(field) + byte
    flash_reads = [e for _, bus, e in counted.dma if bus == "flash"]
    n = next(k for k, e in enumerate(flash_reads, 1) if e[2] == entry and k > 40)   # after boot

    def flips(seed):   # the Injector's first draws: a byte of the entry's read, then a bit (low ones: in range)
        rng = random.Random(seed)
        return entry + rng.randrange(TENSOR_ENTRY.size) == target and rng.randrange(8) < 3
    seed = next(seed for seed in range(5000) if flips(seed))
    result, error, injector = run(build, tok, [f"flash-flip@{n}"], seed=seed)
    assert error is None and same_answer(result, base)
    [hit] = injector.outcomes(result)
    assert hit["what"].endswith(f"field {field}") and hit["handled"] == "retried"


@pytest.mark.parametrize("board", BOARDS)
def test_a_flip_in_a_printed_token_s_bytes_never_changes_the_text(builds, clean, tok, board):
    """The token table is CRC-checked at boot only: each printed piece is read twice and
    compared, and the difference a transient error makes is settled by a third read."""
    base, counted = clean[board]
    h = read_image(builds[board][0] / "flash.img", verify_weights=False).header
    text_start = h["tokens_offset"] + (h["vocab_size"] + 1) * 4
    flash_reads = [e for _, bus, e in counted.dma if bus == "flash"]
    n = max(k for k, e in enumerate(flash_reads, 1) if text_start <= e[2] < h["tokens_offset"] + h["tokens_size"])
    result, error, injector = run(builds[board], tok, [f"flash-flip@{n}"])
    assert error is None and same_answer(result, base) and result.text == base.text
    [hit] = injector.outcomes(result)
    assert hit["what"] == "the token table's text" and hit["handled"] == "retried"


def test_flips_at_a_rate_are_seeded_and_each_is_handled(builds, clean, tok):
    base, _ = clean["sim64"]
    runs = [run(builds["sim64"], tok, ["flash-flip:0.03"], seed=5) for _ in range(2)]
    (r1, e1, i1), (r2, e2, i2) = runs
    assert e1 is None and e2 is None and same_answer(r1, base)
    hits = i1.outcomes(r1)
    assert len(hits) >= 3 and all(h["handled"] in ("retried", "unchecked") for h in hits)
    assert hits == i2.outcomes(r2)      # the same seed, the same faults
    r3, _, i3 = run(builds["sim64"], tok, ["flash-flip:0.03"], seed=6)
    assert [h["number"] for h in i3.outcomes(r3)] != [h["number"] for h in hits]


# ----------------------------------------------------------------------------
# persistent: a stuck bit, a dead flash


@pytest.mark.parametrize("board", BOARDS)
def test_a_stuck_bit_in_a_streamed_matrix_stops_the_run_naming_stage_and_tensor(builds, tok, board):
    build = builds[board]
    index, w = tensor(build, "h.1.mlp.c_proj.weight")
    result, error, injector = run(build, tok, [f"flash-stuck@{w['offset'] + 100}"])
    assert f"BAD_TENSOR_CRC: weight blob CRC32 mismatch in tensor {index} 'h.1.mlp.c_proj.weight' in stage 12 (h1.mlp)" in error
    hits = injector.outcomes(result, error)
    assert [h["handled"] for h in hits] == ["retried", "fault"]   # read twice, wrong twice


def test_a_stuck_bit_the_seed_picks_is_caught_at_boot_in_a_boot_checked_build(boot_checked):
    proc = cli(boot_checked, "--inject", "flash-stuck", "--inject-seed", "1")
    line = one_error_line(proc)
    assert "BAD_TENSOR_CRC" in line and "at boot, read twice" in line and "injected flash-stuck: flash read" in line


@pytest.mark.parametrize("board", BOARDS)
def test_a_dead_flash_is_reported_as_such(builds, clean, tok, board):
    build = builds[board]
    base, counted = clean[board]
    n = counted.flash_reads // 2
    result, error, injector = run(build, tok, [f"flash-dead@{n}"])
    assert error is not None and base.tokens[:len(result.tokens)] == result.tokens   # never a wrong token
    [hit] = injector.outcomes(result, error)
    assert hit["handled"] == "fault" and hit["number"] == n
    proc = cli(build[0], "--inject", f"flash-dead@{n}")
    line = one_error_line(proc)
    assert f"injected flash-dead@{n}: the flash stopped answering at read {n:,}" in line
    assert "every read since returns 0xFF" in line and "stage" in line


def test_a_dead_flash_is_caught_in_a_boot_checked_build_too(boot_checked, tok):
    result, error, injector = run((boot_checked, H7), tok, ["flash-dead@300"])
    assert error is not None and injector.outcomes(result, error)[0]["handled"] == "fault"


# ----------------------------------------------------------------------------
# a DMA transfer that never completes


@pytest.mark.parametrize("board, bus", [("sim64", "flash"), (H7, "flash"), (H7, "psram")])
def test_a_hung_dma_transfer_ends_the_run_after_its_bound_not_in_a_hang(builds, clean, tok, board, bus):
    """The firmware's wait is bounded on the core's cycle counter: the run ends with DMA_TIMEOUT
    naming the transfer, once the bound has passed on the board's clock and not much later."""
    build = builds[board]
    base, counted = clean[board]
    on_bus = [(k, e) for k, (_, b, e) in enumerate(counted.dma, 1) if b == bus]
    n, entry = on_bus[len(on_bus) // 2]     # one in the middle of the run
    result, error, injector = run(build, tok, [f"dma-hang@{n}"])
    length = entry[3]
    assert error.startswith(f"firmware exit DMA_TIMEOUT: the {'flash' if bus == 'flash' else 'PSRAM'} DMA of "
                            f"{length:,} bytes at ")
    assert "in stage" in error and "never completed" in error
    if bus == "flash":
        assert "tensor" in error
    else:   # the command line knows the plan: it names the KV cache row
        line = one_error_line(cli(build[0], "--inject", f"dma-hang@{n}", timeout=60))
        assert "(the KV cache: layer " in line and ", head " in line and ", position " in line
    [hit] = injector.outcomes(result, error)
    waited = result.device_ns - hit["device_s"] * 1e9
    bound = dma_timeout_ns(get_board(board), length)
    assert bound <= waited <= 2.5 * bound + 5e3
    assert result.tokens == base.tokens[:len(result.tokens)]


def test_the_command_line_reports_a_hung_transfer_in_one_line(builds, clean):
    _, counted = clean["sim64"]
    n = len(counted.dma) // 2
    line = one_error_line(cli(builds["sim64"][0], "--inject", f"dma-hang@{n}", timeout=60))
    assert "firmware exit DMA_TIMEOUT: the flash DMA of" in line and "never completed" in line
    assert f"injected dma-hang@{n}: flash DMA transfer {n:,}" in line


# ----------------------------------------------------------------------------
# PSRAM reads: each KV row and each tier tail ends in a check word, verified on every read


def test_a_psram_flip_in_a_kv_row_is_read_again_and_the_answer_is_exact(builds, clean, tok):
    base, _ = clean[H7]
    result, error, injector = run(builds[H7], tok, ["psram-flip:0.05"], seed=2)
    hits = injector.outcomes(result)
    assert error is None and same_answer(result, base)
    assert len(hits) > 1 and {h["handled"] for h in hits} == {"retried"}
    assert all(h["bus"] == "psram" and h["stage"].endswith(".attn_core") for h in hits)   # the KV rows
    assert len(result.crc_retries) == len(hits)
    assert all(r.startswith("KV cache rows read from PSRAM in stage ") for r in result.crc_retries)


def test_a_psram_flip_in_a_tier_tail_is_read_again_and_the_answer_is_exact(boot_checked, tok):
    build = (boot_checked, H7)
    base, _, _ = run(build, tok)
    result, error, injector = run(build, tok, ["psram-flip:0.02"], seed=1)
    hits = injector.outcomes(result)
    assert error is None and same_answer(result, base)
    assert hits and {h["handled"] for h in hits} == {"retried"}
    assert all(h["bus"] == "psram" and not h["stage"].endswith(".attn_core") for h in hits)   # not the KV cache


def test_psram_reads_that_keep_failing_end_in_one_line_naming_the_row(builds, boot_checked):
    line = one_error_line(cli(builds[H7][0], "--inject", "psram-flip:1"))
    assert line.startswith("mcugpt: error: firmware exit BAD_KV_ROW: the KV cache's layer 0 keys, head 0, "
                           "position 0 in stage 3 (h0.attn_core) failed its PSRAM check word twice")
    assert "injected psram-flip:1: psram read 2: bit" in line
    line = one_error_line(cli(boot_checked, "--inject", "psram-flip:1"))
    assert "firmware exit BAD_TIER_TAIL: the tail of tile 0 of tensor" in line and "failed its check word twice" in line


def test_psram_flips_on_a_build_without_psram_are_refused_saying_why(builds):
    line = one_error_line(cli(builds["sim64"][0], "--inject", "psram-flip:0.1"))
    assert "reads nothing from PSRAM" in line


def test_a_flip_in_a_boot_checked_build_is_refused_saying_what_to_do(boot_checked):
    line = one_error_line(cli(boot_checked, "--inject", "flash-flip@10"))
    assert "--verify boot" in line and "compile with --verify stream" in line


# ----------------------------------------------------------------------------
# the report, and bad values


def test_the_json_report_lists_each_fault_where_it_hit_and_how_it_was_handled(builds, clean):
    base, counted = clean["sim64"]
    n = counted.flash_reads - 20
    proc = cli(builds["sim64"][0], "--inject", f"flash-flip@{n}", "--inject", "dma-hang@999999", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["tokens"] == base.tokens and r["inject_seed"] == 0
    flip, hang = r["injected"]
    assert flip["fault"] == f"flash-flip@{n}" and flip["number"] == n and flip["position"] == 2
    assert flip["handled"] in ("retried", "unchecked") and flip["stage"]
    assert hang["fault"] == "dma-hang@999999" and hang["handled"] == "not hit"
    assert hang["detail"].endswith("DMA transfers, fewer than 999,999")


@pytest.mark.parametrize("value, says", [
    ("flash-melt@3", "unknown fault"),
    ("flash-flip", "flash-flip takes @N or :RATE"),
    ("flash-flip:0", "must be a probability in (0, 1]"),
    ("flash-flip:x", "must be a probability in (0, 1]"),
    ("dma-hang@0", "is not a count N >= 1"),
    ("dma-hang:0.5", "dma-hang takes @N"),
    ("flash-dead", "flash-dead takes @N"),
    ("flash-stuck@zz", "is not a flash address"),
    ("flash-stuck@0x7fffffff", "past the"),
])
def test_a_bad_inject_value_is_one_clear_line(builds, value, says):
    line = one_error_line(cli(builds["sim64"][0], "--inject", value))
    assert says in line and value.split("@")[0].split(":")[0] in line


def test_a_bad_inject_seed_is_one_line(builds):
    assert "--inject-seed -1: must be 0 .. 2^64-1" in one_error_line(
        cli(builds["sim64"][0], "--inject", "flash-flip@3", "--inject-seed", "-1"))
