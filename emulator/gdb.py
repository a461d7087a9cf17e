"""GDB on the emulated board (`mcugpt run --gdb PORT`): the firmware starts halted at reset and
runs under a debugger's control, breakpoints, stepping, registers and memory included.

The GDB remote-protocol stub is udbserver (PyPI; https://github.com/bet4it/udbserver), a Rust
library for Unicorn, driven here through its one C entry point `udbserver(uc, port, start)`:

- it adds an empty UC_HOOK_CODE hook over all code and an empty UC_HOOK_MEM_READ hook over
  all memory (breakpoints, steps and watchpoints are hooks it adds later), plus a code hook
  at `start`, and returns;
- when the CPU reaches `start` (here the reset handler, before its first instruction), that
  hook listens on 0.0.0.0:PORT, waits for GDB and serves it until GDB continues or steps;
  every later stop (breakpoint, step, watchpoint) serves GDB again from inside a hook. All of
  it runs on the emulating thread, inside `uc.emu_start`: the board is simply paused while
  GDB has it, and its clock (counted cycles, not host time) does not move.
- on detach it removes its hooks and the run goes on as without it. When the firmware
  finishes, `emu_start` returns and GDB sees the connection close when the process exits.

Two things of udbserver's need a workaround here:

- Unicorn 2.1.4 mis-executes Thumb code when any UC_HOOK_MEM_READ hook exists: after an IT
  block whose conditional load executed (`itt ne; ldrne r0, [r5]; cmpne r0, #0; beq`), the
  branch lands at the wrong address (unicorn-engine/unicorn#2309, open). The runtime's
  `read_now` has exactly that sequence, so with udbserver's empty read hook the firmware
  crashes (a prefetch abort at 0x00000000). `attach` therefore drops that one hook: while
  udbserver installs its hooks, its import of `uc_hook_add` (a GOT slot of the ELF shared
  library) points at a filter that passes every hook through except an all-memory
  UC_HOOK_MEM_READ one. GDB's read watchpoints (`rwatch`, `awatch`) add read hooks of
  their own and meet the same bug; write watchpoints (`watch`) are fine.
- Rust's `println!` in udbserver writes "Disconnect!" to stdout when GDB detaches: `session`
  points the process's stdout at stderr while the board runs, and Python's own stdout at
  the original, so the generated text and `--json` stay clean.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
import threading
import time

from target.errors import McugptError

__all__ = ["CpuTimeout", "attach", "check_port", "session"]

UC_HOOK_MEM_READ = 1 << 10   # unicorn.UC_HOOK_MEM_READ


def check_port(port: int) -> None:
    """A port udbserver can listen on: 1..65535 and free on every interface (it binds 0.0.0.0).

    udbserver cannot report a port it fails to bind: it panics inside a Unicorn hook, which
    aborts the process. So the port is tried here first."""
    if not 1 <= port <= 65535:
        raise McugptError(f"GDB port {port} is outside 1..65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Rust's TcpListener::bind does
        try:
            s.bind(("0.0.0.0", port))
            s.listen(1)
        except OSError as e:
            why = "in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
            raise McugptError(f"GDB port {port} cannot be listened on: {why}") from None


def attach(uc, port: int, entry: int) -> None:
    """Arm udbserver on `uc`: GDB gets the board when the CPU reaches `entry` (a Thumb address)."""
    if not sys.platform.startswith("linux"):
        raise McugptError(f"--gdb needs Linux (the udbserver workaround patches an ELF import); this is {sys.platform}")
    try:
        import udbserver
    except ImportError:
        raise McugptError("--gdb needs the Python package udbserver (pip install udbserver)") from None
    global _attached
    if _attached:  # its state (the connection, the engine) is process-wide, and never reset
        raise McugptError("udbserver serves one GDB session per process; this one has had it")
    lib = udbserver._udbserver_lib
    with _filtered_hook_add(lib, udbserver.__file__):
        udbserver.udbserver(uc, port, entry & ~1)
    _attached = True


_attached = False


# ----------------------------------------------------------------------------
# dropping udbserver's all-memory read hook (see the module's docstring)

_HOOK_ADD = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)


@contextlib.contextmanager
def _filtered_hook_add(lib, module_file: str):
    """While inside, udbserver's calls to uc_hook_add (through its GOT slots, found from its
    ELF relocations) go to a filter that drops its all-memory UC_HOOK_MEM_READ hook."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    from unicorn.unicorn_py3.unicorn import uclib

    path = os.path.join(os.path.dirname(module_file), os.path.basename(lib._name))   # the loaded file
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        entry_value = next(s["st_value"] for s in dynsym.iter_symbols() if s.name == "udbserver")
        slots = [r["r_offset"] for sec in elf.iter_sections() if isinstance(sec, RelocationSection)
                 for r in sec.iter_relocations()
                 if r["r_info_sym"] and dynsym.get_symbol(r["r_info_sym"]).name == "uc_hook_add"]
    if not slots:
        raise McugptError(f"{path}: no uc_hook_add import to filter (a udbserver other than 0.3.0?)")
    base = ctypes.cast(lib.udbserver, ctypes.c_void_p).value - entry_value
    real = ctypes.cast(uclib.uc_hook_add, ctypes.c_void_p).value

    def hook_add(uc, hh, htype, callback, user_data, begin, end):
        if htype == UC_HOOK_MEM_READ and begin > end:   # udbserver's empty all-memory read hook
            ctypes.c_void_p.from_address(hh).value = None
            return 0
        return _HOOK_ADD(real)(uc, hh, htype, callback, user_data, begin, end)

    filtered = _HOOK_ADD(hook_add)
    libc = ctypes.CDLL(None, use_errno=True)
    page = os.sysconf("SC_PAGE_SIZE")
    cells = [base + slot for slot in slots]
    pages = {cell & ~(page - 1): 0 for cell in cells}
    for start in pages:
        pages[start] = _protection(start)
    saved = []
    try:
        for start, protection in pages.items():
            # the import table is read-only after relocation (RELRO): open it for the swap
            if libc.mprotect(ctypes.c_void_p(start), ctypes.c_size_t(page), protection | 2) != 0:
                raise McugptError(f"cannot patch udbserver's uc_hook_add import: {os.strerror(ctypes.get_errno())}")
        for cell in cells:
            slot = ctypes.c_void_p.from_address(cell)
            saved.append((slot, slot.value))
            slot.value = ctypes.cast(filtered, ctypes.c_void_p).value
        yield
    finally:
        for slot, value in saved:
            slot.value = value
        for start, protection in pages.items():
            libc.mprotect(ctypes.c_void_p(start), ctypes.c_size_t(page), protection)


