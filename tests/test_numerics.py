"""compiler/numerics.py against the firmware's C, bit for bit: no tolerance anywhere.

First each function against its C kernel compiled for the host (tests/kernels_host.py:
runtime_c/ with -ffp-contract=off, the float32 results of the Cortex-M7): expf and tanhf
over sweeps of the float32 line, the dot products and matrix-vector products of GPT-2's
shapes, layer norm, GELU, softmax, attention, the sampler. Then the whole firmware, built
as a host program, against compiler/reference.py: its dumped logits are np.array_equal to
the reference's, fp32 and int8, greedy and sampled.

A failure here means runtime_c/ and numerics.py no longer perform the same float32
operations in the same order: mirror the C change in numerics.py.

MCUGPT_EXHAUSTIVE=1 also runs expf and tanhf on all 2^32 float32 inputs (~4 min each).
"""

import os

import numpy as np
import pytest

from compiler import numerics as nx
from compiler.config import load_preset
from compiler.firmware import build
from compiler.pipeline import compile_model
from compiler.reference import Reference, generate
from compiler.sampler import Prng, Sampling, choose
from compiler.weights import synthetic_weights

try:
    from . import kernels_host as kh
except ImportError:
    import kernels_host as kh
from test_runtime_host import PROMPT, run_host

f32 = np.float32


def differ(a, b) -> np.ndarray:
    """Where float32 arrays a and b differ in their bits (so +0 != -0), except that a NaN
    equals any NaN: which NaN payload survives an operation on two NaNs is up to the
    compiler (it may swap the operands of a + b) and the FPU, and nothing reads it."""
    a, b = np.asarray(a, f32), np.asarray(b, f32)
    return (a.view(np.uint32) != b.view(np.uint32)) & ~(np.isnan(a) & np.isnan(b))


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, f32), np.asarray(b, f32)
    return a.shape == b.shape and not differ(a, b).any()


def assert_same_bits(got, want, inputs=None):
    got, want = np.asarray(got, f32), np.asarray(want, f32)
    assert got.shape == want.shape, (got.shape, want.shape)
    bad = np.flatnonzero(differ(got, want))
    if bad.size:
        i = bad[0]
        at = "" if inputs is None else f" at input {np.asarray(inputs).reshape(-1)[i]!r}"
        raise AssertionError(f"{bad.size} of {got.size} values differ; first{at}: "
                             f"numerics {got.reshape(-1)[i]!r}, C {want.reshape(-1)[i]!r}")


def floats_from_bits(lo, hi, stride=1):
    """Every stride-th float32 whose bit pattern is in [lo, hi]."""
    return np.arange(lo, hi + 1, stride, dtype=np.uint64).astype(np.uint32).view(f32)


def bits(x):
    return int(np.array(x, dtype=f32).view(np.uint32))


def around(x, n=3000):
    """The n floats on each side of x (bit patterns)."""
    b = bits(x)
    return np.arange(b - n, b + n + 1, dtype=np.int64).astype(np.uint32).view(f32)


# ----------------------------------------------------------------------------
# scalar math: mathf.c


def test_constants_have_the_bits_of_the_c_literals():
    # what gcc makes of mathf.c's and kernels.c's literals (decimal straight to float32;
    # numpy goes through a double, which could round differently: for these it does not)
    got = [nx.LOG2E, nx.LN2_HI, nx.LN2_LO, nx.EXP_MAX, nx.EXP_MIN, *nx.EXP_TAYLOR,
           nx.TANH_TINY, nx.TANH_POLY, nx.TANH_SAT, *nx.TANH_P,
           nx.GELU_SQRT_2_OVER_PI, nx.GELU_CUBIC]
    want = [0x3FB8AA3B, 0x3F317200, 0x35BFBE8E, 0x42B17217, 0xC2D00000,
            0x39500D01, 0x3AB60B61, 0x3C088889, 0x3D2AAAAB, 0x3E2AAAAB,   # 1/7! .. 1/3!
            0x39800000, 0x3F0CCCCD, 0x4111999A,
            0x3B1D32D4, 0xBC09E5AD, 0x3CB273CD, 0xBD5D04F2, 0x3E08886F, 0xBEAAAAAA,
            0x3F4C422A, 0x3D372713]
    assert [hex(bits(c)) for c in got] == [hex(w) for w in want]


