"""The firmware's C kernels (runtime_c/), compiled for the host and checked against numpy.

What each kernel must do, in the order a token meets them: the scalar math (exp, tanh,
sqrt), the vector kernels, the running top-k over the vocabulary, the PRNG and sampler;
last, that the same C builds for the Cortex-M7 as pure single precision with no libm.

Two kinds of checks for the vector kernels:
- "mirror": numpy float32 operations in the summation order documented in kernels.h give
  the same bits. This pins the order the Python reference may copy.
- "accuracy": the result is close to a float64 computation, within a stated tolerance.
"""

import importlib.util
import shutil
import subprocess

import numpy as np
import pytest

from target import toolchain

try:
    from . import kernels_host as kh
except ImportError:
    import kernels_host as kh

f32 = np.float32


def ulp_distance(a, b):
    """How many float32 values lie between a and b (0 = identical; +0 and -0 coincide)."""
    def ordered(x):
        i = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def floats_from_bits(lo, hi, stride):
    """Every stride-th float32 whose bit pattern is in [lo, hi]."""
    return np.arange(lo, hi + 1, stride, dtype=np.uint64).astype(np.uint32).view(np.float32)


def bits(x):
    return int(np.array(x, dtype=np.float32).view(np.uint32))


def from_bits(u):
    return np.array(u, dtype=np.uint32).view(np.float32)[()]


def around(x, n=2000):
    """The n floats on each side of x (bit patterns, same sign)."""
    b = bits(x)
    return np.arange(b - n, b + n + 1, dtype=np.uint32).view(np.float32)


# ----------------------------------------------------------------------------
# scalar math: within 2 ulp of the correctly rounded float32 result
# (reference: numpy in float64, rounded to float32)


def test_expf_within_2ulp_over_whole_finite_range():
    # [-104, 88.7228317]: GPT-2 needs [-100, 88]; below -104 the result is 0, above it inf.
    # Bit-pattern sweep (every binade, subnormal results included) plus uniform values.
    x = np.concatenate([
        floats_from_bits(0, bits(88.72283), 257),
        floats_from_bits(0x80000000, bits(-104.0), 257),
        np.random.default_rng(0).uniform(-104, 88.7, 1_000_000).astype(f32),
        floats_from_bits(0, 4000, 1), floats_from_bits(0x80000000, 0x80000000 + 4000, 1),
        around(-87.33654), around(0.34657359), around(-0.34657359),
    ])
    ref = np.exp(x.astype(np.float64)).astype(f32)
    err = ulp_distance(kh.expf(x), ref)
    worst = np.argmax(err)
    assert err.max() <= 2, f"expf({x[worst]!r}) is {err.max()} ulp off"


@pytest.mark.parametrize("x, expected", [
    (0.0, 1.0), (-0.0, 1.0), (1.0, np.exp(1.0)),
    (-100.0, np.exp(-100.0)),            # subnormal result, 26 * 2^-149
    (-103.9, np.exp(-103.9)),            # the smallest subnormal, 2^-149
    (-104.0, 0.0), (-1000.0, 0.0), (-np.inf, 0.0),
    (float(from_bits(0x42B17217)), np.exp(np.float64(from_bits(0x42B17217)))),  # last finite
    (float(from_bits(0x42B17218)), np.inf), (100.0, np.inf), (np.inf, np.inf),
])
def test_expf_edges(x, expected):
    got = kh.expf(np.array([x]))[0]
    assert ulp_distance(got, f32(expected)) <= 2, (x, got, expected)


def test_expf_nan_is_nan():
    assert np.isnan(kh.expf(np.array([np.nan]))[0])


def test_tanhf_within_2ulp_over_all_floats():
    # every 1021st bit pattern over the whole float32 line (NaNs dropped), plus the
    # neighbourhoods of the switches between formulas in mathf.c (2^-12, 0.55, 9.1)
    x = floats_from_bits(0, 0xFFFFFFFF, 1021)
    x = x[~np.isnan(x)]
    edges = [around(s * e) for e in (2.0**-12, 0.55, 9.1) for s in (1.0, -1.0)]
    x = np.concatenate([x, *edges, np.array([0.0, -0.0, np.inf, -np.inf], dtype=f32)])
    ref = np.tanh(x.astype(np.float64)).astype(f32)
    err = ulp_distance(kh.tanhf(x), ref)
    worst = np.argmax(err)
    assert err.max() <= 2, f"tanhf({x[worst]!r}) is {err.max()} ulp off"


