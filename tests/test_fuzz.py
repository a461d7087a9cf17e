"""The fuzz campaign (mcugpt/fuzz.py, `mcugpt fuzz`): what each outcome is called, the image
editor that seals CRCs again, the cases' reproducibility, and the campaign itself: at CI size
no case may end in a traceback, a hang, a signal or a silently different answer."""

import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib

import pytest
from conftest import REPO, mcugpt

from mcugpt import fuzz
from mcugpt.cli import build_parser
from target.errors import McugptError
from target.flash_layout import HEADER, HEADER_CRC_SPAN, read_image, tensor_array

# ----------------------------------------------------------------------------
# the classes of an outcome


@pytest.mark.parametrize("returncode, stdout, stderr, timed_out, expected", [
    (1, b"", b"mcugpt: error: flash.img: truncated: 5 bytes\n", False, "clean_error"),
    (2, b"", b"mcugpt: error: argument --ram: 'lots' is not a size\n", False, "clean_error"),
    (130, b"", b"mcugpt: interrupted\n", False, "clean_error"),
    # a message may quote a user's line separator and still be one line on a terminal
    (1, b"", "mcugpt: error: the prompt 'a\u2028b' is too long\n".encode(), False, "clean_error"),
    (1, b"", b"Traceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'n_layer'\n", False,
     "traceback"),
    (0, b"Traceback (most recent call last):\n", b"", False, "traceback"),     # printed, then exit 0
    (1, b"", b"mcugpt: error: one\nand a second line\n", False, "traceback"),
    (2, b"", b"usage: mcugpt compile [-h]\nmcugpt compile: error: argument --ram\n", False, "traceback"),
    (1, b"", b"ValueError: not a number\n", False, "traceback"),
    # a long command's progress lines, then its error
    (1, b"", b"boards x dtypes 1/6: sim64 fp32\nmcugpt: error: out of disk\n", False, "clean_error"),
    (1, b"", b"boards x dtypes 1/6: sim64 fp32\nValueError: x\n", False, "traceback"),
    (1, b"", b"", False, "traceback"),                                           # silent failure
    (3, b"", b"mcugpt: error: x\n", False, "traceback"),                        # no such exit code
    (None, b"", b"", True, "hang"),
    (-11, b"", b"", False, "signal"),
    (-9, b"", b"", False, "signal"),
])
def test_each_outcome_has_one_class(returncode, stdout, stderr, timed_out, expected):
    assert fuzz.classify(returncode, stdout, stderr, timed_out).cls == expected


def test_exit_0_is_same_or_different_by_the_answer():
    answer = json.dumps({"tokens": [1, 2], "text": "ab"}).encode()
    same = lambda out: fuzz._answer(out) == ([1, 2], "ab")
    assert fuzz.classify(0, answer, b"", same=same).cls == "exit0_same"
    assert fuzz.classify(0, answer.replace(b"2]", b"3]"), b"", same=same).cls == "exit0_different"
    assert fuzz.classify(0, b"not json", b"", same=same).cls == "exit0_different"
    assert fuzz.classify(0, b"anything", b"a warning\nover lines\n").cls == "exit0_same"   # nothing to compare


def test_a_case_takes_its_worst_commands_class():
    o = lambda cls: fuzz.Outcome(cls, None, "")
    assert fuzz.worst([o("exit0_same"), o("clean_error")]).cls == "clean_error"
    assert fuzz.worst([o("clean_error"), o("exit0_different")]).cls == "exit0_different"
    assert fuzz.worst([o("hang"), o("traceback"), o("exit0_same")]).cls == "traceback"


def test_the_report_counts_each_class_and_gives_each_failing_case_a_reproducer(tmp_path):
    def command(cls, first_line, why=""):
        return {"command": "mcugpt inspect flash.img", "class": cls, "returncode": 1, "first_line": first_line,
                "why": why, "wall_s": 0.5}
    results = [fuzz.Result("images", 3, "flip bit(s) 0x10.2", "traceback",
                           [command("clean_error", "mcugpt: error: x"), command("traceback", "KeyError: 'n'", "Traceback")]),
               fuzz.Result("cli", 0, "mcugpt inspect flash.img", "clean_error", [command("clean_error", "mcugpt: error: y")])]
    rep = fuzz.report(results, 7, {"images": 1, "checkpoints": 0, "cli": 1}, 1.0, tmp_path)
    assert rep["campaigns"]["images"]["traceback"] == 1 and rep["campaigns"]["cli"]["clean_error"] == 1
    assert "checkpoints" not in rep["campaigns"]
    assert rep["failures"] == [{"case": "images:3", "class": "traceback", "what": "flip bit(s) 0x10.2",
                                "command": "mcugpt inspect flash.img", "first_line": "KeyError: 'n'", "why": "Traceback",
                                "reproduce": f"mcugpt fuzz --seed 7 --only images:3 --out {tmp_path}"}]
    text = fuzz.summary(rep)
    assert "images:3  traceback: Traceback" in text and "stderr:  KeyError: 'n'" in text
    assert f"again:   mcugpt fuzz --seed 7 --only images:3 --out {tmp_path}" in text


