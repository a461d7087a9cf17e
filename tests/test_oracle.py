"""The numpy reference (compiler/reference.py) is GPT-2: checked against a float64 GPT-2
written here directly from the equations.

Every other test compares the firmware with compiler/reference.py bit for bit, so a mistake
shared by both (a wrong GELU constant, a wrong softmax scale, the wrong layer-norm epsilon,
in compiler/numerics.py and runtime_c/ alike) would pass all of them. This file is the check
on the oracle itself. The model below uses nothing from compiler/numerics.py,
compiler/quantize.py or the reference: it is the textbook (nanoGPT-style) formulation, in
float64, and it processes the whole sequence at once with a causal mask, where the reference
runs one token at a time against a KV cache. Two formulations that agree to float32
rounding at every position, at a realistic width (n_embd 256, GPT-2's 50257-token
vocabulary, 4 layers), are the same function.
"""

import dataclasses
import math

import numpy as np
import pytest

from compiler.config import GPTConfig
from compiler.reference import KVCache, Reference
from compiler.weights import synthetic_weights

CFG = GPTConfig(name="oracle", n_layer=4, n_head=4, n_embd=256, n_ctx=64, vocab_size=50257,
                layer_norm_epsilon=1e-5)

# "<|endoftext|>The quick brown fox jumps over the lazy dog." in GPT-2's tokens; the first,
# 50256, is the vocabulary's last id (the embedding's last row).
PROMPT = [50256, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]

# Tolerance, relative to the logits' scale (max |logit| at that position, ~7 here):
#     max_v |reference[v] - oracle[v]| <= LOGIT_RTOL * max_v |oracle[v]|.
# The reference rounds every operation to float32 (unit roundoff u = 2^-24 ~ 6e-8): over
# 4 layers of 256-wide dot products and sums, layer norms, softmax and GELU, then a
# 256-term dot product per logit, its logits carry errors of tens of u times the logit scale
# (measured: ~9e-7 relative, 6e-6 absolute, i.e. ~15 u). 1e-5 (~170 u) leaves an order of
# magnitude of headroom for that rounding and nothing more: a real change to the model moves
# the logits by far more (measured, worst position: the GELU constant 0.044715 -> 0.04715 by
# ~9e-4 of their scale, the layer-norm epsilon 1e-5 -> 1e-7 by ~4e-4, an attention scale of
# 1/sqrt(n_embd) or 1/head_dim instead of 1/sqrt(head_dim) by 0.4 and 0.85).
LOGIT_RTOL = 1e-5


# -- GPT-2 in float64, from the equations ----------------------------------------------


def layer_norm(x, gain, bias, eps):
    """(x - mean) / sqrt(var + eps) * gain + bias over the last axis; var is the biased
    (population) variance, and eps sits inside the square root, as in GPT-2."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def gelu(x):
    """GPT-2's GELU, the tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_self_attention(x, w, p, n_head):
    """Multi-head self-attention over the whole sequence x (T, C) at once: each position
    attends to itself and the positions before it (a lower-triangular mask), with scores
    q.k / sqrt(head_dim)."""
    T, C = x.shape
    hd = C // n_head
    qkv = x @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]          # (T, 3C)
    q, k, v = (t.reshape(T, n_head, hd).transpose(1, 0, 2) for t in np.split(qkv, 3, axis=-1))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(hd)                           # (n_head, T, T)
    causal = np.tril(np.ones((T, T), dtype=bool))
    y = softmax(np.where(causal, scores, -np.inf)) @ v                          # (n_head, T, hd)
    y = y.transpose(1, 0, 2).reshape(T, C)                                      # heads side by side
    return y @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]


def mlp(x, w, p):
    h = gelu(x @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
    return h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]


def gpt2_float64(cfg: GPTConfig, w: dict, tokens: list[int]) -> np.ndarray:
    """Logits (T, vocab) at every position of `tokens`: token + position embeddings, then
    n_layer pre-norm blocks x += attn(ln_1(x)); x += mlp(ln_2(x)), then ln_f and the LM head
    tied to the token embedding (logits = ln_f(x) @ wte^T). `w`: float64 weights."""
    eps = cfg.layer_norm_epsilon
    x = w["wte.weight"][tokens] + w["wpe.weight"][: len(tokens)]
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        x = x + causal_self_attention(layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps), w, p, cfg.n_head)
        x = x + mlp(layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps), w, p)
    return layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps) @ w["wte.weight"].T


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights32():
    """Seeded synthetic weights (float32, Hugging Face names and Conv1D layout)."""
    return synthetic_weights(CFG, seed=0)


