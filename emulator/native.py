"""The board's native callbacks: small C functions Unicorn calls directly, compiled once per
machine with the host C compiler ($CC, cc, gcc, clang, or the pip package ziglang's `zig
cc`) and cached.

Each user (emulator/instruction_count.py's block counter, emulator/mmio.py's register
stores) has a Python fallback for a machine where no compiler builds its library: same
results, slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from target import toolchain


def _cache_dir() -> Path:
    base = os.environ.get("MCUGPT_CACHE") or os.environ.get("XDG_CACHE_HOME")
    path = Path(base) / "mcugpt" if base else Path.home() / ".cache" / "mcugpt"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    path = Path(tempfile.gettempdir()) / f"mcugpt-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    path.mkdir(parents=True, exist_ok=True)
    return path


_libraries: dict[str, ctypes.CDLL | None] = {}
errors: dict[str, str] = {}   # per name: why its library could not be built or loaded


def library(name: str, source: str):
    """`source` compiled into a shared library (a ctypes.CDLL), once per process and cached on
    disk across processes; None when no compiler could build it (`errors[name]` says why)."""
    if name in _libraries:
        return _libraries[name]
    tag = hashlib.sha256((source + platform.machine() + sys.platform).encode()).hexdigest()[:16]
    suffix = ".dll" if sys.platform == "win32" else ".dylib" if sys.platform == "darwin" else ".so"
    lib = _cache_dir() / f"{name}-{tag}{suffix}"
    failures = []
    if not lib.is_file():
        src = lib.with_name(f"{lib.stem}.{os.getpid()}.c")   # per process: concurrent builds never mix
        src.write_text(source)
        for cmd in toolchain.host_compilers():
            tmp = lib.with_name(f"{lib.stem}.{os.getpid()}.tmp{suffix}")
            res = subprocess.run([*cmd, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)],
                                 capture_output=True, text=True)
            if res.returncode == 0 and tmp.is_file():
                os.replace(tmp, lib)   # atomic: concurrent runs never load a half-written file
                break
            tmp.unlink(missing_ok=True)
            failures.append(f"{' '.join(cmd)}: {(res.stderr or res.stdout).strip().splitlines()[:1]}")
        src.unlink(missing_ok=True)
    try:
        _libraries[name] = ctypes.CDLL(str(lib))
    except OSError as e:
        _libraries[name] = None
        errors[name] = "; ".join(failures) or str(e)
    return _libraries[name]