def test_tanhf_is_odd_keeps_signed_zero_and_saturates():
    x = np.random.default_rng(1).standard_normal(100_000).astype(f32) * 4
    assert np.array_equal(kh.tanhf(-x), -kh.tanhf(x))
    z = kh.tanhf(np.array([0.0, -0.0]))
    assert z[0] == 0 and not np.signbit(z[0]) and z[1] == 0 and np.signbit(z[1])
    sat = kh.tanhf(np.array([9.2, 10.0, 1e30, np.inf, -9.2, -np.inf]))
    assert list(sat) == [1, 1, 1, 1, -1, -1]
    assert np.isnan(kh.tanhf(np.array([np.nan]))[0])


@pytest.mark.parametrize("sub", [0.0, 2.5, -3.0])
def test_expf4_sub_is_four_expf_bit_for_bit(sub):
    # groups on the common path (the side-by-side code) and off it: out of range, 2^k not a
    # normal float (x < -87.3 or > 88.0), the bounds themselves, infinities and NaNs; in
    # place (softmax's use) and not
    x = floats_from_bits(0, 0xFFFFFFFF, 1021)
    edges = [around(e) for e in (-104.0, -88.72283172607421875, -87.3, 88.0, 88.72283172607421875, 1.0)]
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, -30.0, 5.0], dtype=f32)
    x = np.concatenate([x, *edges, special])
    rng = np.random.default_rng(4)
    for order in (np.argsort(x, kind="stable"), rng.permutation(x.size)):
        fours = x[order][: x.size // 4 * 4]
        with np.errstate(invalid="ignore"):   # inf - inf: NaN, as in C
            want = kh.expf(fours - f32(sub)).view(np.uint32)
        assert np.array_equal(kh.expf4_sub(fours, sub).view(np.uint32), want)
        assert np.array_equal(kh.expf4_sub(fours, sub, in_place=True).view(np.uint32), want)


def test_tanhf2_is_two_tanhf_bit_for_bit():
    # pairs on the same path (the side-by-side code) and on different ones, the switches
    # between formulas, signed zeros, infinities and NaNs
    x = floats_from_bits(0, 0xFFFFFFFF, 1021)
    edges = [around(s * e) for e in (2.0**-12, 0.55, 9.1) for s in (1.0, -1.0)]
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.3, -0.3, 2.0, -2.0, 1e-5], dtype=f32)
    x = np.concatenate([x, *edges, special])
    rng = np.random.default_rng(3)
    for order in (np.argsort(np.abs(x), kind="stable"), rng.permutation(x.size)):
        pairs = x[order][: x.size // 2 * 2]
        assert np.array_equal(kh.tanhf2(pairs).view(np.uint32), kh.tanhf(pairs).view(np.uint32))


def test_sqrtf_is_correctly_rounded():
    # numpy's float32 sqrt is IEEE (correctly rounded): results must be identical
    u = np.random.default_rng(2).integers(0, 0x7F800000, 1_000_000, dtype=np.uint32)
    x = np.concatenate([u.view(np.float32), np.array([0.0, -0.0, 1.0, 4.0, np.inf], dtype=f32)])
    got = kh.sqrtf(x)
    assert np.array_equal(got.view(np.uint32), np.sqrt(x).view(np.uint32))
    assert np.isnan(kh.sqrtf(np.array([-1.0]))[0])


# ----------------------------------------------------------------------------
# vector kernels


def dot_rows_mirror(w, x):
    """vec_dot's documented order for each row of w: acc[c % 4] += w[c]*x[c] in
    increasing c, from +0; then (acc0 + acc1) + (acc2 + acc3). All float32."""
    p = w.astype(f32) * x.astype(f32)            # (rows, cols) products, rounded once
    acc = np.zeros((w.shape[0], 4), dtype=f32)
    for c in range(w.shape[1]):
        acc[:, c % 4] += p[:, c]
    return (acc[:, 0] + acc[:, 1]) + (acc[:, 2] + acc[:, 3])


def seq_sum(v):
    """Sequential float32 sum v[0] + v[1] + ... (np.cumsum accumulates in order)."""
    return np.cumsum(v.astype(f32), dtype=f32)[-1]


@pytest.mark.parametrize("cols", [1, 2, 3, 4, 5, 7, 8, 9, 64, 767, 768])
def test_vec_dot_follows_documented_order(cols):
    rng = np.random.default_rng(cols)
    a, b = rng.standard_normal((2, cols)).astype(f32)
    assert kh.vec_dot(a, b) == dot_rows_mirror(a[None, :], b)[0]


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (16, 64), (40, 768), (7, 3072)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matvec_rows(rows, cols, with_bias):
    rng = np.random.default_rng(rows * 10_000 + cols)
    w = rng.standard_normal((rows, cols)).astype(f32)
    x = rng.standard_normal(cols).astype(f32)
    b = rng.standard_normal(rows).astype(f32) if with_bias else None
    y = kh.matvec_rows(w, x, b)
    # mirror: y = bias + dot, bit for bit
    mirror = dot_rows_mirror(w, x) + (b if with_bias else f32(0))
    assert np.array_equal(y, mirror)
    # accuracy: the textbook bound for float sums, |err| <= m * 2^-24 * sum|w*x| (+|b|),
    # m = rounding steps in the longest chain (product, cols/4 lane adds, 2 combines, bias)
    ref = w.astype(np.float64) @ x + (b if with_bias else 0.0)
    scale = np.abs(w.astype(np.float64)) @ np.abs(x) + (np.abs(b) if with_bias else 0.0)
    m = -(-cols // 4) + 4
    assert np.all(np.abs(y - ref) <= m * 2.0**-24 * scale)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 768, 1024])
