"""Whatever a user types, `mcugpt` ends in one line: `mcugpt: error: ...` (exit 1 for a refused
value, exit 2 for a command line argparse cannot parse, with a pointer to --help), or
`mcugpt: interrupted` (exit 130) on Ctrl-C. Never a traceback, never a summary after Ctrl-C."""

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import REPO, mcugpt

SEED_LIMIT = str(1 << 64)   # one past the largest 64-bit seed


def one_line_error(proc, message, code=1):
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("mcugpt: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.fixture
def not_a_build(tmp_path):
    """A folder whose build.json is not JSON."""
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "build.json").write_text("{not json")
    return tmp_path / "broken"


@pytest.mark.parametrize("args, message", [
    # integers out of range
    (["compile", "--model", "tiny", "--weights-seed", "-1", "--out", "{tmp}/o"], "--weights-seed -1: must be between"),
    (["reference", "--model", "tiny", "--prompt", "Hi", "--weights-seed", SEED_LIMIT], f"--weights-seed {SEED_LIMIT}"),
    (["reference", "--model", "tiny", "--prompt", "Hi", "--seed", "-1"], "--seed -1: must be between 0 and"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--seed", SEED_LIMIT], f"--seed {SEED_LIMIT}: must be between"),
    # floats that are not numbers the board can take
    (["run", "--build", "{build}", "--prompt", "Hi", "--timeout", "nan"], "--timeout nan: must be a positive number"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--timeout", "inf"], "--timeout inf: must be a positive number"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--timeout", "-1"], "--timeout -1.0: must be a positive number"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--temperature", "1e39"], "--temperature 1e+39: must be 0"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--temperature", "nan"], "--temperature nan: must be 0"),
    (["reference", "--model", "tiny", "--prompt", "Hi", "--temperature", "1e39"], "--temperature 1e+39: must be 0"),
    (["reference", "--model", "tiny", "--prompt", "Hi", "--temperature", "nan"], "--temperature nan: must be 0"),
    (["reference", "--model", "tiny", "--prompt", "Hi", "--temperature", "1e-50"], "--temperature 1e-50: must be 0"),
    # sizes
    (["run", "--build", "{build}", "--prompt", "Hi", "--ram", "0"], "--ram 0: must be at least 1 byte"),
    (["run", "--build", "{build}", "--prompt", "Hi", "--ram", "65MiB"],
     "--ram 68,157,440 bytes: more than the sim64 board's 67,108,864 bytes of SRAM"),
    # output folders
    (["compile", "--model", "tiny", "--out", "/proc/x"], "output folder /proc/x: cannot write there"),
    (["compile", "--model", "tiny", "--out", "/dev/null"], "output folder /dev/null: exists and is not a folder"),
    (["compile", "--model", "tiny", "--out", "README.md"], "output folder README.md: exists and is not a folder"),
    (["compile", "--model", "tiny", "--out", "{tmp}/" + "x" * 300], "cannot write there (File name too long)"),
    (["compile", "--model", "tiny", "--out", ""], "output folder '': empty"),
    (["fit", "--model", "tiny", "--out", "/proc/x"], "output folder /proc/x: cannot write there"),
    (["fit", "--model", "tiny", "--out", ""], "output folder '': empty"),
    (["bench", "--model", "tiny", "--out", "/dev/null"], "output folder /dev/null: exists and is not a folder"),
    # a name the file system takes but that is not UTF-8 (bytes 0xff 0xfe: argv's surrogates)
    (["compile", "--model", "tiny", "--out", "{tmp}/\udcff\udcfe"], "\\xff\\xfe: its path is not UTF-8"),
    (["fit", "--model", "tiny", "--out", "{tmp}/\udcff\udcfe"], "\\xff\\xfe: its path is not UTF-8"),
    # names of things: empty, a file for a folder, a path for a preset
    (["compile", "--model", "", "--out", "{tmp}/o"], "--model '': empty; give a preset's name"),
    (["compile", "--model", "\udcff", "--out", "{tmp}/o"], "--model \\xff: not UTF-8 text"),
    (["fit", "--model", "\udcff", "--no-run"], "--model \\xff: not UTF-8 text"),
    (["reference", "--model", "", "--prompt", "Hi"], "--model '': empty"),
    (["compile", "--weights", "", "--out", "{tmp}/o"], "--weights '': empty"),
    (["compile", "--weights", "README.md", "--out", "{tmp}/o"], "--weights README.md: a file, not a folder"),
    (["compile", "--model", "models/tiny.json", "--out", "{tmp}/o"], "takes a preset's name, not a file"),
    (["compile", "--model", "../models/tiny", "--out", "{tmp}/o"], "unknown model preset '../models/tiny'"),
    (["run", "--build", "", "--prompt", "Hi"], "--build '': empty"),
    (["run", "--build", "{broken}", "--prompt", "Hi"], "build.json: not a build.json mcugpt wrote (JSONDecodeError)"),
    (["inspect", ""], "flash image '': empty"),
    (["inspect", "{build}"], "a folder, not a flash image (the image is its flash.img)"),
])
def test_bad_values_end_in_one_line_exit_1(args, message, tiny_build, not_a_build, tmp_path):
    args = [a.replace("{build}", str(tiny_build.out_dir)).replace("{broken}", str(not_a_build))
            .replace("{tmp}", str(tmp_path)) for a in args]
    one_line_error(mcugpt(*args), message)


