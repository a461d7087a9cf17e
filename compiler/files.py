"""Reading a checkpoint folder's files: regular files only, and JSON whose faults are one line.

A checkpoint folder comes from a user, so anything can sit where a file is expected. Opening
a FIFO blocks until a writer appears (forever, for a compile) and a device reads without
end, so every file is stat'ed first and only a regular file is opened.
"""

import json
import os
import stat
from pathlib import Path

from target.errors import McugptError


def regular_file(path: Path) -> bool:
    """Whether `path` is a regular file (through symlinks); False when nothing is there.
    Anything else in its place (a folder, a FIFO, a device, a symlink loop) is an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as e:   # ELOOP (a symlink loop), EACCES, ENOTDIR, ENAMETOOLONG
        raise McugptError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(mode):
        raise McugptError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise McugptError(f"{path}: not a regular file (a FIFO, socket or device); give a file")
    return True


def read_bytes(path: Path) -> bytes:
    if not regular_file(path):
        raise McugptError(f"{path}: no such file")
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise McugptError(f"{path}: cannot read it ({e.strerror})") from None


def decode_utf8(data: bytes, where) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise McugptError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs):
    # json keeps the last of two equal keys without a word; a tensor or a setting given
    # twice is ambiguous, so it is refused
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def parse_json(data: bytes, where, kind: type | None = dict):
    """The JSON document in `data`; `kind` is the type its top level must have."""
    text = decode_utf8(data, where)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise McugptError(f"{where}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise McugptError(f"{where}: JSON nested too deeply to read") from None
    except _DuplicateKey as e:
        raise McugptError(f"{where}: key {e.args[0]!r} appears twice") from None
    if kind is not None and not isinstance(value, kind):
        raise McugptError(f"{where}: the JSON must be {json_kind(kind())}, not {json_kind(value)}")
    return value


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words, for messages."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return {dict: "an object {...}", list: "a list [...]", str: "a string", int: "a number",
            float: "a number"}[type(value)]


def read_json(path: Path, kind: type | None = dict):
    return parse_json(read_bytes(path), path, kind)