def _special_inputs():
    return np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1.0, -1.0,
                     np.finfo(f32).max, -np.finfo(f32).max, np.finfo(f32).tiny], dtype=f32)


def test_expf_sweep():
    # GPT-2 calls exp on x - max <= 0 (softmax) and (v - v0) / T <= 0 (sampling): every
    # 3rd float of [-104, -1], every 61st of [-1, 0] (a billion floats, most of them tiny),
    # plus a stride over the whole line and the switches of mathf.c (the clamps, where 2^k
    # stops being normal, the rounding of k)
    x = np.concatenate([
        floats_from_bits(bits(-1.0), bits(-104.0), 3),
        floats_from_bits(0x80000000, bits(-1.0), 61),
        floats_from_bits(0, 0xFFFFFFFF, 1021),
        *(around(v) for v in (-104.0, 88.72283, 88.0, -87.33654, -87.0, -88.0, -100.0, -103.9,
                              0.34657359, -0.34657359, 0.0, -0.0)),
        np.random.default_rng(0).uniform(-110, 90, 1_000_000).astype(f32),
        _special_inputs(),
    ])
    assert_same_bits(nx.expf(x), kh.expf(x), x)


def test_tanhf_sweep():
    # GELU's argument u spans the whole line (|u| < 9.1 matters; beyond, tanh is +-1): every
    # 5th float of |x| < 9.1 down to 2^-12, a stride over the whole line, the switches
    # between mathf.c's formulas (2^-12, 0.55, 9.1) on both sides of 0
    pos = floats_from_bits(bits(2.0**-12), bits(9.1), 5)
    x = np.concatenate([
        pos, -pos,
        floats_from_bits(0, 0xFFFFFFFF, 1021),
        *(around(s * v) for v in (2.0**-12, 0.55, 9.1, 1.0) for s in (1.0, -1.0)),
        around(0.0), around(-0.0),
        _special_inputs(),
    ])
    assert_same_bits(nx.tanhf(x), kh.tanhf(x), x)


@pytest.mark.skipif(not os.environ.get("MCUGPT_EXHAUSTIVE"), reason="set MCUGPT_EXHAUSTIVE=1 (~4 min each)")
@pytest.mark.parametrize("name", ["expf", "tanhf"])
def test_exhaustive_over_all_float32(name):
    ours, theirs = getattr(nx, name), getattr(kh, name)
    step = 1 << 24
    for lo in range(0, 1 << 32, step):
        x = floats_from_bits(lo, lo + step - 1)
        assert_same_bits(ours(x), theirs(x), x)


def test_sqrtf():
    u = np.random.default_rng(2).integers(0, 0xFFFFFFFF, 1_000_000, dtype=np.uint32)
    x = np.concatenate([u.view(f32), _special_inputs(), np.arange(1, 5000, dtype=f32)])
    assert_same_bits(nx.sqrtf(x), kh.sqrtf(x), x)


# ----------------------------------------------------------------------------
# sums and products


def test_seq_sum_is_sequential_float32():
    # a sum whose value depends on the order: 1 + many halves of an ulp of 1
    v = np.concatenate([[f32(1.0)], np.full(1000, f32(2.0**-24)), [f32(-1.0)], np.full(7, f32(3e-8))])
    s = f32(0.0)
    for x in v:
        s = f32(s + x)
    assert same_bits(nx.seq_sum(v), s)
    assert not same_bits(s, np.float64(v.astype(np.float64).sum()).astype(f32))  # the order shows
    # along an axis, each row on its own; signed zeros as C's s = +0.0f; s += ...
    rows = np.stack([v, v[::-1], np.full(v.size, -0.0, f32)])
    assert_same_bits(nx.seq_sum(rows, axis=1), [s, nx.seq_sum(v[::-1]), 0.0])
    assert same_bits(nx.seq_sum(np.zeros(0, f32)), 0.0)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 63, 64, 767, 768, 3072])
def test_dot(n):
    rng = np.random.default_rng(n)
    a, b = rng.standard_normal((2, n)).astype(f32)
    assert same_bits(nx.dot(a, b), kh.vec_dot(a, b))
    # cancellation: the order of the partial sums decides the last bits
    a = (rng.standard_normal(n) * np.exp2(rng.integers(-20, 20, n))).astype(f32)
    assert same_bits(nx.dot(a, b), kh.vec_dot(a, b))