# ----------------------------------------------------------------------------
# editing an image's fields, every CRC sealed again


@pytest.fixture
def image(tiny_build, tmp_path):
    path = tmp_path / "flash.img"
    shutil.copy(tiny_build.out_dir / "flash.img", path)
    return path


def changed(a: bytes, b: bytes) -> set:
    return {i for i in range(min(len(a), len(b))) if a[i] != b[i]}


def word(offset: int) -> set:
    return set(range(offset, offset + 4))


def test_a_sealed_weight_edit_passes_every_crc_and_changes_only_the_value_and_the_crcs(image):
    clean = image.read_bytes()
    index = next(i for i, t in enumerate(read_image(image).tensors) if t["name"] == "h.0.mlp.c_fc.weight")
    img = bytearray(clean)
    fuzz.edit_weights(img, index, 70, struct.pack("<f", 0.25))
    image.write_bytes(img)

    edited = read_image(image, verify_weights=True)       # raises on any CRC mismatch
    assert tensor_array(image, edited, index).flat[70] == 0.25
    blob = edited.tensors[index]["offset"]
    assert changed(clean, img) <= (word(blob + 4 * 70) | word(fuzz.field_offset(img, "tensor", index, "crc"))
                                   | word(HEADER.offset_of("tables_crc")) | word(HEADER_CRC_SPAN))
    assert word(blob + 4 * 70) & changed(clean, img)


@pytest.mark.parametrize("section, index, name, value, crcs", [
    ("stage", 3, "macs", 12345, ("tables_crc", "header_crc")),
    ("header", 0, "plan_id", 0x1234ABCD, ("header_crc",)),
])
def test_a_sealed_field_edit_passes_every_crc_and_changes_only_the_field_and_the_crcs(image, section, index, name,
                                                                                       value, crcs):
    clean = image.read_bytes()
    img = bytearray(clean)
    fuzz.edit_field(img, section, index, name, value)
    image.write_bytes(img)

    edited = read_image(image, verify_weights=True)
    assert (edited.stages[index] if section == "stage" else edited.header)[name] == value
    at = fuzz.field_offset(img, section, index, name)
    assert changed(clean, img) & word(at)
    assert changed(clean, img) <= word(at) | set().union(*(word(HEADER.offset_of(c)) for c in crcs))


def test_the_same_edit_unsealed_is_refused_and_an_edited_crc_is_kept(image):
    clean = image.read_bytes()
    img = bytearray(clean)
    struct.pack_into("<I", img, fuzz.field_offset(img, "stage", 3, "macs"), 12345)
    image.write_bytes(img)
    with pytest.raises(McugptError, match="tables section .* CRC32 mismatch"):
        read_image(image)
    img = bytearray(clean)
    fuzz.edit_field(img, "header", 0, "tables_crc", 7)   # the header sealed over the wrong CRC
    image.write_bytes(img)
    assert struct.unpack_from("<I", img, HEADER.offset_of("tables_crc"))[0] == 7
    assert zlib.crc32(img[:HEADER_CRC_SPAN]) == struct.unpack_from("<I", img, HEADER_CRC_SPAN)[0]
    with pytest.raises(McugptError, match=r"tables section .* \(stored 0x00000007"):
        read_image(image)


# ----------------------------------------------------------------------------
# cases: reproducible from (seed, campaign, index), and drawn from the parser


def test_an_image_mutation_is_the_same_every_time_from_its_seed(image):
    clean = image.read_bytes()
    for index in range(20):
        a = fuzz.mutate_image(fuzz._rng(7, "images", index), bytearray(clean))
        b = fuzz.mutate_image(fuzz._rng(7, "images", index), bytearray(clean))
        assert a == b
    kinds = {fuzz.mutate_image(fuzz._rng(7, "images", i), bytearray(clean))[1].split(" ")[0] for i in range(200)}
    # random damage and sealed edits of every section: header, stage, tensor, token table, weights
    assert {"flip", "truncated", "extended", "header", "stage", "tensor", "token"} <= kinds


def test_a_checkpoint_mutation_is_the_same_every_time_from_its_seed(tmp_path):
    whats = []
    for run in ("a", "b"):
        whats.append(fuzz.mutate_checkpoint(fuzz._rng(3, "checkpoints", 5), tmp_path / run))
    assert whats[0] == whats[1]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())