@pytest.mark.parametrize("inplace", [False, True])
def test_layernorm(n, inplace):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(f32) * 3 + 1
    g = rng.standard_normal(n).astype(f32)
    b = rng.standard_normal(n).astype(f32)
    eps = f32(1e-5)
    out = kh.layernorm(x, g, b, eps, inplace=inplace)
    # mirror: sequential sums, two passes, then (x - mean) / std * gamma + beta
    mean = seq_sum(x) / f32(n)
    var = seq_sum((x - mean) * (x - mean)) / f32(n)
    assert np.array_equal(out, (x - mean) / np.sqrt(var + eps) * g + b)
    # accuracy vs float64 numpy (x.var() is the two-pass population variance)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5) * g + b
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_layernorm_large_mean_small_spread():
    # GPT-2's residual stream can sit far from 0; two passes keep the variance accurate
    # where E[x^2] - E[x]^2 in float32 would lose it entirely (mean^2 = 2500, var = 0.01).
    rng = np.random.default_rng(3)
    x = (50 + 0.1 * rng.standard_normal(768)).astype(f32)
    ones, zeros = np.ones(768, f32), np.zeros(768, f32)
    out = kh.layernorm(x, ones, zeros, 1e-5)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean()) / np.sqrt(x64.var() + 1e-5)
    # The sequential float32 sum of 768 values near 50 rounds at 2^-8 per add (the sum is
    # ~38400), so the mean is off by ~4e-5 = 4e-4 standard deviations (measured: 6.6e-4
    # worst over 50 draws). numpy's pairwise sum does better; the firmware keeps the plain
    # sequential order because the reference mirrors it.
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-3)
    assert abs(out.std() - 1) < 1e-3


def test_gelu_tanh():
    x = np.concatenate([np.linspace(-10, 10, 20001), [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0]]).astype(f32)
    y = kh.gelu_tanh(x)
    # mirror of the documented evaluation, with the firmware's own tanh
    u = f32(0.7978846) * (x + f32(0.044715) * ((x * x) * x))
    assert np.array_equal(y, (f32(0.5) * x) * (f32(1) + kh.tanhf(u)))
    # accuracy vs the float64 formula; 1 + tanh(u) cancels for negative x, where one ulp
    # of tanh (2^-24 near -1) scaled by 0.5*|x| is the floor of what float32 can give
    x64 = x.astype(np.float64)
    ref = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    assert np.all(np.abs(y - ref) <= 1e-5 * np.abs(ref) + 2.0**-23 * np.abs(x64))


