"""`mcugpt fuzz`: a seeded, bounded campaign against the commands a user runs.

mcugpt's answer is worth nothing if a corrupt image, an odd checkpoint or a strange argument
can change it silently or crash it. Each case here is a real command line, `mcugpt ...`, run
in its own process with a timeout (forked from a server that has mcugpt loaded, so a case
costs its own work rather than Python's start-up; `--fresh` starts each as
`python -m mcugpt.cli ...` instead, with the same outcomes), and its outcome is one of:

    clean_error      exit 1 (2 for a usage error, 130 interrupted) and stderr exactly one line
                     `mcugpt: error: ...` (or `mcugpt: interrupted`)
    traceback        a Python traceback anywhere, an error over several lines, or another exit code
    hang             still running at the timeout
    signal           killed by a signal
    exit0_same       exit 0, and the answer is the clean build's (or there is no answer to compare)
    exit0_different  exit 0 with another answer: silently wrong

Three campaigns, each case seeded by (seed, campaign, index) so any one can be made again
alone (`--only images:17`):

    images       the flash.img of one tiny build, mutated (bit flips, byte runs, truncation,
                 extension anywhere; or one field edited with its CRC32s sealed again), then
                 `mcugpt inspect IMG` and `mcugpt run` on a copy of the build holding it
    checkpoints  a tiny Hugging Face folder with a bad config value, file, tensor or shard
                 index, then `mcugpt compile --weights`, `mcugpt reference --weights` and,
                 when it compiles, `mcugpt run --check` (the board must agree with the reference)
    cli          every subcommand's options, read from the argparse parser, with edge values

docs/reliability.md says what each campaign mutates and how to reproduce a case.
"""

import argparse
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from target.errors import McugptError
from target.flash_layout import HEADER, HEADER_CRC_SPAN, STAGE_ENTRY, TENSOR_ENTRY

REPO = Path(__file__).resolve().parent.parent
CAMPAIGNS = ("images", "checkpoints", "cli")
PROMPT = "Hello, my name is"
TOKENS = 2

# classes, worst first: a case with several commands takes its worst command's class
CLASSES = ("traceback", "signal", "hang", "exit0_different", "clean_error", "exit0_same")
FAILING = ("traceback", "signal", "hang", "exit0_different")
LABELS = {"clean_error": "clean error", "traceback": "traceback", "hang": "hang", "signal": "signal",
          "exit0_same": "exit 0 same", "exit0_different": "exit 0 different"}
CLEAN_CODES = (1, 2, 130)     # an error, a usage error, Ctrl-C
PROGRESS_LINE = re.compile(r"[A-Za-z][\w .-]* \d+/\d+: ")   # "boards x dtypes 2/6: sim64 int8"


# ----------------------------------------------------------------------------
# one command's outcome


@dataclass
class Outcome:
    cls: str
    returncode: int | None
    first_line: str    # the first stderr line; for a traceback, its last line (the exception)
    why: str = ""      # for a failing class: what made it so


def classify(returncode: int | None, stdout: bytes, stderr: bytes, timed_out: bool = False, same=None) -> Outcome:
    """The class of one command's outcome. `same(stdout) -> bool`: for exit 0, whether its
    answer is the clean run's; None when there is nothing to compare with."""
    err = stderr.decode(errors="replace")
    # lines as a terminal shows them: a message may quote a user's \u2028 or \x1c
    lines = err.rstrip("\n").split("\n") if err.strip() else []
    # a long command's progress, a line per step when stderr is not a terminal
    # (compiler/pipeline.py progress_lines), may come before its error
    lines = [line for line in lines if not PROGRESS_LINE.match(line)] or lines
    first = lines[0] if lines else ""
    if timed_out:
        return Outcome("hang", None, first, "still running at the timeout")
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Outcome("signal", returncode, first, f"killed by {name}")
    if b"Traceback (most recent call last)" in stdout + stderr:
        last = next((line for line in reversed(lines) if line.strip() and not line.startswith(" ")), first)
        return Outcome("traceback", returncode, last, "Traceback")
    if returncode == 0:
        if same is None or same(stdout):
            return Outcome("exit0_same", 0, first)
        return Outcome("exit0_different", 0, first, "exit 0 with an answer other than the clean run's")
    if returncode in CLEAN_CODES and len(lines) == 1 and (
            first.startswith("mcugpt: error: ") or first == "mcugpt: interrupted"):
        return Outcome("clean_error", returncode, first)
    if returncode not in CLEAN_CODES:
        return Outcome("traceback", returncode, first, f"exit code {returncode}")
    if len(lines) != 1:
        return Outcome("traceback", returncode, first, f"exit {returncode} with {len(lines)} lines of stderr")
    return Outcome("traceback", returncode, first, f"exit {returncode}, stderr not 'mcugpt: error: ...'")


def worst(outcomes: list[Outcome]) -> Outcome:
    return min(outcomes, key=lambda o: CLASSES.index(o.cls))