def test_command_lines_come_from_the_parser_so_every_option_is_drawn(tmp_path):
    ctx = fuzz.Context(tmp_path, 0, 60.0, build=tmp_path / "build", image=tmp_path / "build" / "flash.img",
                       checkpoint=tmp_path / "checkpoint")
    seen = set()
    for index in range(1500):
        args = fuzz.cli_arguments(fuzz._rng(0, "cli", index), ctx)
        seen |= {(args[0], a) for a in args[1:] if isinstance(a, str) and a.startswith("--")}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    options = {(name, a.option_strings[-1]) for name, p in sub.choices.items() if name != "fuzz"
               for a in p._actions if a.option_strings and a.dest != "help"}
    assert options - seen == set()


def test_the_fuzz_command_refuses_bad_sizes_in_one_line(tmp_path):
    for args, message in [(["--images", "-1"], "--images -1: must be at least 0"),
                          (["--jobs", "0"], "--jobs 0: must be at least 1"),
                          (["--timeout", "nan"], "--timeout nan: must be a positive number of seconds"),
                          (["--only", "images"], "--only images: give CAMPAIGN:INDEX"),
                          (["--out", "/dev/null"], "--out /dev/null: cannot make the folder (File exists)")]:
        proc = mcugpt("fuzz", "--out", tmp_path, *args)
        assert proc.returncode == 1 and proc.stderr == f"mcugpt: error: {message}" + (
            ", CAMPAIGN one of images, checkpoints, cli\n" if "--only" in args else "\n")
    assert not (tmp_path / "build").exists()    # refused before any work


def test_only_runs_the_named_cases_again_and_keeps_their_files(tmp_path):
    proc = mcugpt("fuzz", "--seed", 5, "--only", "images:3", "--only", "cli:2", "--out", tmp_path, "--json")
    rep = json.loads(proc.stdout)
    assert [(c["campaign"], c["index"]) for c in rep["cases"]] == [("images", 3), ("cli", 2)]
    clean = bytearray((tmp_path / "build" / "flash.img").read_bytes())
    image, what = fuzz.mutate_image(fuzz._rng(5, "images", 3), clean)
    assert rep["cases"][0]["what"] == what
    assert (tmp_path / "cases" / "images-3" / "build" / "flash.img").read_bytes() == image
    assert (tmp_path / "cases" / "cli-2" / "file").is_file()


# ----------------------------------------------------------------------------
# the fork server: a command forked from it ends as the same command in a fresh process


def test_a_forked_command_ends_exactly_as_a_fresh_process_would(tmp_path, image, tiny_build):
    fresh = []
    for args in (["inspect", image], ["inspect", tmp_path / "nowhere.img"], ["compile", "--ram", "lots"],
                 ["inspect", "--json", b"\xff\xfe"], ["reference", "--model", "tiny", "--prompt", "Hi",
                                                         "--tokens", "2", "--json"]):
        fresh.append((args, fuzz.execute(args, tmp_path, 120)))
    io = tmp_path / "io"
    io.mkdir()
    server = fuzz.ForkServer(None)
    try:
        for args, want in fresh:
            got = server.execute(args, tmp_path, 120, io)
            assert got == want, fuzz.shown(args)
        assert {w[0] for _, w in fresh} == {0, 1, 2}
        # a command still running at its timeout is killed (a board halted for a debugger)
        t0 = time.time()
        port = 20000 + os.getpid() % 20000
        rc, out, err, timed_out = server.execute(["run", "--build", tiny_build.out_dir, "--prompt", "Hi",
                                                  "--gdb", str(port)], tmp_path, 3, io)
        assert (rc, timed_out) == (None, True) and time.time() - t0 < 30
    finally:
        server.close()
    assert list(io.iterdir()) == []     # every command's output was read and removed


# ----------------------------------------------------------------------------
# the campaign


def campaign(tmp_path, images, checkpoints, cli, seed=0):
    # no timeout of its own: every case has one (the slow size takes longer than conftest's)
    proc = subprocess.run([sys.executable, "-m", "mcugpt.cli", "fuzz", "--seed", str(seed), "--images", str(images),
                           "--checkpoints", str(checkpoints), "--cli", str(cli), "--out", str(tmp_path), "--json"],
                          check=False, capture_output=True, text=True, cwd=REPO)
    rep = json.loads(proc.stdout)
    return proc, rep


def failures(rep) -> str:
    return "\n".join(f"{f['case']} {f['class']} ({f['why']}): {f['what']}"
                     + (f"\n    {f['command']}" if f["command"] != f["what"] else "") + f"\n    {f['first_line']}"
                     for f in rep["failures"])


def test_no_case_ends_in_a_traceback_a_hang_a_signal_or_a_different_answer(tmp_path):
    """`mcugpt fuzz`'s default size, about a minute on a 2-core machine. The long campaign is
    `make fuzz` (docs/reliability.md)."""
    proc, rep = campaign(tmp_path, images=300, checkpoints=50, cli=100)
    assert {c: n["cases"] for c, n in rep["campaigns"].items()} == {"images": 300, "checkpoints": 50, "cli": 100}
    assert not rep["failures"], failures(rep)
    assert proc.returncode == 0
