"""The C compilers: one place that finds them and runs them.

    compiler("zig")                -> [python, -m, ziglang, cc]    the default firmware compiler (pip)
    compiler("arm-none-eabi-gcc")  -> [arm-none-eabi-gcc]          GNU, from Debian's gcc-arm-none-eabi
    compiler("host")               -> [$CC or cc or gcc or clang]  native code (tests, the counter)
    host_compilers()               -> every native compiler here, best first (zig's last)
    run(cmd, what)                 -> runs it; a failure is one McugptError line

Used by the firmware build (compiler/firmware.py), the emulator's native instruction
counter (emulator/instruction_count.py) and the tests' host builds of runtime_c/.
"""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

from target.errors import McugptError

NAMES = ("zig", "arm-none-eabi-gcc", "host")


def _zig() -> list[str] | None:
    return [sys.executable, "-m", "ziglang", "cc"] if importlib.util.find_spec("ziglang") else None


def host_compilers() -> list[list[str]]:
    """Native C compilers on this machine: $CC, cc, gcc, clang, then zig cc."""
    found = []
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name) and [name] not in found:
            found.append([name])
    if _zig():
        found.append(_zig())
    return found


def available(name: str) -> bool:
    try:
        compiler(name)
        return True
    except McugptError:
        return False


def compiler(name: str) -> list[str]:
    """The command that starts C compiler `name` (NAMES), or a one-line error saying how to get it."""
    if name == "zig":
        if _zig() is None:
            raise McugptError("the zig C compiler is not installed (pip package ziglang)")
        return _zig()
    if name == "arm-none-eabi-gcc":
        if shutil.which(name) is None:
            raise McugptError("arm-none-eabi-gcc is not on PATH (Debian/Ubuntu: apt install gcc-arm-none-eabi)")
        return [name]
    if name == "host":
        native = [c for c in host_compilers() if c != _zig()]
        if not native:
            host = os.environ.get("CC") or "cc"
            raise McugptError(f"no host C compiler: {host} is not on PATH (set CC)")
        return native[0]
    raise McugptError(f"unknown C compiler '{name}' (known: {', '.join(NAMES)})")


def first_error(output: str, prefer: tuple[str, ...] = ()) -> str:
    """The line that says what went wrong: a line holding one of `prefer`, else the first
    error line, else the first line (GNU ld says "region overflowed" without "error")."""
    lines = [re.sub(r"^\S*/(ld(?:\.bfd|\.lld)?): ", r"\1: ", ln.strip()) for ln in output.splitlines()
             if ln.strip() and not ln.startswith("collect2")]
    for pick in (lambda ln: any(m in ln for m in prefer),
                 lambda ln: re.search(r"\berror\b", ln, re.IGNORECASE)):
        found = next((ln for ln in lines if pick(ln)), None)
        if found:
            return found
    return lines[0] if lines else "no output"


def run(cmd: list[str], what: str, prefer: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run a compile command; a failure is McugptError("<what> failed: <its first error>")."""
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise McugptError(f"{what} failed: {first_error(res.stderr + res.stdout, prefer)}")
    return res