def execute(args: list, cwd: Path, timeout: float) -> tuple[int | None, bytes, bytes, bool]:
    """`mcugpt ARGS` in `cwd`: forked from the campaign's fork server when it runs one, else
    `python -m mcugpt.cli ARGS` importing this checkout's mcugpt; its process group is killed
    at the timeout (a compile's C compiler included)."""
    if _stopping.is_set():
        raise KeyboardInterrupt
    if _server is not None:
        return _server.execute(args, cwd, timeout, _server_io)
    path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    # its own session: a Ctrl-C at the terminal reaches the campaign, which stops the cases
    proc = subprocess.Popen([sys.executable, "-m", "mcugpt.cli", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    with _running_lock:
        _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        out, err = proc.communicate()
        return None, out, err, True
    finally:
        with _running_lock:
            _running.discard(proc)


_running: set = set()          # the cases' processes now running, to stop on Ctrl-C
_running_lock = threading.Lock()
_stopping = threading.Event()  # set on Ctrl-C: a case's next command does not start
_server = None                 # the campaign's ForkServer, while it runs one
_server_io = None              # the folder its commands' stdout and stderr go through


def stop_all() -> None:
    _stopping.set()
    with _running_lock:
        for proc in _running:
            _killpg(proc.pid)
    if _server is not None:
        _server.kill_all()


def shown(args: list) -> str:
    """A command line to paste into a shell (bytes that are not UTF-8 as $'\\xNN')."""
    def quote(a):
        a = os.fsencode(a) if not isinstance(a, bytes) else a
        try:
            text = a.decode()
            if text.isprintable():
                return shlex.quote(text)
        except UnicodeDecodeError:
            pass
        return "$'" + "".join(chr(b) if 0x20 <= b < 0x7F and b not in b"'\\" else f"\\x{b:02x}" for b in a) + "'"
    line = " ".join(["mcugpt", *map(quote, args)])
    return line if len(line) <= 300 else line[:300] + f"... ({len(line):,} characters)"


# ----------------------------------------------------------------------------
# a fork server: each case's command in its own process, without Python's start-up


class ForkServer:
    """One process that has imported mcugpt and run the clean build once (so the tokenizer and
    the firmware's cycle table are loaded), and forks each command from there. A tiny `run` is
    about 1.7 s as a fresh `python -m mcugpt.cli`, 1.3 s of it start-up (imports, the tokenizer's
    merges, the cycle table); forked, a command costs its own work. Each command still runs in
    its own process and session, so its crash, signal or hang is its own and is killed as a
    process group (a compile's C compiler included)."""

    def __init__(self, warm: list | None):
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")     # a clean interpreter, not a copy of our threads
        self.conn, there = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(there, [str(a) for a in warm or []]), daemon=True)
        self.proc.start()
        there.close()
        self.send_lock, self.lock = threading.Lock(), threading.Lock()
        self.waiting: dict[int, list] = {}            # request id -> [event, pid, status]
        self.next_id = 0
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                rid, what, value = self.conn.recv()
            except (EOFError, OSError):
                with self.lock:     # the server is gone: every waiting command ends as killed
                    for w in self.waiting.values():
                        w[2] = w[2] if w[2] is not None else -signal.SIGKILL
                        w[0].set()
                return
            with self.lock:
                w = self.waiting[rid]
            if what == "pid":
                w[1] = value
            else:
                w[2] = value
                w[0].set()

    def execute(self, args: list, cwd: Path, timeout: float, io: Path) -> tuple[int | None, bytes, bytes, bool]:
        with self.lock:
            rid, self.next_id = self.next_id, self.next_id + 1
            w = self.waiting[rid] = [threading.Event(), None, None]
        out, err = io / f"{rid}.out", io / f"{rid}.err"
        with self.send_lock:
            self.conn.send((rid, [os.fsencode(a) if not isinstance(a, bytes) else a for a in args], str(cwd),
                            str(out), str(err)))
        timed_out = not w[0].wait(timeout)
        if timed_out:
            while w[1] is None and not w[0].is_set():   # forked but not yet reported
                time.sleep(0.01)
            if w[1] is not None:
                _killpg(w[1])
            w[0].wait()
        with self.lock:
            del self.waiting[rid]
        status = w[2]
        data = []
        for path in (out, err):
            try:
                data.append(path.read_bytes())
                path.unlink()
            except OSError:
                data.append(b"")
        return (None if timed_out else status), data[0], data[1], timed_out

    def kill_all(self) -> None:
        with self.lock:
            pids = [w[1] for w in self.waiting.values() if w[1] is not None]
        for pid in pids:
            _killpg(pid)

    def close(self) -> None:
        try:
            with self.send_lock:
                self.conn.send(None)    # (closing our end would not reach it while the reader waits on it)
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):   # it ended meanwhile (its group gone)
        pass


def _serve(conn, warm: list) -> None:
    """The server's loop: fork a child per request, report its pid and then its exit status
    (negative: the signal that killed it), as `subprocess` would."""
    import multiprocessing.connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the campaign's to handle
    from tqdm import tqdm

    from mcugpt import cli
    # tqdm's default lock is a named semaphore the resource tracker would report as leaked
    # (ours, or each child's); a command's bars are its process's own
    tqdm.set_lock(threading.RLock())
    if warm:
        devnull = os.open(os.devnull, os.O_WRONLY)
        saved = os.dup(1), os.dup(2)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            cli.main(warm)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    children = {}                                     # pidfd -> (request id, pid)
    while True:
        ready = multiprocessing.connection.wait([conn, *children])
        for r in ready:
            if r is conn:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    return
                if request is None:
                    return
                rid, args, cwd, out, err = request
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(args, cwd, out, err)
                children[os.pidfd_open(pid)] = (rid, pid)
                conn.send((rid, "pid", pid))
            else:
                rid, pid = children.pop(r)
                os.close(r)
                _, status = os.waitpid(pid, 0)
                conn.send((rid, "exit", os.waitstatus_to_exitcode(status)))