@pytest.mark.parametrize("args, line", [
    (["compile", "--model", "tiny", "--dtype", "x", "--out", "o"],
     "mcugpt: error: argument --dtype: invalid choice: 'x' (choose from fp32, int8); see mcugpt compile --help"),
    (["compile", "--model", "tiny", "--seed", "3", "--out", "o"],
     "mcugpt: error: unrecognized arguments: --seed 3; see mcugpt compile --help"),
    (["run", "--build", "b", "--tokens", "many", "--prompt", "Hi"],
     "mcugpt: error: argument --tokens: invalid int value: 'many'; see mcugpt run --help"),
    ([], "mcugpt: error: the following arguments are required: COMMAND; see mcugpt --help"),
])
def test_command_line_errors_are_one_line_exit_2_with_a_help_hint(args, line):
    proc = mcugpt(*args)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, line + "\n", "")


def test_prompt_file_gives_the_same_tokens_as_prompt(tmp_path):
    (tmp_path / "prompt.txt").write_text("Hello, my name is\n")   # an editor's final newline is dropped
    common = ("reference", "--model", "tiny", "--tokens", "4", "--json")
    from_text = json.loads(mcugpt(*common, "--prompt", "Hello, my name is", check=True).stdout)
    from_file = json.loads(mcugpt(*common, "--prompt-file", tmp_path / "prompt.txt", check=True).stdout)
    assert from_file["prompt_tokens"] == from_text["prompt_tokens"] and from_file["tokens"] == from_text["tokens"]


