"""Faults injected into the emulated board (`mcugpt run --inject KIND[:RATE|@N]`): what a faulty
board does to the firmware, so a user can see that each fault is detected and reported, never
turned silently into wrong tokens (docs/reliability.md, "Fault injection").

    flash-flip@N | flash-flip:RATE   one bit flipped in the data of one flash read (transient):
                                     the Nth read of the run, or each read with probability RATE
    flash-stuck@ADDR | flash-stuck   one bit of one flash address stuck at the opposite of what
                                     is stored: every read that covers it is wrong (the address:
                                     ADDR, or one the seed picks inside a weight blob)
    flash-dead@N                     from the Nth flash read on, the flash stops answering: its
                                     data lines float and every read returns 0xFF
    dma-hang@N                       the Nth DMA transfer (flash or PSRAM) never completes:
                                     STATUS stays BUSY, its bytes never land
    psram-flip@N | psram-flip:RATE   one bit flipped in the data of a PSRAM read

The board calls the Injector at each flash read (SpiNorFlash.faults), each DMA transfer it
starts and each PSRAM read (the controllers' `injector`); every fault that hits is recorded in
`hits` with where (address, what the image holds there, the stage and position running) and
when (the read or transfer number, the board's clock). What became of it (retried, a fault,
unchecked) is decided after the run (`outcomes`). Choices the seed makes (which bit, which
read at a RATE, which address) come from one random.Random(seed): a run is reproducible.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from target.errors import McugptError
from target.flash_layout import HEADER, STAGE_ENTRY, TENSOR_ENTRY

KINDS = {
    "flash-flip": "one bit flipped in the data of one flash read (transient): @N the Nth read, :RATE each read "
                  "with that probability",
    "flash-stuck": "one bit of a flash address stuck: @ADDR, or an address the seed picks inside a weight blob",
    "flash-dead": "@N: from the Nth flash read on, every read returns 0xFF",
    "dma-hang": "@N: the Nth DMA transfer (flash or PSRAM) never completes",
    "psram-flip": "one bit flipped in the data of a PSRAM read: @N the Nth read, :RATE each read with that probability",
}
# which forms each kind takes: "@" a count N >= 1 (flash-stuck: an address), ":" a rate, "" none
FORMS = {"flash-flip": ("@", ":"), "flash-stuck": ("@", ""), "flash-dead": ("@",), "dma-hang": ("@",),
         "psram-flip": ("@", ":")}
SYNTAX = "KIND@N or KIND:RATE (kinds: " + ", ".join(KINDS) + "; docs/reliability.md)"


@dataclass(frozen=True)
class Injection:
    """One --inject value: its kind, and N (a count or, for flash-stuck, an address) or a rate."""
    kind: str
    n: int | None = None
    rate: float | None = None
    text: str = ""


def parse(text: str) -> Injection:
    """An --inject value, or a McugptError naming what is wrong with it."""
    m = re.fullmatch(r"([a-z-]+)(?:([@:])(.*))?", text.strip())
    if not m or m.group(1) not in KINDS:
        raise McugptError(f"--inject {text!r}: unknown fault; expected {SYNTAX}")
    kind, sep, value = m.group(1), m.group(2) or "", m.group(3)
    forms = FORMS[kind]
    if sep not in forms:
        need = " or ".join({"@": "@ADDR" if kind == "flash-stuck" else "@N", ":": ":RATE", "": "nothing"}[f]
                           for f in forms)
        raise McugptError(f"--inject {text!r}: {kind} takes {need} ({KINDS[kind]})")
    if sep == "@":
        try:
            n = int(value, 0)
        except ValueError:
            n = None
        what = "a flash address" if kind == "flash-stuck" else "a count N >= 1"
        if n is None or n < (0 if kind == "flash-stuck" else 1) or n >= 1 << 32:
            raise McugptError(f"--inject {text!r}: {value!r} is not {what} (below 2^32)")
        return Injection(kind, n=n, text=text)
    if sep == ":":
        try:
            rate = float(value)
        except ValueError:
            rate = None
        if rate is None or not 0 < rate <= 1:
            raise McugptError(f"--inject {text!r}: the rate {value!r} must be a probability in (0, 1]")
        return Injection(kind, rate=rate, text=text)
    return Injection(kind, text=text)


# ----------------------------------------------------------------------------
# what the image holds at a flash address


def image_region(image, addr: int) -> dict:
    """{"region": ..., "tensor": index or None, "name": ..., "field": ...} for a flash address
    of `image` (target.flash_layout.Image): the header, a stage or tensor entry (and its field),
    a row CRC table, the token table, a weight blob, or none of them."""
    if image is None:
        return {"region": "flash", "tensor": None}
    h = image.header
    tensors = image.tensors
    for i, t in enumerate(tensors):
        if t["offset"] <= addr < t["offset"] + t["size"]:
            return {"region": "weights", "tensor": i, "name": t["name"]}
    if addr < HEADER.size:
        return {"region": "header", "tensor": None, "field": _field(HEADER, addr)}
    stages_end = h["tables_offset"] + h["stage_count"] * STAGE_ENTRY.size
    entries_end = stages_end + h["tensor_count"] * TENSOR_ENTRY.size
    if h["tables_offset"] <= addr < stages_end:
        i, at = divmod(addr - h["tables_offset"], STAGE_ENTRY.size)
        return {"region": "stage entry", "tensor": None, "stage": i, "field": _field(STAGE_ENTRY, at)}
    if stages_end <= addr < entries_end:
        i, at = divmod(addr - stages_end, TENSOR_ENTRY.size)
        return {"region": "tensor entry", "tensor": i, "name": tensors[i]["name"], "field": _field(TENSOR_ENTRY, at)}
    for i, t in enumerate(tensors):
        if t.get("row_crcs") and t["row_crcs"] <= addr < t["row_crcs"] + 4 * t["rows"]:
            return {"region": "row CRC table", "tensor": i, "name": t["name"], "row": (addr - t["row_crcs"]) // 4}
    if h["tokens_offset"] <= addr < h["tokens_offset"] + h["tokens_size"]:
        offsets = (h["vocab_size"] + 1) * 4
        return {"region": "token table", "tensor": None,
                "field": "offsets" if addr < h["tokens_offset"] + offsets else "text"}
    return {"region": "unused flash", "tensor": None}


def _field(struct, offset: int) -> str:
    for f in struct.fields:
        start = struct.offset_of(f.name)
        if start <= offset < start + (f.count if f.type == "char" else 4 * f.count):
            return f.name
    return f"byte {offset}"


def describe(where: dict, field: bool = True) -> str:
    """What an image_region is, in words: "tensor 10 'h.0.mlp.c_fc.weight'", "the tensor entry of tensor 5
    'h.0.ln_1.bias', field rows" (without the field with `field` False: a whole transfer), ... (a PSRAM
    region is its label already)."""
    r = where["region"]
    at = f", field {where.get('field')}" if field else ""
    if r == "weights":
        return f"tensor {where['tensor']} '{where['name']}'"
    if r == "tensor entry":
        return f"the tensor entry of tensor {where['tensor']} '{where['name']}'{at}"
    if r == "stage entry":
        return f"the entry of stage {where['stage']}{at}"
    if r == "row CRC table":
        return f"the row CRC of row {where['row']} of tensor {where['tensor']} '{where['name']}'"
    if r == "header":
        return f"the image header{at}"
    if r == "token table":
        return f"the token table's {where['field']}"
    return r


# Bytes the firmware reads without checking them, because it never uses them: a flip there
# cannot change a token (docs/reliability.md). None: a byte whose reads are checked.
def unchecked_why(where: dict) -> str | None:
    r, f = where["region"], where.get("field")
    if r == "tensor entry" and f == "name":
        return "a tensor's name, which the firmware never uses"
    if r == "stage entry" and f in ("flash_bytes_per_token", "macs"):
        return "a stage's report figures, which the firmware never uses"
    return None


# ----------------------------------------------------------------------------
# the injector


@dataclass
class Hit:
    """One fault that hit: a read it corrupted, a transfer it hung, the read the flash died at."""
    kind: str
    injection: str               # the --inject value
    number: int                  # the flash read / DMA transfer / PSRAM read number (1-based)
    address: int                 # flash or PSRAM address of the corrupted byte (hang, dead: the transfer's)
    length: int                  # bytes of the read or transfer
    bit: int | None              # the flipped bit of that byte
    where: dict                  # image_region (flash), or {"region": "PSRAM"}
    stage: int | None            # the stage open on the trace unit
    position: int | None         # the position being computed (None at boot)
    ns: float                    # the board's clock
    retries_before: int          # CRC retries the trace unit had recorded before it
    bus: str = "flash"


class Injector:
    """The faults of a run. `attach(board)` at power-on hooks it into that run's flash,
    controllers and trace unit; `hits` lists what hit."""

    def __init__(self, injections: list[Injection], seed: int = 0):
        self.injections = list(injections)
        self.rng = random.Random(seed)
        self.seed = seed
        self.hits: list[Hit] = []
        self.flash_reads = self.dma_transfers = self.psram_reads = 0
        self.dead_from: int | None = None    # the flash read the flash died at
        self.stuck: list[tuple[Injection, int, int]] = []   # (injection, address, bit)
        self.board = None

    def attach(self, board) -> None:
        """A new run on `board`: count from zero, pick stuck addresses, hook the flash."""
        self.board = board
        self.hits, self.stuck = [], []
        self.flash_reads = self.dma_transfers = self.psram_reads = 0
        self.dead_from = None
        self.rng = random.Random(self.seed)
        for inj in self.injections:
            if inj.kind == "flash-stuck":
                addr = inj.n if inj.n is not None else self._pick_blob_address(board.image)
                self.stuck.append((inj, addr, self.rng.randrange(8)))
        if self not in board.flash.faults:
            board.flash.faults.append(self)

    def _pick_blob_address(self, image) -> int:
        """A byte of a weight blob, every byte of the weights equally likely."""
        if image is None or not image.tensors:
            raise McugptError("--inject flash-stuck: the image has no weight blobs to choose an address in")
        total = sum(t["size"] for t in image.tensors)
        k = self.rng.randrange(total)
        for t in image.tensors:
            if k < t["size"]:
                return t["offset"] + k
            k -= t["size"]
        raise AssertionError("unreachable")

    def _hit(self, kind, inj, number, addr, length, bit, where, bus="flash") -> None:
        trace, clock = self.board.trace, self.board.clock
        self.hits.append(Hit(kind, inj.text, number, addr, length, bit, where, trace.current,
                             trace.positions[-1] if trace.positions else None, clock.sync(),
                             len(trace.crc_retries), bus))

    # -- the board's hooks -----------------------------------------------------------

    def apply(self, addr: int, data: bytes) -> bytes:
        """SpiNorFlash.read: the bytes of read number self.flash_reads, as the faulty flash
        returns them."""
        self.flash_reads += 1
        n, out = self.flash_reads, None
        for inj in self.injections:
            if inj.kind == "flash-dead" and n >= inj.n:
                if self.dead_from is None:
                    self.dead_from = n
                    self._hit("flash-dead", inj, n, addr, len(data), None, image_region(self.board.image, addr))
                return b"\xff" * len(data)
        for inj, at, bit in self.stuck:
            if addr <= at < addr + len(data):
                out = bytearray(data if out is None else out)
                out[at - addr] ^= 1 << bit
                self._hit("flash-stuck", inj, n, at, len(data), bit, image_region(self.board.image, at))
        for inj in self.injections:
            if inj.kind == "flash-flip" and (n == inj.n if inj.rate is None else self.rng.random() < inj.rate):
                at, bit = addr + self.rng.randrange(len(data)), self.rng.randrange(8)
                out = bytearray(data if out is None else out)
                out[at - addr] ^= 1 << bit
                self._hit("flash-flip", inj, n, at, len(data), bit, image_region(self.board.image, at))
        return data if out is None else bytes(out)

    def dma_hangs(self, bus: str, command: str, addr: int, length: int) -> bool:
        """A controller started a transfer: True if it must never complete."""
        self.dma_transfers += 1
        for inj in self.injections:
            if inj.kind == "dma-hang" and self.dma_transfers == inj.n:
                where = (image_region(self.board.image, addr) if bus == "flash" else
                         {"region": self.board.psram_label(addr), "tensor": None})
                self._hit("dma-hang", inj, self.dma_transfers, addr, length, None, where, bus)
                return True
        return False

    def psram_read(self, addr: int, data: bytes) -> bytes:
        self.psram_reads += 1
        n, out = self.psram_reads, None
        for inj in self.injections:
            if inj.kind == "psram-flip" and (n == inj.n if inj.rate is None else self.rng.random() < inj.rate):
                at, bit = addr + self.rng.randrange(len(data)), self.rng.randrange(8)
                out = bytearray(data if out is None else out)
                out[at - addr] ^= 1 << bit
                self._hit("psram-flip", inj, n, at, len(data), bit, {"region": self.board.psram_label(at), "tensor": None},
                          "psram")
        return data if out is None else bytes(out)

    # -- after the run -------------------------------------------------------------

    def outcomes(self, result, error: str | None = None) -> list[dict]:
        """Each hit, and what became of it: "retried" (a check failed, the read was read again
        and the run went on), "fault" (the run stopped: `error`, its one line), "unchecked"
        (a byte the firmware never checks after boot, and why it cannot change a token), or
        "undetected". Then each injection that never hit ("not hit")."""
        board = self.board
        retries = list(result.crc_retries) if result is not None else []
        out = []
        for k, h in enumerate(self.hits):
            nxt = self.hits[k + 1].retries_before if k + 1 < len(self.hits) else len(retries)
            retried = retries[h.retries_before:nxt][:1]
            entry = {"fault": h.injection, "kind": h.kind, "bus": h.bus, "number": h.number,
                     "address": h.address, "length": h.length, "bit": h.bit,
                     "what": describe(h.where, field=h.kind != "dma-hang"),
                     "tensor": h.where.get("tensor"),
                     "stage": None if h.stage is None else board.stage_label(h.stage),
                     "position": h.position, "device_s": h.ns * 1e-9}
            if error is not None and k == len(self.hits) - 1:
                entry["handled"], entry["detail"] = "fault", error
            elif retried:
                entry["handled"], entry["detail"] = "retried", f"failed its check, read again: {retried[0]}"
            elif h.bus == "flash" and unchecked_why(h.where):
                entry["handled"], entry["detail"] = "unchecked", "not checked: " + unchecked_why(h.where)
            else:
                entry["handled"], entry["detail"] = "undetected", "no check failed"
            out.append(entry)
        hit = {h.injection for h in self.hits}
        for inj in self.injections:
            if inj.text not in hit:
                out.append({"fault": inj.text, "kind": inj.kind, "handled": "not hit",
                            "detail": self._why_not_hit(inj)})
        return out

    def _why_not_hit(self, inj: Injection) -> str:
        if inj.kind == "flash-stuck":
            addr = next(a for i, a, _ in self.stuck if i is inj)
            return (f"no read covered flash 0x{addr:08x} "
                    f"({describe(image_region(self.board.image, addr)) if self.board else 'flash'})")
        count = {"flash-flip": ("flash reads", self.flash_reads), "flash-dead": ("flash reads", self.flash_reads),
                 "dma-hang": ("DMA transfers", self.dma_transfers),
                 "psram-flip": ("PSRAM reads", self.psram_reads)}[inj.kind]
        if inj.rate is not None:
            return f"no read was picked at rate {inj.rate:g} among the run's {count[1]:,} {count[0]}"
        return f"the run made {count[1]:,} {count[0]}, fewer than {inj.n:,}"


def cause(hit: dict) -> str:
    """What hit and where, in a few words: 'flash-dead@40: the flash stopped answering at read 40
    (...): every read since returns 0xFF, position 0, stage h0.mlp'."""
    kind = hit["kind"]
    if kind == "flash-dead":
        what = (f"the flash stopped answering at read {hit['number']:,} ({hit['what']} at 0x{hit['address']:08x}): "
                f"every read since returns 0xFF")
    elif kind == "dma-hang":
        what = (f"{hit['bus']} DMA transfer {hit['number']:,} ({hit['length']:,} bytes at 0x{hit['address']:08x}) "
                f"never completed")
    else:
        what = (f"{hit['bus']} read {hit['number']:,}: bit {hit['bit']} of 0x{hit['address']:08x} "
                f"({hit['what']}) {'stuck' if kind == 'flash-stuck' else 'flipped'}")
    where = "at boot" if hit["position"] is None else f"position {hit['position']}" + (
        f", stage {hit['stage']}" if hit["stage"] else "")
    return f"{hit['fault']}: {what}, {where}"


def summary(hit: dict) -> str:
    """One line for a hit and what became of it, for the run's text summary."""
    if hit["handled"] == "not hit":
        return f"{hit['fault']}: not hit ({hit['detail']})"
    if hit["handled"] == "fault":
        return f"{cause(hit)}; the run stopped: {hit['detail']}"
    return f"{cause(hit)}; {hit['handled']} ({hit['detail']})"
