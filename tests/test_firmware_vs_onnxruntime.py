"""The firmware on the emulated board computes what onnxruntime computes from the exported ONNX
graph: an implementation that shares no code with the firmware or with compiler/reference.py.

test_board_tokens.py shows the board equals the numpy reference bit for bit; that reference
was written to mirror runtime_c/ operation for operation, so the two could share a mistake.
Here the board is compared with onnxruntime running the build's model.onnx (standard operators:
LayerNormalization, Gelu(tanh), Softmax, MatMul, Gemm; onnxruntime's own kernels, summation
order and exp/tanh), on the "tiny" model (2 layers, 64 wide, GPT-2's 50257-token vocabulary).

onnxruntime runs the decode-step graph one position at a time, its present keys/values fed
back as the next step's past, teacher-forced on the prompt and then on the board's own
generated tokens, so both see the same sequence and every logits vector the board dumps has
an onnxruntime counterpart at the same position.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from compiler.firmware import RUNTIME_C, build  # noqa: E402
from compiler.sampler import Sampling  # noqa: E402
from compiler.tokenizer import encode, load_tokenizer  # noqa: E402
from emulator.board import Board  # noqa: E402
from mcugpt.run import Build, run  # noqa: E402

PROMPT = "The quick brown fox jumps over"
N_NEW = 12

# Logits agree when |board - onnxruntime| <= ATOL + RTOL * |onnxruntime| elementwise.
# onnxruntime sums in its own order (blocked MatMul/Gemm, its LayerNormalization and Softmax
# reductions) and uses its own exp and tanh, so the float32 bits differ from the firmware's;
# the values must still agree to float32 rounding. The tiny model's logits are ~4 in
# magnitude, and the measured disagreement is ~2.4e-6 (~40 ulp of 4); 1e-4 + 1e-4 |x|
# (~5e-4 at the largest logits) leaves ~40x headroom over that, while a real error in the
# firmware moves the logits by far more: a GELU constant of 0.04715 instead of 0.044715,
# which leaves the greedy tokens unchanged, moves them by 4e-3 (see the last test).
# The same tolerance as mcugpt.run's LOGIT_ATOL/RTOL and tests/test_onnx_export.py's.
LOGIT_ATOL, LOGIT_RTOL = 1e-4, 1e-4


# -- driving the two implementations ----------------------------------------------------------


@pytest.fixture(scope="module")
def session(tiny_build):
    """onnxruntime on the ONNX graph `mcugpt compile` wrote, CPU provider."""
    return ort.InferenceSession(str(tiny_build.out_dir / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def prompt_tokens():
    return encode(load_tokenizer(), PROMPT)


class OnnxDecoder:
    """The decode-step graph, one token per call at positions 0, 1, 2, ...: inputs token,
    position and past_key_i/past_value_i [n_head, past, head_dim] per layer (empty at
    position 0); outputs logits [1, vocab] and present_key_i/present_value_i
    [n_head, past + 1, head_dim], which become the next call's past."""

    def __init__(self, session, cfg):
        self.session, self.pos = session, 0
        self.past = {f"past_{kind}_{i}": np.zeros((cfg.n_head, 0, cfg.head_dim), np.float32)
                     for i in range(cfg.n_layer) for kind in ("key", "value")}
        self.names = [o.name for o in session.get_outputs()]
        assert self.names[0] == "logits"
        assert set(self.names[1:]) == {n.replace("past_", "present_") for n in self.past}

    def __call__(self, token: int) -> np.ndarray:
        """Logits (vocab,) for `token` at the next position."""
        outs = self.session.run(None, {"token": np.array([token], np.int64),
                                       "position": np.array([self.pos], np.int64), **self.past})
        for name, value in zip(self.names[1:], outs[1:]):
            self.past[name.replace("present_", "past_")] = value
        self.pos += 1
        return outs[0][0]


def onnxruntime_logits(session, cfg, tokens: list[int]) -> list[np.ndarray]:
    """onnxruntime's logits at every position of `tokens`."""
    decode = OnnxDecoder(session, cfg)
    return [decode(t) for t in tokens]


def board_run(built, prompt_tokens, sampling: Sampling, elf: Path | None = None):
    """The firmware (or `elf`) on the board the build was planned for, dumping the logits that
    chose each generated token."""
    out = built.out_dir
    with Board.for_profile(elf or out / "firmware.elf", out / "flash.img", built.plan.profile) as b:
        return b.run(prompt_tokens, N_NEW, temperature=sampling.temperature, top_k=sampling.top_k,
                     seed=sampling.seed, dump_logits=True)


def onnxruntime_at_board_steps(session, cfg, prompt_tokens, board_tokens) -> list[np.ndarray]:
    """onnxruntime's logits at the positions where the board chose its tokens: the last prompt
    position, then each generated token's (teacher-forced on the board's tokens; the last
    generated token is never fed back, on the board or here)."""
    seq = list(prompt_tokens) + list(board_tokens[:-1])
    return onnxruntime_logits(session, cfg, seq)[len(prompt_tokens) - 1:]


