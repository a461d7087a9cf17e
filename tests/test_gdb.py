"""`mcugpt run --gdb PORT`: the board starts halted at reset, GDB drives it, and the run ends
as it would without a debugger: same tokens, same simulated times (docs/debugging.md).

Each test runs `mcugpt run --gdb` and a batch-mode GDB against it, both as subprocesses with
timeouts, on the tiny build.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import REPO, mcugpt

GDB = shutil.which("gdb-multiarch") or shutil.which("arm-none-eabi-gdb")
PROMPT = "Hello, my name is"


@pytest.fixture(scope="module", autouse=True)
def need_gdb():
    if GDB is None:
        if os.environ.get("CI"):
            pytest.fail("neither gdb-multiarch nor arm-none-eabi-gdb is installed, and CI must test --gdb")
        pytest.skip("no gdb-multiarch or arm-none-eabi-gdb (Debian package gdb-multiarch; `make toolchain`)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))   # udbserver listens on all interfaces
        return s.getsockname()[1]


def debug(build, gdb_commands, *run_args, tokens=3, command=None):
    """`mcugpt run --gdb` (or `command`, given the port) with a batch GDB running
    `gdb_commands` against it; returns (returncode, stdout, stderr) of the run, then of GDB."""
    port = free_port()
    command = command(port) if command else [
        sys.executable, "-m", "mcugpt.cli", "run", "--build", str(build.out_dir), "--prompt", PROMPT,
        "--tokens", str(tokens), "--gdb", str(port), *run_args]
    run = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # GDB retries the connection until the board listens (it does once it reaches reset)
        args = [GDB, "-batch", "-nx", "-ex", "set tcp connect-timeout 60", str(build.out_dir / "firmware.elf"),
                "-ex", f"target remote :{port}"]
        for command in gdb_commands:
            args += ["-ex", command]
        gdb = subprocess.run(args, capture_output=True, text=True, timeout=180)
        out, err = run.communicate(timeout=180)
    finally:
        run.kill()
        run.wait()
    return (run.returncode, out, err), (gdb.returncode, gdb.stdout, gdb.stderr)


def values(gdb_stdout: str) -> list[str]:
    """What each `print` printed, in order ('$1 = 0' -> '0')."""
    return re.findall(r"^\$\d+ = (.*)$", gdb_stdout, re.MULTILINE)


def test_break_at_the_first_stage_then_continue_gives_the_runs_tokens_and_times(tiny_build):
    (rc, out, err), (_, gdb, gdb_err) = debug(tiny_build, [
        "print $pc == Reset_Handler",     # halted at reset, before the first instruction
        "break stage_embed",              # the first stage of every forward pass
        "continue",
        "print/x $pc",
        "print i",                        # the stage index argument
        "print header.stage_count",       # a global: the image header the firmware read
        "print c->pos0",                  # the chunk's first position
        "backtrace",
        "delete",
        "continue",
    ], "--json", "--check")
    assert rc == 0, err
    assert "Breakpoint 1, stage_embed (i=0" in gdb, gdb + gdb_err
    at_reset, pc, stage, stages, pos0 = values(gdb)
    assert at_reset == "1" and stage == "0" and pos0 == "0" and int(stages) == len(tiny_build.plan.stages)
    line = subprocess.run([GDB, "-batch", "-nx", str(tiny_build.out_dir / "firmware.elf"), "-ex",
                           f"info symbol {pc}"], capture_output=True, text=True, timeout=60).stdout
    assert line.startswith("forward")   # the stage functions are inlined into forward()
    assert re.search(r"#1 .*forward \(", gdb) and re.search(r"#2 .*mcugpt_run \(", gdb)

    debugged = json.loads(out)   # stdout is the JSON alone: udbserver's chatter went to stderr
    plain = json.loads(mcugpt("run", "--build", tiny_build.out_dir, "--prompt", PROMPT, "--tokens", "3",
                              "--json", "--check", check=True).stdout)   # --check: the firmware dumps the logits
    assert debugged["check"]["tokens_equal"] and debugged["check"]["logits_identical"]
    assert debugged["tokens"] == plain["tokens"]
    # the board's clock counts executed cycles and DMA time, never host time: GDB's pauses
    # change nothing the board measures
    for key in ("s_per_token", "io_s_per_token", "compute_s_per_token", "instructions_per_token",
                "prefill_s", "boot_s"):
        assert debugged["device"][key] == plain["device"][key], key
    assert debugged["flash_bytes_total"] == plain["flash_bytes_total"]
    assert debugged["peak_ram"] == plain["peak_ram"]


def test_step_finish_read_memory_then_detach(tiny_build):
    (rc, out, err), (_, gdb, gdb_err) = debug(tiny_build, [
        "break stage_head",
        "continue",
        "print i",
        "next",                           # to the head's first call, load_vector(...)
        "step",                           # into it
        "finish",                         # and back out to the stage
        "x/4wx &arena",
        "info registers sp",
        "delete",
        "detach",
    ])
    assert rc == 0, err
    assert "Breakpoint 1, " in gdb and "stage_head (i=" in gdb, gdb + gdb_err
    assert values(gdb)[0] == str(len(tiny_build.plan.stages) - 1)   # the head is the last stage
    into, back = gdb.index("\nload_vector ("), gdb.rindex("\nstage_head (i=")
    assert into < back
    assert re.search(r"^0x[0-9a-f]+ <arena>:(\s+0x[0-9a-f]{8}){4}$", gdb, re.MULTILINE)
    assert "detached" in gdb
    # after the debugger leaves, the run ends as usual: text, then the summary
    assert out.startswith(PROMPT) and "device time" in out and "peak RAM" in out


def test_the_timeout_skips_the_time_at_a_breakpoint_but_stops_a_long_run(tiny_build):
    # paused at the first stage for longer than the timeout: the board's CPU time is what counts
    (rc, _out, err), _ = debug(tiny_build, ["break stage_embed", "continue", "shell sleep 3", "delete", "detach"],
                              "--timeout", "2.5", tokens=1)
    assert rc == 0, err
    # and a run under GDB that needs more CPU time than the timeout is still stopped
    (rc, _out, err), _ = debug(tiny_build, ["continue"], "--timeout", "0.2", tokens=16)
    assert rc == 1
    assert err.strip().splitlines()[-1].startswith(
        "mcugpt: error: board fault: firmware did not finish within the 0.2 s timeout (the board's CPU time")


# Board.run's instruction budget has no command-line option: a script runs the board
# (under GDB when given a port) and prints where the budget ran out.
BUDGET_RUN = """
import sys
from compiler.tokenizer import encode
from emulator.board import Board, BoardFault
from mcugpt.run import Build
build = Build.open(sys.argv[1])
port = int(sys.argv[2]) if len(sys.argv) > 2 else None
with Board.for_profile(build.path / "firmware.elf", build.path / "flash.img", build.plan.profile) as board:
    try:
        board.run(encode(build.tokenizer(), "Hello"), 4, gdb_port=port, max_instructions=2_000_000)
    except BoardFault as e:
        print(e.kind, hex(e.pc), e.function, e.result.instructions)