@pytest.mark.parametrize("n", [1, 2, 50, 1024])
def test_softmax(n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 5).astype(f32)
    p = kh.softmax(x)
    # mirror: subtract max, firmware exp, sequential sum, divide
    e = kh.expf(x - x.max())
    assert np.array_equal(p, e / seq_sum(e))
    # accuracy vs float64
    x64 = x.astype(np.float64)
    ref = np.exp(x64 - x64.max())
    ref /= ref.sum()
    np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-7)
    assert abs(float(p.astype(np.float64).sum()) - 1) < 1e-5


@pytest.mark.parametrize("n", [1, 2, 3, 50, 1023])
def test_softmax_exps_are_the_numerators_and_their_sum(n):
    rng = np.random.default_rng(n + 7)
    x = (rng.standard_normal(n) * 5).astype(f32)
    x[n // 2] = x.max() + 1   # the max anywhere, not only where a running max starts
    e, total = kh.softmax_exps(x)
    want = kh.expf(x - x.max())
    assert np.array_equal(e, want) and total == seq_sum(want)
    assert e[n // 2] == 1.0


def test_softmax_large_and_masked_logits():
    p = kh.softmax(np.array([1000.0, 999.0, -np.inf, 1000.0], dtype=f32))
    e1 = np.exp(-1.0)
    np.testing.assert_allclose(p, [1 / (2 + e1), e1 / (2 + e1), 0, 1 / (2 + e1)], rtol=1e-6)


def test_add_inplace_is_elementwise_float32_add():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, 777)).astype(f32)
    assert np.array_equal(kh.add_inplace(a, b), a + b)


def attention_mirror(q, k, v):
    """attention_head's documented order: mirror dots, scale, softmax, then
    out += s[t] * v[t] for t in order. q (hd,), k and v (n_pos, hd)."""
    s = dot_rows_mirror(k, q) * (f32(1) / np.sqrt(f32(q.size)))
    e = kh.expf(s - s.max())
    s = e / seq_sum(e)
    out = np.zeros(q.size, dtype=f32)
    for t in range(k.shape[0]):
        out += s[t] * v[t]
    return out


@pytest.mark.parametrize("n_pos", [1, 2, 17, 128])
@pytest.mark.parametrize("head", [0, 2])
def test_attention_head(n_pos, head):
    # cache rows are [n_embd] = 4 heads of 64; the head is a column offset into them,
    # and the cache holds more positions than are attended to
    n_embd, hd = 256, 64
    rng = np.random.default_rng(n_pos * 10 + head)
    k_cache = rng.standard_normal((n_pos + 3, n_embd)).astype(f32)
    v_cache = rng.standard_normal((n_pos + 3, n_embd)).astype(f32)
    q = rng.standard_normal(hd).astype(f32)
    cols = slice(head * hd, (head + 1) * hd)
    out = kh.attention_head(q, k_cache, v_cache, n_pos, head_offset=head * hd)
    k, v = k_cache[:n_pos, cols], v_cache[:n_pos, cols]
    assert np.array_equal(out, attention_mirror(q, k, v))
    assert np.array_equal(kh.attention_head(q, k_cache, v_cache, n_pos, head * hd, out_is_q=True), out)
    # accuracy vs float64: softmax(q k^T / sqrt(hd)) v
    s = k.astype(np.float64) @ q / np.sqrt(hd)
    w = np.exp(s - s.max())
    ref = (w / w.sum()) @ v
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# running top-k over vocabulary tiles: the same as a stable sort by -value


def expected_topk(x, k):
    idx = np.argsort(-x, kind="stable")[:k]
    return idx, x[idx]


def assert_topk(x, k, tile, order=None):
    idx, val = kh.topk(x, k, tile=tile, order=order)
    e_idx, e_val = expected_topk(x, min(k, x.size))
    assert np.array_equal(idx, e_idx), (k, tile)
    assert np.array_equal(val.view(np.uint32), e_val.view(np.uint32))


@pytest.mark.parametrize("k", [1, 2, 5, 40, 128])
@pytest.mark.parametrize("tile", [1, 7, 1000, 50257])
def test_topk_random_logits(k, tile):
    x = np.random.default_rng(k + tile).standard_normal(50257).astype(f32)
    assert_topk(x, k, tile)


@pytest.mark.parametrize("k", [1, 3, 128])
@pytest.mark.parametrize("tile", [1, 64, 999])
def test_topk_ties_go_to_the_lower_index(k, tile):
    # 40 distinct values over 50257 logits: every rank is a tie, including across tiles
    x = np.random.default_rng(k * tile).integers(-20, 20, 50257).astype(f32)
    assert_topk(x, k, tile)