@pytest.fixture(scope="module")
def weights64(weights32):
    """The same weights in float64 (every float32 value is exact in float64)."""
    return {name: a.astype(np.float64) for name, a in weights32.items()}


def reference_logits(cfg: GPTConfig, weights32: dict, tokens: list[int]) -> np.ndarray:
    """The project's fp32 reference, one token at a time through its KV cache: (T, vocab)."""
    ref, kv = Reference(cfg, weights32), KVCache.empty(cfg, cfg.n_ctx)
    return np.stack([ref.forward(t, pos, kv) for pos, t in enumerate(tokens)])


# -- the oracle is what it claims to be -----------------------------------------------------


def test_the_float64_oracle_is_gpt2_in_its_parts(weights64):
    """Spot checks of the oracle's own pieces against values computed independently: GELU's
    tanh form at known points, layer norm's output statistics, and causality (a position's
    logits do not depend on the tokens after it)."""
    # 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) at x = 1 and -2, evaluated by hand with math
    for x in (1.0, -2.0):
        want = 0.5 * x * (1 + math.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))
        assert gelu(np.array(x)) == pytest.approx(want, rel=1e-15)
    assert gelu(np.array(1.0)) == pytest.approx(0.8411919906082768, rel=1e-12)

    x = np.random.default_rng(1).normal(3.0, 0.5, size=(5, 256))
    y = layer_norm(x, 1.0, 0.0, 1e-5)
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=-1), x.var(axis=-1) / (x.var(axis=-1) + 1e-5), rtol=1e-12)

    full = gpt2_float64(CFG, weights64, PROMPT)
    prefix = gpt2_float64(CFG, weights64, PROMPT[:4])
    np.testing.assert_allclose(prefix, full[:4], rtol=0, atol=1e-10)


# -- the reference equals the oracle --------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 1e-1], ids=["eps=1e-5", "eps=1e-1"])
def test_reference_logits_equal_the_float64_oracle_at_every_position(eps, weights32, weights64):
    """At every position of an 11-token prompt, the reference's float32 logits (KV cache, one
    token at a time) agree with the float64 whole-sequence oracle's to float32 rounding
    (LOGIT_RTOL of the logits' scale), and both pick the same argmax token.

    eps=1e-5 is GPT-2's layer-norm epsilon. eps=1e-1 is the same model with a large epsilon:
    the first block's input (embeddings of std 0.1) has variance ~0.01, so an epsilon of 0.1
    dominates it and changes every logit completely. If the reference ignored
    cfg.layer_norm_epsilon (a hard-coded 1e-5, say) or altered it, this case fails by a
    logit-scale margin (~0.3 of it); the 1e-5 case alone catches only changes of the epsilon
    by a large factor (1e-5 -> 1e-7 moves the logits by up to 4e-4 of their scale, 40x the
    tolerance).

    Position 0 attends only to itself, so the attention scale first matters at position 1:
    hence a prompt of several tokens, every position checked."""
    cfg = dataclasses.replace(CFG, layer_norm_epsilon=eps)
    want = gpt2_float64(cfg, weights64, PROMPT)                          # (T, vocab), float64
    got = reference_logits(cfg, weights32, PROMPT).astype(np.float64)    # (T, vocab)
    assert got.shape == want.shape == (len(PROMPT), CFG.vocab_size)

    for pos in range(len(PROMPT)):
        scale = np.abs(want[pos]).max()
        err = np.abs(got[pos] - want[pos])
        worst = int(err.argmax())
        assert err[worst] <= LOGIT_RTOL * scale, (
            f"position {pos}: reference logit[{worst}] = {got[pos, worst]:.7g}, float64 oracle "
            f"{want[pos, worst]:.7g}: |error| {err[worst]:.3g} = {err[worst] / scale:.3g} of the logit "
            f"scale {scale:.3g} (tolerance {LOGIT_RTOL:g})")

        # The argmax is a meaningful check only where the oracle's top two logits are further
        # apart than the tolerance allows either to move; with these weights they are (by 0.026+).
        top2 = np.sort(want[pos])[-2:]
        assert top2[1] - top2[0] > 2 * LOGIT_RTOL * scale
        assert int(got[pos].argmax()) == int(want[pos].argmax()), (
            f"position {pos}: reference picks token {int(got[pos].argmax())}, the float64 oracle "
            f"{int(want[pos].argmax())}")