def _protection(address: int) -> int:
    """The PROT_* bits of the mapping holding `address`, from /proc/self/maps."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi:
                return (perms[0] == "r") | (perms[1] == "w") << 1 | (perms[2] == "x") << 2
    raise McugptError(f"no mapping at 0x{address:x} in /proc/self/maps (udbserver's import table?)")


# ----------------------------------------------------------------------------
# while the board runs under GDB


@contextlib.contextmanager
def session():
    """The process around a debugged `emu_start`: udbserver's stdout goes to stderr, and
    Ctrl-C kills the process (the emulating thread sits in udbserver's accept or read, where
    Python's KeyboardInterrupt never arrives)."""
    sys.stdout.flush()
    real_stdout, python_stdout = os.dup(1), sys.stdout
    os.dup2(2, 1)
    sys.stdout = os.fdopen(os.dup(real_stdout), "w", buffering=1,
                           encoding=getattr(python_stdout, "encoding", None) or "utf-8",
                           errors=getattr(python_stdout, "errors", None) or "strict")
    main = threading.current_thread() is threading.main_thread()
    old_sigint = signal.signal(signal.SIGINT, signal.SIG_DFL) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, old_sigint)
        sys.stdout.close()
        sys.stdout = python_stdout
        os.dup2(real_stdout, 1)
        os.close(real_stdout)


class CpuTimeout:
    """`--timeout` under GDB: stops `uc` once the emulating thread has used `seconds` of CPU
    time. Unicorn's own timeout counts host time, so it would end a run that waits at a
    breakpoint; a thread blocked on GDB's socket uses no CPU time, a firmware stuck in a loop
    does."""

    def __init__(self, uc, seconds: float):
        self.uc, self.seconds, self.fired = uc, seconds, False

    def __enter__(self) -> CpuTimeout:
        self._clock = time.pthread_getcpuclockid(threading.get_ident())
        self._start = time.clock_gettime(self._clock)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="mcugpt-gdb-timeout", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            if time.clock_gettime(self._clock) - self._start >= self.seconds:
                self.fired = True
                self.uc.emu_stop()
                return

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