def test_topk_does_not_depend_on_tile_order():
    x = np.random.default_rng(5).integers(-5, 5, 10_000).astype(f32)
    order = np.random.default_rng(6).permutation(-(-x.size // 128))
    assert_topk(x, 50, 128, order=order)


def test_topk_special_values():
    # -inf (masked), +-0 (equal, so index order), NaN (ranks last, like numpy)
    x = np.array([0.0, -np.inf, np.nan, -0.0, 1.0, np.nan, 0.0, -np.inf, 1.0], dtype=f32)
    for k in range(1, x.size + 1):
        assert_topk(x, k, tile=2)


def test_topk_fewer_logits_than_k_and_k_clamped():
    x = np.array([3.0, 1.0, 2.0], dtype=f32)
    idx, val = kh.topk(x, 10, tile=2)
    assert list(idx) == [0, 2, 1] and list(val) == [3, 2, 1]
    assert kh.topk_new(0).k == 1
    assert kh.topk_new(10_000).k == kh.TopK.TOPK_MAX


def test_argmax_is_topk_with_k_1():
    x = np.random.default_rng(7).integers(0, 50, 50257).astype(f32)
    idx, _ = kh.topk(x, 1, tile=512)
    assert idx[0] == np.argmax(x)   # the first of the tied maxima


# ----------------------------------------------------------------------------
# PRNG: xorshift64*, spelled out here in plain Python as the spec

MASK64 = (1 << 64) - 1


class SpecPrng:
    def __init__(self, seed):
        s = (seed ^ 0x9E3779B97F4A7C15) & MASK64
        self.state = s if s != 0 else 1

    def next_u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def next_f32(self):
        return f32(self.next_u32() >> 8) * f32(1.0 / 16777216.0)


def test_spec_prng_first_outputs():
    # pinned, so the spec cannot drift together with an implementation
    p0, p42 = SpecPrng(0), SpecPrng(42)
    assert [p0.next_u32() for _ in range(4)] == [0x0D83B3E2, 0x54C44C79, 0xA845F342, 0x7D6E0B87]
    assert [p42.next_u32() for _ in range(4)] == [0x08328D7F, 0x077E7279, 0x0C4E098F, 0xD861FCF4]


@pytest.mark.parametrize("seed", [0, 42, 1, MASK64, 0x9E3779B97F4A7C15])
def test_prng_matches_spec(seed):
    # the last seed makes seed ^ constant == 0, which must become state 1
    c, spec = kh.Prng(seed), SpecPrng(seed)
    assert c.state == spec.state
    assert [c.next_u32() for _ in range(1000)] == [spec.next_u32() for _ in range(1000)]
    f = [c.next_f32() for _ in range(1000)]
    assert f == [spec.next_f32() for _ in range(1000)]
    assert min(f) >= 0 and max(f) < 1


def sample_mirror(idx, val, temperature, rng):
    """sample_topk's spec in numpy float32, with the firmware's exp."""
    w = kh.expf((val - val[0]) / f32(temperature))   # subtract, divide, exp
    total = seq_sum(w)
    r = rng.next_f32() * total
    acc = f32(0)
    for i in range(len(w)):
        acc = f32(acc + w[i])
        if r < acc:
            return int(idx[i])
    return int(idx[-1])


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (5, 0.7), (40, 1.0), (128, 1.3)])
def test_sample_topk_matches_spec(k, temperature):
    logits = (np.random.default_rng(k).standard_normal(50257) * 3).astype(f32)
    t = kh.topk_new(k)
    kh.topk_push(t, logits, 0)
    idx, val = t.result()
    for seed in range(200):
        c, spec = kh.Prng(seed), SpecPrng(seed)
        assert c.sample_topk(t, temperature) == sample_mirror(idx, val, temperature, spec)
        assert c.state == spec.state   # exactly one draw consumed


def test_sample_topk_frequencies_follow_softmax():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=f32)
    t = kh.topk_new(5)
    kh.topk_push(t, logits, 100)
    rng, n = kh.Prng(123), 20_000
    counts = np.bincount([rng.sample_topk(t, 1.0) - 100 for _ in range(n)], minlength=5)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    sigma = np.sqrt(n * p * (1 - p))
    assert np.all(np.abs(counts - n * p) < 5 * sigma), (counts, n * p)