"""


def test_the_instruction_budget_runs_out_at_the_same_instruction_under_the_debugger(tiny_build):
    script = [sys.executable, "-c", BUDGET_RUN, str(tiny_build.out_dir)]
    plain = subprocess.run(script, cwd=REPO, capture_output=True, text=True, timeout=180)
    # a pause at a breakpoint, then the rest
    (rc, debugged, err), _ = debug(tiny_build, ["break stage_embed", "continue", "continue"],
                                   command=lambda port: [*script, str(port)])
    assert rc == 0, err
    assert debugged.split()[0] == "instruction_limit" and debugged == plain.stdout


def test_a_fault_under_the_debugger_is_the_usual_one_line_report(tiny_build):
    (rc, _out, err), _ = debug(tiny_build, ["break stage_embed", "continue", "set $pc = 0", "continue"])
    assert rc == 1
    assert err.strip().splitlines()[-1] == (
        "mcugpt: error: board fault: CPU exception: prefetch abort: cannot execute at 0x00000000 (a null "
        "pointer?); PC 0x00000000 in unknown code, in stage 0 (embed)")


@pytest.mark.parametrize("value, message", [
    ("abc", "--gdb 'abc' is not a port number (1..65535)"),
    ("0", "GDB port 0 is outside 1..65535"),
    ("70000", "GDB port 70000 is outside 1..65535"),
])
def test_bad_gdb_port_is_one_line(value, message, tiny_build):
    res = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "1", "--gdb", value)
    assert res.returncode == 1 and res.stderr == f"mcugpt: error: {message}\n" and res.stdout == ""


def test_a_port_in_use_is_one_line(tiny_build):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = mcugpt("run", "--build", tiny_build.out_dir, "--prompt", "Hi", "--tokens", "1", "--gdb", port)
    assert res.returncode == 1
    assert res.stderr == f"mcugpt: error: GDB port {port} cannot be listened on: in use\n"