def test_prompt_file_dash_reads_standard_input(tiny_build):
    proc = subprocess.run([sys.executable, "-m", "mcugpt.cli", "run", "--build", str(tiny_build.out_dir),
                           "--prompt-file", "-", "--tokens", "2", "--json"],
                          input=b"Once upon a time", capture_output=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "Once upon a time"


@pytest.mark.parametrize("content, message", [
    (None, "--prompt-file {path}: cannot read it (No such file or directory)"),
    (b"caf\xe9", "--prompt-file {path}: not UTF-8 text (byte 0xe9 at offset 3)"),
])
def test_unreadable_prompt_file_is_one_line(content, message, tmp_path):
    path = tmp_path / "prompt.txt"
    if content is not None:
        path.write_bytes(content)
    one_line_error(mcugpt("reference", "--model", "tiny", "--prompt-file", path), message.format(path=path))


def test_prompt_and_prompt_file_exclude_each_other():
    proc = mcugpt("reference", "--model", "tiny", "--prompt", "Hi", "--prompt-file", "p.txt")
    assert proc.returncode == 2 and "argument --prompt-file: not allowed with argument --prompt" in proc.stderr


def test_run_ram_below_the_builds_budget_says_what_the_number_is(tiny_build):
    """The firmware is linked for the plan's whole RAM budget (its stack at the top): the
    refusal names that budget and the plan's peak, not an unexplained 'firmware needs'."""
    plan = tiny_build.plan
    proc = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--ram", "20MiB")
    one_line_error(proc, f"this build is linked for its RAM budget of {plan.ram_budget:,} bytes")
    assert f"its plan's peak is {plan.peak_ram_bytes:,}" in proc.stderr
    assert "recompile with `mcugpt compile --ram 20971520`" in proc.stderr


def test_a_context_the_psram_cannot_hold_blames_the_psram(tmp_path):
    """GPT-2 medium's float32 KV cache in the PSRAM is 199,680 bytes per position (24 layers x
    2 x 16 heads x (64 floats + a check word)): the 16 MiB PSRAM of the STM32H735G-DK holds 84
    positions; its 320 KiB of SRAM is not what is short."""
    proc = mcugpt("compile", "--model", "gpt2-medium", "--board", "stm32h735g-dk", "--ctx", "200",
                  "--out", tmp_path / "o")
    one_line_error(proc, "--ctx 200: the KV cache would need 39,936,000 bytes (fp32, 199,680 per position, check "
                         "words included), more than the stm32h735g-dk board's 16,777,216 bytes of PSRAM hold "
                         "(room for 84 positions)")
    assert "the largest context that fits is 84" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_compile_predicts_the_flash_bytes_run_measures(tiny_build):
    """Per decoded token the firmware reads the weights the plan streams, and also every
    stage's entry, the entries of the tensors it opens and the token table; compile's figure
    counts them all, so the board's measurement exceeds it only by the token's own bytes (read
    twice: the token table's CRC is checked at boot only)."""
    totals = tiny_build.plan.totals
    r = json.loads(mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hello, my name is", "--tokens", "6",
                          "--json", check=True).stdout)
    planned = totals.flash_bytes_per_token + totals.table_bytes_per_token
    assert 0 <= r["flash_bytes_per_token"] - planned <= 2 * len(r["text"].encode())
    assert r["flash_bytes_per_token_plan"] == {"weights": totals.flash_bytes_per_token,
                                               "tables": totals.table_bytes_per_token}


def interrupt(args, wait_for):
    """Start `mcugpt args` in its own process group, wait until `wait_for(proc)` says it is
    working, then Ctrl-C it as a terminal does (SIGINT to the whole group)."""
    proc = subprocess.Popen([sys.executable, "-m", "mcugpt.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, start_new_session=True)
    seen = wait_for(proc)
    assert seen, "it printed nothing"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, seen, out, err


def test_ctrl_c_during_emulation_ends_in_one_line_and_no_summary(tiny_build):
    code, text, out, err = interrupt(["run", "--build", tiny_build.out_dir, "--prompt", "Hello", "--tokens", "120"],
                                     lambda p: os.read(p.stdout.fileno(), 64))   # the streamed prompt and text
    assert text.startswith(b"Hello")
    assert (code, err) == (130, b"mcugpt: interrupted\n")
    assert b"peak RAM" not in out and b"device time" not in out


def test_ctrl_c_during_bench_ends_in_one_line(tmp_path):
    """The bench shows progress on a pipe (a line per step): once it has, Ctrl-C stops it."""
    code, progress, out, err = interrupt(["bench", "--model", "tiny", "--out", tmp_path / "bench"],
                                         lambda p: p.stderr.readline())
    assert progress.startswith(b"boards x dtypes 1/")
    assert code == 130 and err.endswith(b"mcugpt: interrupted\n") and b"Traceback" not in err
    assert out == b"" and not (tmp_path / "bench" / "bench.md").exists()