def test_sample_topk_greedy_and_empty():
    t = kh.topk_new(3)
    kh.topk_push(t, np.array([0.1, 0.9, 0.5], dtype=f32), 7)
    rng = kh.Prng(9)
    before = rng.state
    assert rng.sample_topk(t, 0.0) == 8 and rng.sample_topk(t, -1.0) == 8
    assert rng.state == before   # greedy draws nothing
    assert rng.sample_topk(kh.topk_new(3), 1.0) == -1


# ----------------------------------------------------------------------------
# the same C for the Cortex-M7: single precision only, no libm, no warnings

M7_FLAGS = ["-target", "thumb-freestanding-eabihf", "-mcpu=cortex_m7+fp_armv8d16sp",
            "-ffp-contract=off", "-O2", "-std=c99", f"-DTOPK_MAX={kh.TOPK_MAX}"]
WARN_FLAGS = ["-Wall", "-Wextra", "-Wpedantic", "-Wdouble-promotion", "-Werror"]


@pytest.fixture(scope="module")
def m7_objects(tmp_path_factory):
    if importlib.util.find_spec("ziglang") is None:
        pytest.skip("ziglang is not installed in this Python")
    out = tmp_path_factory.mktemp("m7")
    objs = {}
    for src in kh.SOURCES:
        obj = out / src.replace(".c", ".o")
        cmd = [*toolchain.compiler("zig"), *M7_FLAGS, *WARN_FLAGS,
               f"-I{kh.RUNTIME_C}", "-c", str(kh.RUNTIME_C / src), "-o", str(obj)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr}"
        objs[src] = obj
    return objs


def test_m7_objects_need_nothing_but_each_other(m7_objects):
    # No sqrtf/expf (libm), no __aeabi_d* / __aeabi_f2d (soft double), no memcpy/memmove.
    # Allowed: our own symbols, and the EHABI personality routines that zig's default
    # -funwind-tables references from .ARM.exidx (compiler_rt defines them as stubs).
    elffile = pytest.importorskip("elftools.elf.elffile")
    defined, undefined = set(), set()
    for obj in m7_objects.values():
        with open(obj, "rb") as f:
            for sym in elffile.ELFFile(f).get_section_by_name(".symtab").iter_symbols():
                if not sym.name or sym["st_info"]["type"] in ("STT_SECTION", "STT_FILE"):
                    continue
                (undefined if sym["st_shndx"] == "SHN_UNDEF" else defined).add(sym.name)
    ehabi = {"__aeabi_unwind_cpp_pr0", "__aeabi_unwind_cpp_pr1", "__aeabi_unwind_cpp_pr2"}
    assert undefined - defined - ehabi == set()


def _disassembler():
    names = ["llvm-objdump", *(f"llvm-objdump-{v}" for v in range(20, 13, -1))]
    for name in names:
        if shutil.which(name):
            # decode as a double-capable FPU so a stray double shows up as .f64
            return [name, "-d", "--triple=thumbv7em-none-eabihf", "--mattr=+fp-armv8"]
    if shutil.which("arm-none-eabi-objdump"):
        return ["arm-none-eabi-objdump", "-d"]
    return None


def test_m7_objects_are_single_precision_and_use_vsqrt(m7_objects):
    # (`zig objdump` has no disassembler, hence llvm-objdump / arm-none-eabi-objdump)
    dis = _disassembler()
    if dis is None:
        pytest.skip("no ARM disassembler (llvm-objdump or arm-none-eabi-objdump) on PATH")
    text = {}
    for src, obj in m7_objects.items():
        res = subprocess.run([*dis, str(obj)], capture_output=True, text=True, check=True)
        text[src] = res.stdout
        assert ".f64" not in res.stdout, f"double-precision instruction in {src}"
        assert "<unknown>" not in res.stdout, f"undecoded instruction in {src}"
    assert "vsqrt.f32" in text["mathf.c"]


# ----------------------------------------------------------------------------
# memory safety: every kernel on edge shapes, with exactly sized buffers, under ASan/UBSan