def logit_violations(board_logits, ort_logits) -> list[str]:
    """One line per step whose logits fall outside the tolerance."""
    bad = []
    for step, (got, want) in enumerate(zip(board_logits, ort_logits)):
        excess = np.abs(got - want) - (LOGIT_ATOL + LOGIT_RTOL * np.abs(want))
        if not np.all(excess <= 0):   # NaN (a logit not dumped) counts as outside
            v = int(np.nanargmax(excess)) if not np.all(np.isnan(excess)) else 0
            bad.append(f"step {step}: logit[{v}] board {got[v]:.7g}, onnxruntime {want[v]:.7g} "
                       f"(|diff| {abs(got[v] - want[v]):.3g})")
    return bad


# -- the board agrees with onnxruntime --------------------------------------------------------


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.9, top_k=40, seed=5)],
                         ids=["greedy", "sampled"])
def test_board_logits_equal_onnxruntime_at_every_generated_token(sampling, session, tiny_build, prompt_tokens):
    """Each of the board's N_NEW dumped logits vectors agrees with onnxruntime's at the same
    position within ATOL + RTOL |x|. Greedy: each generated token is onnxruntime's argmax
    there, so onnxruntime's own greedy continuation is the board's token for token. Sampled:
    the board's PRNG picks varied tokens, so the logits are checked along a sequence greedy
    decoding would not visit."""
    cfg = tiny_build.cfg
    result = board_run(tiny_build, prompt_tokens, sampling)
    assert len(result.tokens) == len(result.logits) == N_NEW
    want = onnxruntime_at_board_steps(session, cfg, prompt_tokens, result.tokens)
    assert len(want) == N_NEW and all(w.shape == (cfg.vocab_size,) for w in want)

    bad = logit_violations(result.logits, want)
    assert not bad, f"board logits differ from onnxruntime's beyond atol {LOGIT_ATOL}, rtol {LOGIT_RTOL}:\n" + "\n".join(bad)

    if sampling.greedy:
        for step, (token, w) in enumerate(zip(result.tokens, want)):
            # the argmax is well defined: the top two are further apart than the tolerance
            top2 = np.sort(w)[-2:]
            assert top2[1] - top2[0] > 2 * (LOGIT_ATOL + LOGIT_RTOL * abs(top2[1])), f"step {step}: a near tie"
            assert token == int(np.argmax(w)), f"step {step}: board chose {token}, onnxruntime's argmax is {int(np.argmax(w))}"


def test_mcugpt_run_generates_onnxruntimes_greedy_continuation(session, tiny_build):
    """The user's path (mcugpt.run.run: tokenizer, board profile, flash checks) generates the
    tokens onnxruntime generates greedily on its own (no teacher forcing: each argmax is fed
    back as the next token)."""
    report = run(Build.open(tiny_build.out_dir), PROMPT, N_NEW, Sampling(), check=False)
    decode = OnnxDecoder(session, tiny_build.cfg)
    for t in report["prompt_tokens"]:
        logits = decode(t)
    generated = []
    while True:
        generated.append(int(np.argmax(logits)))
        if len(generated) == N_NEW:
            break
        logits = decode(generated[-1])
    assert report["tokens"] == generated


# -- and the comparison has teeth -------------------------------------------------------------


def _firmware_with(built, tmp_path: Path, file: str, old: str, new: str) -> Path:
    """The build's firmware compiled from a copy of runtime_c/ with `old` replaced by `new` in
    `file` (as tests/test_board_tokens.py's _broken_firmware does)."""
    runtime = tmp_path / "runtime_c"
    shutil.copytree(RUNTIME_C, runtime)
    text = (runtime / file).read_text()
    assert old in text, f"{file} no longer contains {old!r}: update this mutation"
    (runtime / file).write_text(text.replace(old, new))
    out = tmp_path / "build"
    shutil.copytree(built.out_dir / "include", out / "include")
    return build(out, built.plan, runtime=runtime)


@pytest.mark.parametrize("file, old, new", [
    ("runtime.c", "add_inplace(X_(p) + m->row, H_(p) + m->row", "(void)(X_(p) + m->row, H_(p) + m->row"),  # skipped residual
    ("kernels.c", "1.0f / mcu_sqrtf((float)head_dim)", "1.0f / (float)head_dim"),  # softmax scale
    ("kernels.c", "0.044715f", "0.04715f"),    # a GELU constant: same greedy tokens, logits off by ~4e-3
], ids=["skipped-residual", "softmax-scale", "gelu-constant"])
def test_a_broken_firmware_falls_outside_the_tolerance(file, old, new, session, tiny_build, prompt_tokens, tmp_path):
    """The tolerance is tight enough to matter: a firmware with a classic bug, compared the same
    way (teacher-forced on its own tokens), has logits outside it."""
    elf = _firmware_with(tiny_build, tmp_path, file, old, new)
    result = board_run(tiny_build, prompt_tokens, Sampling(), elf=elf)
    want = onnxruntime_at_board_steps(session, tiny_build.cfg, prompt_tokens, result.tokens)
    assert logit_violations(result.logits, want)