# (rows, cols): GPT-2's qkv, proj, fc, mlp proj, the head (wte), and short/odd rows
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50257, 768), (1, 1), (3, 5),
          (7, 3), (5, 1023)]


@pytest.mark.parametrize("rows, cols", SHAPES)
def test_matvec_both_layouts(rows, cols):
    rng = np.random.default_rng(rows + cols)
    w = (rng.standard_normal((rows, cols)) * 0.1).astype(f32)   # [out, in], the firmware's
    x = rng.standard_normal(cols).astype(f32)
    b = rng.standard_normal(rows).astype(f32)
    y = kh.matvec_rows(w, x, b)
    assert_same_bits(nx.matvec_rows(w, x, b), y)
    assert_same_bits(nx.matvec_rows(w, x), kh.matvec_rows(w, x))
    if rows * cols < 10_000_000:   # the head is the reference's only [out, in] product
        assert_same_bits(nx.matvec(x, np.ascontiguousarray(w.T), b), y)   # [in, out], Hugging Face's


def test_matvec_signed_zeros_and_infinities():
    # all products -0: vec_dot starts from +0, so the result is +0 (a cumsum would give -0)
    w = -np.ones((6, 9), f32)
    x = np.zeros(9, f32)
    assert_same_bits(nx.matvec_rows(w, x), kh.matvec_rows(w, x))
    assert_same_bits(nx.matvec(x, np.ascontiguousarray(w.T)), kh.matvec_rows(w, x))
    w[1, 3], w[2, 4], w[3, 0] = np.inf, -np.inf, np.nan
    x[:] = 1.0
    assert_same_bits(nx.matvec_rows(w, x, -w[:, 0]), kh.matvec_rows(w, x, -w[:, 0]))


# ----------------------------------------------------------------------------
# vector kernels


@pytest.mark.parametrize("n", [1, 2, 5, 64, 768, 1024, 1600])
def test_layernorm(n):
    rng = np.random.default_rng(n)
    g, b = rng.standard_normal((2, n)).astype(f32)
    for x in (rng.standard_normal(n) * 3 + 1, 50 + 0.1 * rng.standard_normal(n),
              rng.standard_normal(n) * np.exp2(rng.integers(-10, 10, n))):
        x = x.astype(f32)
        assert_same_bits(nx.layernorm(x, g, b, f32(1e-5)), kh.layernorm(x, g, b, 1e-5))


def test_gelu():
    # every float32 in [-0.5, 0.5] (u in the polynomial part of tanh) would be 2e9 values:
    # a stride over [-12, 12] covers every branch of tanh(u) densely, plus the tails
    x = np.concatenate([floats_from_bits(0, bits(12.0), 101), floats_from_bits(0x80000000, bits(-12.0), 101),
                        np.linspace(-1e4, 1e4, 100_001, dtype=f32), _special_inputs()[:4]])
    with np.errstate(over="ignore", invalid="ignore"):
        assert_same_bits(nx.gelu_tanh(x), kh.gelu_tanh(x), x)


@pytest.mark.parametrize("n", [1, 2, 3, 50, 128, 1024])
def test_softmax(n):
    rng = np.random.default_rng(n)
    for scale in (0.1, 5.0, 40.0):
        x = (rng.standard_normal(n) * scale).astype(f32)
        assert_same_bits(nx.softmax(x), kh.softmax(x))
    x = np.array([1000.0, 999.0, -np.inf, 1000.0, -1e30], f32)
    assert_same_bits(nx.softmax(x), kh.softmax(x))
    # along an axis: every column independently, as the reference softmaxes each head
    m = (rng.standard_normal((n, 5)) * 5).astype(f32)
    want = np.stack([kh.softmax(m[:, j]) for j in range(5)], axis=1)
    assert_same_bits(nx.softmax(m, axis=0), want)


def test_residual_add():
    a, b = np.random.default_rng(4).standard_normal((2, 777)).astype(f32)
    assert_same_bits(nx.add(a, b), kh.add_inplace(a, b))