SANITIZER_DRIVER = r"""
#include <stdio.h>
#include <stdlib.h>
#include "mathf.h"
#include "kernels.h"
#include "prng.h"

static float* fbuf(int n, unsigned seed) {   /* exactly n floats, values in [-2, 2) */
    float* p = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) p[i] = (float)((seed * 2654435761u + (unsigned)i * 40503u) % 1000u) / 250.0f - 2.0f;
    return p;
}

int main(void) {
    float special[] = {0.0f, -0.0f, 1e-45f, 1e-30f, 0.5f, 0.55f, 9.1f, 88.7f, 89.0f, -104.0f,
                       -1e30f, 1e30f, 1.0f / 0.0f, -1.0f / 0.0f, 0.0f / 0.0f};
    volatile float sink = 0.0f;
    for (unsigned i = 0; i < sizeof special / sizeof special[0]; i++) {
        float s = special[i];
        sink += mcu_expf(s) + mcu_expf(-s) + mcu_tanhf(s) + mcu_tanhf(-s) + mcu_sqrtf(s);
    }
    for (int cols = 1; cols <= 9; cols++) {
        for (int rows = 1; rows <= 3; rows++) {
            float *w = fbuf(rows * cols, 1), *x = fbuf(cols, 2), *b = fbuf(rows, 3);
            float* y = malloc(sizeof(float) * (size_t)rows);
            matvec_rows(y, w, b, x, rows, cols);
            matvec_rows(y, w, NULL, x, rows, cols);
            free(w); free(x); free(b); free(y);
        }
    }
    for (int n = 1; n <= 9; n++) {
        float *x = fbuf(n, 4), *g = fbuf(n, 5), *b = fbuf(n, 6), *o = fbuf(n, 7);
        layernorm(o, x, g, b, n, 1e-5f);
        layernorm(x, x, g, b, n, 1e-5f);
        gelu_tanh(x, n);
        softmax(x, n);
        add_inplace(x, o, n);
        free(x); free(g); free(b); free(o);
    }
    for (int n_pos = 1; n_pos <= 5; n_pos++) {
        for (int hd = 1; hd <= 9; hd++) {
            int stride = hd + 3, size = (n_pos - 1) * stride + hd;   /* ends at the last row */
            float *k = fbuf(size, 8), *v = fbuf(size, 9), *q = fbuf(hd, 10);
            float *o = fbuf(hd, 11), *s = fbuf(n_pos, 12);
            attention_head(o, q, k, v, n_pos, hd, stride, s);
            attention_head(q, q, k, v, n_pos, hd, stride, s);
            free(k); free(v); free(q); free(o); free(s);
        }
    }
    int ks[] = {0, 1, 3, TOPK_MAX, TOPK_MAX + 5};
    float* logits = fbuf(300, 13);
    for (unsigned i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        for (int tile = 1; tile <= 7; tile++) {
            TopK t;
            topk_init(&t, ks[i]);
            for (int s = 0; s < 300; s += tile) topk_push(&t, logits + s, s, s + tile <= 300 ? tile : 300 - s);
            Prng rng;
            prng_init(&rng, (uint64_t)tile);
            sink += (float)sample_topk(&t, 0.8f, &rng);
        }
    }
    free(logits);
    printf("ok %d\n", sink == sink);
    return 0;
}
"""


def test_kernels_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    src = tmp_path / "driver.c"
    src.write_text(SANITIZER_DRIVER)
    exe = tmp_path / "driver"
    cmd = [*kh.host_cc(), "-std=c99", "-O1", "-g", "-ffp-contract=off", "-fno-math-errno",
           "-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
           f"-I{kh.RUNTIME_C}", str(src), *(str(kh.RUNTIME_C / s) for s in kh.SOURCES),
           "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0 and "sanitize" in res.stderr.lower():
        pytest.skip(f"sanitizer runtime not available: {res.stderr.strip()[:200]}")
    assert res.returncode == 0, res.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True,
                         env={"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "print_stacktrace=1"})
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]


def test_host_build_has_no_warnings(tmp_path):
    cmd = [*kh.host_cc(), "-std=c99", "-O2", "-ffp-contract=off", *WARN_FLAGS, "-Wconversion",
           "-Wshadow", f"-I{kh.RUNTIME_C}", "-c"]
    for src in kh.SOURCES:
        res = subprocess.run([*cmd, str(kh.RUNTIME_C / src), "-o", str(tmp_path / "x.o")],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