def _child(args: list, cwd: str, out: str, err: str) -> None:
    """`mcugpt ARGS` in `cwd`, stdout and stderr to files, as a fresh process would run it."""
    code = 1
    try:
        os.setsid()
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        for path, target in ((out, 1), (err, 2)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from mcugpt import cli
        code = cli.main([os.fsdecode(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
        except BaseException:
            pass
        try:
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(code if isinstance(code, int) else 1)


# ----------------------------------------------------------------------------
# an image's fields, edited with their CRC32s sealed again


def header(img) -> dict:
    return HEADER.unpack(bytes(img[:HEADER.size]))


def field_offset(img, section: str, index: int, name: str, element: int = 0) -> int:
    """Byte offset in the image of a field: section "header" (index ignored), "stage" or
    "tensor" (entry `index` of its table); `element` of an array field."""
    h = header(img)
    if section == "header":
        return HEADER.offset_of(name) + 4 * element
    if section == "stage":
        return h["tables_offset"] + index * STAGE_ENTRY.size + STAGE_ENTRY.offset_of(name) + 4 * element
    if section == "tensor":
        return (h["tables_offset"] + h["stage_count"] * STAGE_ENTRY.size + index * TENSOR_ENTRY.size
                + TENSOR_ENTRY.offset_of(name) + 4 * element)
    raise ValueError(section)


def seal(img: bytearray, tensor: int | None = None, keep: tuple = ()) -> None:
    """Recompute the CRC32s an edit broke, innermost first: tensor `tensor`'s own (in its
    TensorEntry) when its blob was edited, then the tables', the token table's and the
    header's. The header CRC fields named in `keep` are left as they are (the edited field)."""
    if tensor is not None:
        at = field_offset(img, "tensor", tensor, "offset")
        off, size = struct.unpack_from("<II", img, at)
        struct.pack_into("<I", img, field_offset(img, "tensor", tensor, "crc"), zlib.crc32(img[off:off + size]))
    h = header(img)
    for what in ("tables", "tokens"):
        if f"{what}_crc" not in keep:
            off, n = h[f"{what}_offset"], h[f"{what}_size"]
            struct.pack_into("<I", img, HEADER.offset_of(f"{what}_crc"), zlib.crc32(img[off:off + n]))
    if "header_crc" not in keep:
        struct.pack_into("<I", img, HEADER_CRC_SPAN, zlib.crc32(img[:HEADER_CRC_SPAN]))


def edit_field(img: bytearray, section: str, index: int, name: str, value, element: int = 0) -> None:
    """Set one header, stage-entry or tensor-entry field and seal every CRC32 again, so only
    the field's meaning can refuse the image."""
    struct_ = {"header": HEADER, "stage": STAGE_ENTRY, "tensor": TENSOR_ENTRY}[section]
    f = next(f for f in struct_.fields if f.name == name)
    at = field_offset(img, section, index, name, element)
    if f.type == "char":
        img[at:at + f.count] = bytes(value).ljust(f.count, b"\0")[:f.count]
    else:
        struct.pack_into("<f" if f.type == "f32" else "<I", img, at, value)
    seal(img, keep=(name,) if section == "header" else ())


def edit_weights(img: bytearray, tensor: int, element: int, raw: bytes) -> None:
    """Overwrite bytes of tensor `tensor`'s blob at `element` (a 4-byte word) and seal its
    CRC32, then the tables' and the header's."""
    off = struct.unpack_from("<I", img, field_offset(img, "tensor", tensor, "offset"))[0]
    img[off + 4 * element:off + 4 * element + len(raw)] = raw
    seal(img, tensor=tensor)


# ----------------------------------------------------------------------------
# a campaign: the clean build and its answer, then the cases


@dataclass
class Result:
    campaign: str
    index: int
    what: str                     # the mutation or the command
    cls: str
    commands: list = field(default_factory=list)   # [{"command", "class", "returncode", "first_line", "why"}]

    def failing_command(self) -> dict:
        return next((c for c in self.commands if c["class"] == self.cls), self.commands[-1])


@dataclass
class Context:
    out: Path
    seed: int
    timeout: float
    build: Path = None
    image: Path = None
    checkpoint: Path = None
    clean: dict = None            # the clean build's run: tokens and text


def _rng(seed: int, campaign: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{campaign}/{index}")


def _command(ctx: Context, args: list, cwd: Path, same=None, timeout: float | None = None) -> dict:
    t0 = time.time()
    rc, out, err, timed_out = execute(args, cwd, timeout or ctx.timeout)
    o = classify(rc, out, err, timed_out, same)
    return {"command": shown(args), "class": o.cls, "returncode": o.returncode, "first_line": o.first_line,
            "why": o.why, "wall_s": round(time.time() - t0, 2), "stdout": out}


def _answer(stdout: bytes) -> tuple | None:
    try:
        obj = json.loads(stdout)
        return obj["tokens"], obj["text"]
    except (ValueError, KeyError, TypeError):
        return None


def prepare(ctx: Context, campaigns: set) -> None:
    """One tiny build (and its clean answer), and the tiny checkpoint folder the checkpoint
    and CLI cases start from."""
    try:
        ctx.out.mkdir(parents=True, exist_ok=True)
        (ctx.out / "cases").mkdir(exist_ok=True)
    except OSError as e:
        raise McugptError(f"--out {ctx.out}: cannot make the folder ({e.strerror})") from None
    ctx.build = (ctx.out / "build").resolve()
    ctx.image = ctx.build / "flash.img"
    c = _command(ctx, ["compile", "--model", "tiny", "--out", ctx.build, "--quiet"], ctx.out, timeout=600)
    if c["class"] != "exit0_same":
        raise McugptError(f"fuzz: the clean tiny build failed ({c['command']}: {c['first_line']})")
    c = _command(ctx, ["run", "--build", ctx.build, "--prompt", PROMPT, "--tokens", str(TOKENS), "--json"],
                 ctx.out, timeout=600)
    answer = _answer(c["stdout"])
    if c["class"] != "exit0_same" or answer is None:
        raise McugptError(f"fuzz: the clean tiny build does not run ({c['command']}: {c['first_line']})")
    ctx.clean = {"tokens": answer[0], "text": answer[1]}
    if campaigns & {"checkpoints", "cli"}:
        ctx.checkpoint = (ctx.out / "checkpoint").resolve()
        write_tiny_checkpoint(ctx.checkpoint)


def run_campaign(out: Path, seed: int, sizes: dict, timeout: float = 60.0, jobs: int = 2, only=None,
                 progress=None, fork: bool = True) -> dict:
    """Run `sizes[campaign]` cases of each campaign (or the `only` [(campaign, index)] ones,
    keeping their files); return the report: counts per campaign and class, every failing
    case with its reproducer. `fork`: the cases' commands fork from a fork server (the
    campaign's clean build and run are fresh processes either way)."""
    t0 = time.time()
    ctx = Context(Path(out), seed, timeout)
    cases = only or [(c, i) for c in CAMPAIGNS for i in range(sizes.get(c, 0))]
    if cases:
        prepare(ctx, {c for c, _ in cases})
    runners = {"images": image_case, "checkpoints": checkpoint_case, "cli": cli_case}
    results, lock = [], threading.Lock()

    def one(case):
        campaign, index = case
        folder = ctx.out / "cases" / f"{campaign}-{index}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            result = runners[campaign](ctx, index, folder)
        except (OSError, ValueError, TypeError, KeyError, IndexError) as e:
            # the campaign's own mutation failed: a bug of the fuzzer, counted as a failure
            # (with its reproducer) rather than ending the campaign and its report
            why = f"the case could not be made: {type(e).__name__}: {e}"
            result = Result(campaign, index, why, "traceback",
                            [{"command": "-", "class": "traceback", "returncode": None, "first_line": why,
                              "why": "a fuzzer bug", "wall_s": 0.0, "stdout": b""}])
        finally:
            if not only:
                shutil.rmtree(folder, ignore_errors=True)
        with lock:
            results.append(result)
            if progress and not _stopping.is_set():   # a case Ctrl-C killed is no result
                progress(result, len(results), len(cases))
        return result

    global _server, _server_io
    if cases and fork:
        _server_io = ctx.out / "io"
        _server_io.mkdir(exist_ok=True)
        _server = ForkServer(["run", "--build", ctx.build, "--prompt", PROMPT, "--tokens", "1", "--json"])
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        for future in [pool.submit(one, case) for case in cases]:
            future.result()
    except BaseException:          # Ctrl-C, or a case that could not be made
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        raise
    finally:
        if _server is not None:
            _server.close()
            _server = None
    pool.shutdown()
    results.sort(key=lambda r: (CAMPAIGNS.index(r.campaign), r.index))
    return report(results, seed, {c: sum(1 for x, _ in cases if x == c) for c in CAMPAIGNS}, time.time() - t0,
                  ctx.out)


def report(results: list[Result], seed: int, sizes: dict, wall_s: float, out: Path) -> dict:
    counts = {c: {"cases": n, **dict.fromkeys(CLASSES, 0), "command_s": 0.0} for c, n in sizes.items() if n}
    failures = []
    for r in results:
        counts[r.campaign][r.cls] += 1
        counts[r.campaign]["command_s"] += sum(c["wall_s"] for c in r.commands)
        if r.cls in FAILING:
            c = r.failing_command()
            failures.append({"case": f"{r.campaign}:{r.index}", "class": r.cls, "what": r.what,
                             "command": c["command"], "first_line": c["first_line"], "why": c["why"],
                             "reproduce": f"mcugpt fuzz --seed {seed} --only {r.campaign}:{r.index} --out {out}"})
    return {"seed": seed, "wall_s": wall_s, "campaigns": counts, "failures": failures,
            "cases": [{**{k: v for k, v in asdict(r).items() if k != "commands"},
                       "commands": [{k: v for k, v in c.items() if k != "stdout"} for c in r.commands]}
                      for r in results]}


def summary(rep: dict) -> str:
    from mcugpt.report import table
    rows = [[c, n["cases"], *(n[k] for k in ("clean_error", "traceback", "hang", "signal", "exit0_same",
                                             "exit0_different"))] for c, n in rep["campaigns"].items()]
    lines = [table(["campaign", "cases", "clean error", "traceback", "hang", "signal", "exit 0 same",
                    "exit 0 different"], rows, "lrrrrrrr")]
    if rep["failures"]:
        n = len(rep["failures"])
        lines.append(f"\n{n} failing case{'s' if n != 1 else ''} (seed {rep['seed']}):")
    for f in rep["failures"]:
        lines += [f"\n{f['case']}  {LABELS[f['class']]}: {f['why']}"]
        if f["what"] != f["command"]:
            lines.append(f"  case:    {f['what']}")
        said = "answer: " if f["class"] == "exit0_different" else "stderr: "
        lines += [f"  command: {f['command']}", f"  {said} {f['first_line'][:300]}", f"  again:   {f['reproduce']}"]
    lines.append(f"\n{sum(n['cases'] for n in rep['campaigns'].values())} cases in {rep['wall_s']:.0f} s ("
                 + ", ".join(f"{c} {n['command_s']:.0f} s" for c, n in rep["campaigns"].items())
                 + " of commands, run in parallel)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# images


U32_EDGES = (0, 1, 2, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFE, 4096, 4095, 65536)
F32_EDGES = (float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-45, 1e38, -3e38, 1.0, 1e-5 * 2)


def _u32_value(rng, orig: int) -> int:
    choice = rng.random()
    if choice < 0.4:
        return rng.choice(U32_EDGES)
    if choice < 0.8:
        return (orig + rng.choice((-4096, -4, -1, 1, 4, 4096, orig, -(orig // 2)))) & 0xFFFFFFFF
    return rng.getrandbits(32)


def mutate_image(rng: random.Random, img: bytearray) -> tuple[bytearray, str]:
    """One mutation of a clean image: random damage anywhere, or one field edited with its
    CRC32s sealed again. Returns the image and a description that says exactly what."""
    h = header(img)
    meta_end = h["weights_offset"]
    kind = rng.choice(["flip", "flip", "run", "truncate", "extend", "header", "header", "stage", "tensor",
                       "tensor", "tokens", "weights", "weights"])
    if kind == "flip":
        flips = []
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(meta_end) if rng.random() < 0.5 else rng.randrange(len(img))
            bit = rng.randrange(8)
            img[at] ^= 1 << bit
            flips.append(f"0x{at:x}.{bit}")
        return img, "flip bit(s) " + ", ".join(flips)
    if kind == "run":
        at = rng.randrange(meta_end) if rng.random() < 0.5 else rng.randrange(len(img))
        n = rng.choice((1, 4, 16, 256, 4096))
        fill = rng.choice(("00", "ff", "random"))
        img[at:at + n] = bytes(n) if fill == "00" else b"\xff" * n if fill == "ff" else rng.randbytes(n)
        return img, f"{n} bytes of {fill} at 0x{at:x}"
    if kind == "truncate":
        n = rng.choice((0, 1, HEADER.size - 1, HEADER.size, 4096, meta_end - 1, len(img) - 1, len(img) - 4096,
                        rng.randrange(len(img))))
        return img[:n], f"truncated to {n:,} bytes"
    if kind == "extend":
        n = rng.choice((1, 4, 4096, 65536))
        return img + (b"\xff" * n if rng.random() < 0.5 else rng.randbytes(n)), f"extended by {n:,} bytes"
    if kind == "header":
        f = rng.choice([f for f in HEADER.fields])
        element = rng.randrange(f.count)
        at = HEADER.offset_of(f.name) + 4 * element
        if f.type == "f32":
            value = rng.choice(F32_EDGES)
        else:
            value = _u32_value(rng, struct.unpack_from("<I", img, at)[0])
        edit_field(img, "header", 0, f.name, value, element)
        return img, f"header {f.name}{f'[{element}]' if f.count > 1 else ''} = {value!r}, CRCs sealed"
    if kind == "stage":
        i = rng.randrange(h["stage_count"])
        f = rng.choice(STAGE_ENTRY.fields)
        element = rng.randrange(f.count)
        value = _u32_value(rng, struct.unpack_from("<I", img, field_offset(img, "stage", i, f.name, element))[0])
        edit_field(img, "stage", i, f.name, value, element)
        return img, f"stage {i} {f.name}{f'[{element}]' if f.count > 1 else ''} = {value}, CRCs sealed"
    if kind == "tensor":
        i = rng.randrange(h["tensor_count"])
        f = rng.choice(TENSOR_ENTRY.fields)
        if f.type == "char":
            value = rng.choice((b"", b"\xff\xfe\x80", b"h.0.ln_1.weight", b"x" * f.count, b"wte.weight\0junk",
                                rng.randbytes(f.count)))
            edit_field(img, "tensor", i, f.name, value)
            return img, f"tensor {i} {f.name} = {value!r}, CRCs sealed"
        value = _u32_value(rng, struct.unpack_from("<I", img, field_offset(img, "tensor", i, f.name))[0])
        edit_field(img, "tensor", i, f.name, value)
        return img, f"tensor {i} {f.name} = {value}, CRCs sealed"
    if kind == "tokens":
        off, v = h["tokens_offset"], h["vocab_size"]
        if rng.random() < 0.5:
            i = rng.randrange(v + 1)
            at = off + 4 * i
            value = _u32_value(rng, struct.unpack_from("<I", img, at)[0])
            struct.pack_into("<I", img, at, value)
            seal(img)
            return img, f"token table offset[{i}] = {value}, CRCs sealed"
        at = off + 4 * (v + 1) + rng.randrange(h["tokens_size"] - 4 * (v + 1))
        raw = rng.choice((b"\x00", b"\xff", b"\xc3", b"\n", rng.randbytes(4)))
        img[at:at + len(raw)] = raw
        seal(img)
        return img, f"token bytes at 0x{at:x} = {raw!r}, CRCs sealed"
    # weights: values a corrupt writer could leave, at a random element of a random tensor
    i = rng.randrange(h["tensor_count"])
    size = struct.unpack_from("<I", img, field_offset(img, "tensor", i, "size"))[0]
    element = rng.randrange(max(1, size // 4))
    value = rng.choice(F32_EDGES + (12345.0, -7.5))
    n = rng.choice((1, 1, 16, 64))
    edit_weights(img, i, element, struct.pack("<f", value) * min(n, max(1, size // 4 - element)))
    return img, f"tensor {i} elements {element}..{element + n - 1} = {value!r}, its CRC and the tables' sealed"


def image_case(ctx: Context, index: int, folder: Path) -> Result:
    rng = _rng(ctx.seed, "images", index)
    img, what = mutate_image(rng, bytearray(ctx.image.read_bytes()))
    build = folder / "build"
    build.mkdir()
    for entry in ctx.build.iterdir():   # the clean build, but this flash.img
        if entry.name != "flash.img":
            (build / entry.name).symlink_to(entry)
    (build / "flash.img").write_bytes(img)
    clean = (ctx.clean["tokens"], ctx.clean["text"])
    # inspect has no answer to compare: exit 0 means the image's CRCs and layout hold, which
    # a sealed edit keeps; the answer is the run's
    commands = [_command(ctx, ["inspect", build / "flash.img"], folder),
                _command(ctx, ["run", "--build", build, "--prompt", PROMPT, "--tokens", str(TOKENS), "--json"],
                         folder, same=lambda out: _answer(out) == clean)]
    run = commands[-1]
    if run["class"] == "exit0_different":
        got = _answer(run["stdout"]) or ("no JSON", "")
        run["first_line"] = f"tokens {got[0]} {got[1]!r}; the clean build's {clean[0]} {clean[1]!r}"
    return Result("images", index, what, worst([Outcome(c["class"], None, "") for c in commands]).cls, commands)


# ----------------------------------------------------------------------------
# checkpoints


def tiny_hf_config(cfg) -> dict:
    """config.json as Hugging Face's GPT2Config.save_pretrained writes it, for `cfg`."""
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.n_layer,
            "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx,
            "vocab_size": cfg.vocab_size, "layer_norm_epsilon": cfg.layer_norm_epsilon,
            "activation_function": "gelu_new", "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
            "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256, "use_cache": True,
            "torch_dtype": "float32", "transformers_version": "4.46.0"}


def _tiny():
    from compiler.config import load_preset
    from compiler.weights import synthetic_weights
    cfg = load_preset("tiny")
    return cfg, synthetic_weights(cfg, seed=0)


def write_tiny_checkpoint(folder: Path) -> None:
    from safetensors.numpy import save_file
    cfg, w = _tiny()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"transformer." + k: v for k, v in w.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(tiny_hf_config(cfg)))


def _save(tensors: dict, path: Path, dtypes: dict | None = None) -> None:
    """save_file, with safetensors dtype names numpy has no type for (bfloat16)."""
    import safetensors
    dtypes = dtypes or {}
    specs = {k: safetensors.TensorSpec(dtype=dtypes.get(k, v.dtype.name), shape=v.shape, data_ptr=v.ctypes.data,
                                       data_len=v.nbytes) for k, v in tensors.items()}
    safetensors.serialize_file(specs, str(path))


CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "n_ctx", "vocab_size", "layer_norm_epsilon",
               "activation_function", "model_type", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
               "reorder_and_upcast_attn", "tie_word_embeddings", "add_cross_attention", "n_inner", "pruned_heads",
               "quantization_config", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "max_position_embeddings", "architectures", "torch_dtype", "bos_token_id")
# raw JSON (Python's json reads NaN and Infinity, as Hugging Face's does)
CONFIG_VALUES = ("null", '"2"', '""', "[]", "[2]", "{}", "NaN", "Infinity", "-Infinity", "1e999", "1e30",
                 "100000000000000000000", "-1", "0", "1", "2", "3", "4", "0.5", "2.0", "1e-5", "1", "true",
                 "false", '"gelu"', '"relu"', '"gelu_new"', '"llama"', '"\\u0000"', '"\\ud800"', "64", "128",
                 "256", "50257", "50256", "65536", "65537", "4294967296")


def _mutate_tensors(rng, tensors: dict, dtypes: dict, w: dict, cfg) -> str:
    """One mutation of `tensors` (full names) and their safetensors `dtypes`, in place; `w`
    the clean weights (GPT2Model names)."""
    import numpy as np
    # a second mutation may find a tensor already an integer, empty or a scalar: the shape
    # and value edits take float32 arrays with elements, or else the tensor goes
    plain = sorted(k for k, v in tensors.items() if v.dtype == np.float32 and v.ndim and v.size)
    name = rng.choice(plain or sorted(tensors))
    kind = rng.choice(["dtype", "shape", "missing", "extra", "values", "values", "convert", "prefix"])
    if kind in ("shape", "values") and name not in plain:
        kind = "missing"
    if kind == "dtype":
        dt = rng.choice(("int64", "int32", "bool", "uint8", "float64", "int8", "float16"))
        tensors[name] = tensors[name].astype(dt)
        return f"tensor {name} as {dt}"
    if kind == "shape":
        v = tensors[name]
        shapes = {"transposed": v.T, "flattened": v.reshape(-1), "one more dim": v[None],
                  "one row less": v[:-1], "empty": v[:0], "scalar": np.array(v.flat[0], v.dtype)}
        how = rng.choice(sorted(shapes))
        tensors[name] = np.ascontiguousarray(shapes[how])
        return f"tensor {name} {how} {list(tensors[name].shape)}"
    if kind == "missing":
        del tensors[name]
        return f"tensor {name} missing"
    if kind == "extra":
        extra, value = rng.choice([
            ("transformer.h.2.ln_1.weight", np.ones(cfg.n_embd, np.float32)),
            ("transformer.h.0.ln_1.weight", None),   # under both names, below
            ("lm_head.weight", w["wte.weight"].copy()),
            ("lm_head.weight", w["wte.weight"] * 2),
            ("transformer.h.0.attn.bias", np.ones((1, 1, cfg.n_ctx, cfg.n_ctx), np.uint8)),
            ("score.weight", np.zeros((2, cfg.n_embd), np.float32)),
            ("transformer.h.-1.ln_1.weight", np.ones(cfg.n_embd, np.float32)),
            ("", np.ones(1, np.float32)),
        ])
        if value is None:
            extra, value = "h.0.ln_1.weight", w["h.0.ln_1.weight"]
        tensors[extra] = value
        return f"extra tensor {extra!r} {list(value.shape)}"
    if kind == "values":
        value = rng.choice((np.nan, np.inf, -np.inf, 1e30, 1.1e30, 3e38, 1e-45, -0.0, 1e29, 0.0))
        v = tensors[name].copy()
        n = rng.choice((1, 1, v.size))
        at = rng.randrange(v.size - n + 1)
        v.flat[at:at + n] = value
        tensors[name] = v
        return f"tensor {name}[{at}:{at + n}] = {value!r}"
    if kind == "convert":
        how = rng.choice(("float16", "bfloat16"))
        for k, v in tensors.items():
            if v.dtype != np.float32:
                continue
            if how == "float16":
                tensors[k] = v.astype(np.float16)
            else:
                tensors[k] = (v.view(np.uint32) >> 16).astype(np.uint16)
                dtypes[k] = "bfloat16"
        return f"every tensor as {how}"
    for k in [k for k in tensors if k.startswith("transformer.")]:
        tensors[k.removeprefix("transformer.")] = tensors.pop(k)
        if k in dtypes:
            dtypes[k.removeprefix("transformer.")] = dtypes.pop(k)
    return "tensor names without the 'transformer.' prefix (GPT2Model's)"


def _write_shards(rng, folder: Path, tensors: dict, dtypes: dict) -> str:
    names = sorted(tensors)
    half = len(names) // 2
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for file, part in zip(files, (names[:half], names[half:])):
        _save({k: tensors[k] for k in part}, folder / file, dtypes)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "model.safetensors").unlink()
    damage = rng.choice(["none", "none", "missing shard", "wrong map", "traversal", "absolute", "not json",
                         "map is a list", "unmapped tensor", "extra entry"])
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    if damage == "missing shard":
        (folder / files[1]).unlink()
    elif damage == "wrong map":
        weight_map[names[0]] = files[1]
    elif damage == "traversal":
        weight_map[names[0]] = "../checkpoint/model.safetensors"
    elif damage == "absolute":
        weight_map[names[0]] = "/dev/zero"
    elif damage == "map is a list":
        index["weight_map"] = list(weight_map)
    elif damage == "unmapped tensor":
        weight_map.pop(names[-1])
    elif damage == "extra entry":
        weight_map["transformer.h.7.ln_1.weight"] = files[0]
    text = "{not json" if damage == "not json" else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text)
    return f"sharded in 2 ({damage})"


def _damage_file(rng, folder: Path) -> str:
    """A file of the folder replaced by something that is not a regular file, or damaged bytes."""
    name = rng.choice(("config.json", "model.safetensors", "vocab.json", "merges.txt"))
    path = folder / name
    how = rng.choice(("folder", "fifo", "symlink loop", "dangling symlink", "/dev/null", "/dev/zero",
                      "bytes", "bytes"))
    # a second damage may pick what the first replaced: reading it could hang (a FIFO) or fail
    regular = lambda p: p.is_file() and not p.is_symlink()
    if how == "bytes" and (path.exists() or path.is_symlink()) and not regular(path):
        return f"{name} (already not a regular file)"
    if name in ("vocab.json", "merges.txt") and how == "bytes":
        other = folder / ("merges.txt" if name == "vocab.json" else "vocab.json")
        content = rng.choice((b"", b"[1, 2]", b'{"a": "0"}', b'{"a": 0}', b"\xff\xfe", b"#version: 0.2\n",
                              b'{"Hello": 0, "!": 1}', b"#version: 0.2\nH e\n"))
        path.write_bytes(content)
        if rng.random() < 0.5 and (regular(other) or not (other.exists() or other.is_symlink())):
            other.write_bytes(b"#version: 0.2\n" if name == "vocab.json" else b'{"!": 0, "H": 1}')
        return f"{name} = {content!r}" + (f" and {other.name}" if other.exists() else "")
    if how == "bytes":
        if name == "config.json":
            content = rng.choice((b"", b"[" * 100_000 + b"]" * 100_000, b'{"n_layer": 2,', b"\xef\xbb\xbf{}",
                                  b'{"n_layer": 2, "name": "caf\xe9"}', b"null", b"[1, 2]", b'"tiny"',
                                  b'{"n_layer": 2, "n_layer": 1}', b"NaN", b"{" * 50 + b"}" * 50))
            path.write_bytes(content)
            return f"config.json = {content[:40]!r}{'...' if len(content) > 40 else ''} ({len(content):,} bytes)"
        files = [p for p in sorted(folder.glob("*.safetensors")) if regular(p)]   # one shard when sharded
        if not files:
            return "the safetensors (already not regular files)"
        path = rng.choice(files)
        data = bytearray(path.read_bytes())
        cut = rng.choice(("truncate", "header length", "header byte", "data byte"))
        if cut == "truncate":
            n = rng.choice((0, 4, 8, 9, 100, len(data) // 2, len(data) - 1))
            data = data[:n]
        elif cut == "header length":
            data[:8] = rng.choice((0, 1, 2 ** 40, 2 ** 64 - 1, len(data))).to_bytes(8, "little")
        elif cut == "header byte":
            hlen = int.from_bytes(data[:8], "little")
            data[8 + rng.randrange(hlen)] = rng.randrange(256)
        else:
            data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(data)
        return f"{path.name}: {cut}"
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if how == "folder":
        path.mkdir()
    elif how == "fifo":
        os.mkfifo(path)
    elif how == "symlink loop":
        path.symlink_to(name)
    elif how == "dangling symlink":
        path.symlink_to("nowhere")
    else:
        path.symlink_to(how)
    return f"{name} is a {how}"


def mutate_checkpoint(rng: random.Random, folder: Path) -> str:
    """A tiny checkpoint folder with one or two mutations; returns what they are."""
    cfg, w = _tiny()
    folder.mkdir(parents=True, exist_ok=True)
    config = tiny_hf_config(cfg)
    tensors, dtypes = {"transformer." + k: v for k, v in w.items()}, {}
    whats, raw = [], {}
    shard = False
    for _ in range(1 if rng.random() < 0.8 else 2):
        kind = rng.choice(["config", "config", "config drop", "config extra", "tensors", "tensors", "file",
                           "shards"])
        if kind == "config":
            key, value = rng.choice(CONFIG_KEYS), rng.choice(CONFIG_VALUES)
            raw[key] = value
            whats.append(f"config.json {key}: {value}")
        elif kind == "config drop":
            key = rng.choice(sorted(config))
            config.pop(key)
            whats.append(f"config.json without {key}")
        elif kind == "config extra":
            key = rng.choice(("rotary_dim", "n_inner", "pruned_heads", "hidden_size", "num_hidden_layers",
                              "max_position_embeddings", "num_attention_heads", "x" * 1000, "", "\u00e9"))
            raw[key] = rng.choice(CONFIG_VALUES)
            whats.append(f"config.json extra {key[:20]!r}: {raw[key]}")
        elif kind == "tensors":
            whats.append(_mutate_tensors(rng, tensors, dtypes, w, cfg))
        elif kind == "shards":
            shard = True
        else:
            whats.append("FILE")
    text = json.dumps({**config, **dict.fromkeys(raw, "@@")})
    for key, value in raw.items():
        text = text.replace(f"{json.dumps(key)}: \"@@\"", f"{json.dumps(key)}: {value}")
    (folder / "config.json").write_text(text)
    _save(tensors, folder / "model.safetensors", dtypes)
    if shard:
        whats.append(_write_shards(rng, folder, tensors, dtypes))
    while "FILE" in whats:
        whats[whats.index("FILE")] = _damage_file(rng, folder)
    return "; ".join(whats)


def checkpoint_case(ctx: Context, index: int, folder: Path) -> Result:
    rng = _rng(ctx.seed, "checkpoints", index)
    ckpt = folder / "ckpt"
    what = mutate_checkpoint(rng, ckpt)
    build = folder / "build"
    commands = [_command(ctx, ["reference", "--weights", ckpt, "--prompt", PROMPT, "--tokens", str(TOKENS),
                               "--json"], folder),
                _command(ctx, ["compile", "--weights", ckpt, "--out", build, "--quiet"], folder)]
    if commands[-1]["class"] == "exit0_same":
        # the board must give the reference's tokens and logits; --check prints its JSON
        # before it fails, so the comparison is read from it either way
        def agrees(out):
            try:
                check = json.loads(out)["check"]
                return check["tokens_equal"] and check["logits_identical"]
            except (ValueError, KeyError, TypeError):
                return False
        c = _command(ctx, ["run", "--build", build, "--prompt", PROMPT, "--tokens", str(TOKENS), "--json",
                           "--check"], folder, same=agrees)
        if c["class"] == "clean_error" and c["stdout"].strip() and not agrees(c["stdout"]):
            c.update({"class": "exit0_different", "why": "run --check: the board differs from the reference"})
        if c["class"] == "exit0_different":
            try:
                r = json.loads(c["stdout"])
                c["first_line"] = (f"board tokens {r['tokens']}, reference {r['check']['reference_tokens']}, "
                                   f"logits identical: {r['check']['logits_identical']}")
            except (ValueError, KeyError, TypeError):
                c["first_line"] = "run --check printed no comparison"
        commands.append(c)
    return Result("checkpoints", index, what, worst([Outcome(c["class"], None, "") for c in commands]).cls, commands)


# ----------------------------------------------------------------------------
# command-line arguments, from the parser


INTS = ("0", "-1", "1", "2", "3", "16", "129", "100000", "2147483648", "-2147483649", "18446744073709551616",
        "99999999999999999999999999", "1.5", "nan", "", " 3", "0x10", "1e3", "+5", "\u0663")
FLOATS = ("0", "-0", "0.5", "1", "-1", "nan", "inf", "-inf", "1e309", "1e-320", "1e-9", "", "1_0", "0x1p3", "100")
SIZES = ("0", "1", "-1", "", "1MiB", "64MiB", "32KiB", "0.5", "1.5KiB", "99999999999999999GiB", "1e9", "nan",
         "4GiB", "2MiB", "512")
STRINGS = ("", " ", "x", "tiny", "\n", "-", "--", "x" * 5000, b"\xff\xfe", "caf\u00e9", "<|endoftext|>",
           "\U0001F600", "word " * 200)
PROMPTS = ("Hello", "", " ", "<|endoftext|>", b"\xff\xfe\xfd", "\U0001F600" * 3, "word " * 130, "\n\n",
           "a" * 2000, "\u202eabc", "Hello, my name is")
MODELS = ("gpt5", "", "TINY", "tiny.json", "../models/tiny", "x" * 300, b"\xff", "/dev/null", "tiny\n")
# paths, relative to the case's folder (its working directory), where `file`, `dir`, `fifo`
# and `loop` exist; an output path is never one outside it but /dev/null and /proc/x
OUT_PATHS = ("", ".", "file", "dir", "new/deeper", "/dev/null", "/proc/x", "x" * 300, "d/" * 200 + "x",
             b"\xff\xfe", "fifo", "loop", "a\nb")
IN_PATHS = OUT_PATHS + ("/", "/proc/self", "/dev/zero", "nowhere")


# options whose valid values make a command wait for a person (`run --gdb PORT` halts the board
# until a debugger attaches): only values the command refuses
REFUSED_ONLY = {"gdb": ("", "x", "-1", "0x50", "65536", "99999999999", "\u0663")}


def _valid(ctx: Context, action, dest: str) -> str | None:
    """A value the command accepts, so that cases reach past argument checks."""
    known = {"model": "tiny", "weights": str(ctx.checkpoint), "build": str(ctx.build), "image": str(ctx.image),
             "out": "out", "prompt": "Hello", "tokens": "2", "ctx": "64", "seed": "1", "weights_seed": "1",
             "top_k": "5", "temperature": "0.8", "ram": "8MiB", "prefill": "4", "prefill_chunk": "1",
             "timeout": "60"}
    if dest in known:
        return known[dest]
    if action.choices:
        return None
    return {int: "1", float: "0.5"}.get(action.type, "x")


def _edge(rng, action, dest: str):
    if dest == "model":
        return rng.choice(MODELS)
    if dest == "prompt":
        return rng.choice(PROMPTS)
    if dest == "out":
        return rng.choice(OUT_PATHS)
    if dest in ("build", "weights", "image"):
        return rng.choice(IN_PATHS)
    if action.choices:
        return rng.choice(("", "FP32", "none ", "x" * 100, b"\xff"))
    if action.type is int:
        return rng.choice(INTS)
    if action.type is float:
        return rng.choice(FLOATS)
    if action.type is not None:       # a parse function (sizes)
        return rng.choice(SIZES)
    return rng.choice(STRINGS)


def cli_arguments(rng: random.Random, ctx: Context) -> list:
    """A command line for one subcommand, every option drawn from the parser: required ones
    nearly always, the others sometimes, each a valid value or an edge value."""
    from mcugpt.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    name = rng.choice(sorted(n for n in sub.choices if n != "fuzz"))
    p = sub.choices[name]
    args = [name]
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            if rng.random() < 0.02:
                args.append("--help")
            continue
        dest = action.dest
        # --model is always given: its default is GPT-2 124M, whose compile, reference and
        # fit take minutes; and bench's is always one it refuses (a tiny bench takes minutes)
        often = action.required or not action.option_strings
        if not (rng.random() < (0.95 if often else 0.35)) and dest != "model":
            continue
        if action.nargs == 0:
            args.append(rng.choice(action.option_strings))
            continue
        value = _valid(ctx, action, dest)
        if dest in REFUSED_ONLY:
            value = rng.choice(REFUSED_ONLY[dest])
        elif name == "bench" and dest == "model":
            value = rng.choice([m for m in MODELS if m not in ("TINY", "tiny.json", "../models/tiny", "", "tiny\n")])
        elif value is None or rng.random() < 0.4:
            value = _edge(rng, action, dest) if action.choices is None or rng.random() < 0.5 else \
                rng.choice(action.choices)
        if action.option_strings:
            args.append(rng.choice(action.option_strings))
        args.append(value)
    if rng.random() < 0.05:
        args.insert(rng.randrange(1, len(args) + 1), rng.choice(("--bogus", "-x", "--", "--json=1", "--out")))
    return args


def cli_case(ctx: Context, index: int, folder: Path) -> Result:
    rng = _rng(ctx.seed, "cli", index)
    args = cli_arguments(rng, ctx)
    (folder / "file").write_text("not a folder\n")
    (folder / "dir").mkdir()
    (folder / "dir" / "something").write_text("x\n")
    os.mkfifo(folder / "fifo")
    (folder / "loop").symlink_to("loop")
    # fit measures tokens/s by compiling and running every board: a few times a compile
    slow = 3 if args[0] in ("fit", "bench") else 1
    command = _command(ctx, args, folder, timeout=ctx.timeout * slow)
    return Result("cli", index, command["command"], command["class"], [command])


# ----------------------------------------------------------------------------
# the command


def parse_only(text: str) -> tuple[str, int]:
    campaign, _, index = text.partition(":")
    if campaign not in CAMPAIGNS or not index.isdigit():
        raise McugptError(f"--only {text}: give CAMPAIGN:INDEX, CAMPAIGN one of {', '.join(CAMPAIGNS)}")
    return campaign, int(index)


def main(a) -> None:
    for name in ("images", "checkpoints", "cli"):
        if getattr(a, name) < 0:
            raise McugptError(f"--{name} {getattr(a, name)}: must be at least 0")
    if a.jobs < 1:
        raise McugptError(f"--jobs {a.jobs}: must be at least 1")
    if not (math.isfinite(a.timeout) and a.timeout > 0):
        raise McugptError(f"--timeout {a.timeout}: must be a positive number of seconds")
    only = list(dict.fromkeys(parse_only(t) for t in a.only)) if a.only else None   # each case once
    tty = sys.stderr.isatty()
    step = max(1, (sum((a.images, a.checkpoints, a.cli)) if not only else len(only)) // 20)

    def progress(result, done, total):
        bad = f" ({result.campaign}:{result.index} {LABELS[result.cls]})" if result.cls in FAILING else ""
        if tty or bad or done % step == 0 or done == total:
            print(f"fuzz: {done}/{total} cases{bad}", file=sys.stderr, flush=True)

    rep = run_campaign(Path(a.out), a.seed, {"images": a.images, "checkpoints": a.checkpoints, "cli": a.cli},
                       timeout=a.timeout, jobs=a.jobs, only=only, progress=progress, fork=not a.fresh)
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        print(summary(rep))
        if only:
            print(f"\ncase files kept in {Path(a.out) / 'cases'}")
    if rep["failures"]:
        n = sum(c["cases"] for c in rep["campaigns"].values())
        by = {LABELS[k]: sum(1 for f in rep["failures"] if f["class"] == k) for k in FAILING}
        raise McugptError(f"fuzz: {len(rep['failures'])} of {n} cases failed ("
                          + ", ".join(f"{v} {k}" for k, v in by.items() if v) + ")")