@pytest.mark.parametrize("n_pos", [1, 2, 17, 128, 1024])
@pytest.mark.parametrize("n_head, head_dim", [(12, 64), (4, 16), (3, 5)])
def test_attention_every_head(n_pos, n_head, head_dim):
    n_embd = n_head * head_dim
    rng = np.random.default_rng(n_pos + n_embd)
    keys = (rng.standard_normal((n_pos, n_embd)) * 2).astype(f32)
    values = rng.standard_normal((n_pos, n_embd)).astype(f32)
    q = (rng.standard_normal(n_embd) * 2).astype(f32)
    want = np.concatenate([kh.attention_head(q[h * head_dim:(h + 1) * head_dim], keys, values, n_pos,
                                             head_offset=h * head_dim) for h in range(n_head)])
    assert_same_bits(nx.attention(q, keys, values, n_head), want)


# ----------------------------------------------------------------------------
# sampling: sampler.choose against prng.c's sample_topk


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (5, 0.7), (40, 0.9), (128, 1.3), (128, 0.05)])
def test_sampler_draws_what_sample_topk_draws(k, temperature):
    rng = np.random.default_rng(k)
    # many near-equal logits: the weights' last bits decide some of the draws
    logits = (rng.standard_normal(5000) * 0.5).astype(f32)
    t = kh.topk_new(k)
    kh.topk_push(t, logits, 0)
    sampling = Sampling(temperature, k)
    for seed in range(200):
        c = kh.Prng(seed)
        py = Prng(seed)
        assert choose(logits, sampling, py) == c.sample_topk(t, temperature), seed
        assert py.state == c.state


# ----------------------------------------------------------------------------
# the whole firmware, built for the host, against the reference


def _firmware(tmp_path_factory, model, dtype):
    out = tmp_path_factory.mktemp(f"{model}_{dtype}")
    compiled = compile_model(model, out, quiet=True, cc=None, dtype=dtype)
    return build(out, compiled.plan, cc="host"), out / "flash.img", compiled


@pytest.fixture(scope="module")
def prompt(tok):
    return tok.encode(PROMPT)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def tiny_firmware(request, tmp_path_factory):
    return request.param, _firmware(tmp_path_factory, "tiny", request.param)


def assert_logits_equal(run, ref):
    assert run.tokens == ref.tokens
    want = np.array(ref.logits, dtype=f32)
    assert run.logits.shape == want.shape
    for step, (got, expected) in enumerate(zip(run.logits, want)):
        bad = np.flatnonzero(differ(got, expected))
        assert bad.size == 0, (f"step {step}: {bad.size} logits differ, e.g. id {bad[0]}: firmware "
                               f"{got[bad[0]]!r}, reference {expected[bad[0]]!r}")


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.9, top_k=40, seed=7),
                                      Sampling(temperature=1.3, top_k=128, seed=2026)],
                         ids=["greedy", "top40-t0.9", "top128-t1.3"])
def test_tiny_firmware_logits_equal_the_reference(sampling, tiny_firmware, tiny, prompt, tmp_path):
    dtype, (binary, image, compiled) = tiny_firmware
    cfg, w = tiny
    n_new = 12
    ref = generate(Reference(cfg, w, dtype), prompt, n_new, sampling, n_ctx=compiled.plan.ctx,
                   keep_logits=True)
    run = run_host(binary, image, prompt, n_new, None if sampling.greedy else sampling, dump_dir=tmp_path)
    assert run.code == 0, run.stderr[-2000:]
    assert_logits_equal(run, ref)


@pytest.mark.parametrize("dtype", ["int8", "fp32"])
def test_distilgpt2_firmware_logits_equal_the_reference(dtype, tmp_path_factory, prompt):
    binary, image, compiled = _firmware(tmp_path_factory, "distilgpt2", dtype)
    out = image.parent
    run = run_host(binary, image, prompt[:5], 3, dump_dir=out)
    image.unlink()   # 313 MiB in fp32
    cfg = load_preset("distilgpt2")
    ref = generate(Reference(cfg, synthetic_weights(cfg, 0), dtype), prompt[:5], 3, Sampling(),
                   n_ctx=compiled.plan.ctx, keep_logits=True)
    assert run.code == 0, run.stderr[-2000:]
    assert_logits_equal(run, ref)
