"""GPT-2 forward pass in numpy, one token at a time with a KV cache, float32: the oracle.

Laid out as the firmware runs it: each block is six atomic stages (ln_1, attn_qkv, attn_core,
attn_proj, ln_2, mlp), after the embedding and before the head. Weights use Hugging Face's
names and layout (y = x @ W + b, W is [in, out]).

Every float operation goes through compiler/numerics.py, which performs runtime_c/'s
operations in runtime_c/'s order (sums, dot products, exp, tanh): the firmware's logits
equal these bit for bit, in fp32 and in int8 (whose integer products are exact anyway).
"""

from dataclasses import dataclass, field

import numpy as np

from . import numerics as nx
from .config import GPTConfig
from target.errors import McugptError
from .quantize import matvec_int8, quantize_rows
from .sampler import Prng, Sampling, choose


@dataclass
class KVCache:
    keys: np.ndarray    # (n_layer, n_ctx, n_embd): row t holds every head's key for position t
    values: np.ndarray  # (n_layer, n_ctx, n_embd)

    @classmethod
    def empty(cls, cfg: GPTConfig, n_ctx: int):
        shape = (cfg.n_layer, n_ctx, cfg.n_embd)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))


class Reference:
    """dtype "int8": every matrix a matrix-vector product streams (and so wte) is quantized
    per output row, and each product quantizes its input vector: compiler/quantize.py."""

    def __init__(self, cfg: GPTConfig, weights: dict[str, np.ndarray], dtype: str = "fp32"):
        self.cfg, self.w, self.dtype = cfg, weights, dtype
        self.q = {}
        if dtype == "int8":
            for name, w in weights.items():
                if w.ndim == 2 and name != "wpe.weight":  # stored [out, in], as the firmware has them
                    self.q[name] = quantize_rows(w if name == "wte.weight" else w.T)

    def linear(self, x, w: str, b: str | None) -> np.ndarray:
        """x @ W (+ b) for a weight W [in, out] (wte: x @ wte.T, the tied LM head)."""
        bias = self.w[b] if b else None
        if self.dtype == "int8":
            return matvec_int8(*self.q[w], x, bias)
        if w == "wte.weight":  # [vocab, n_embd]: one row per logit, as the head streams it
            return nx.matvec_rows(self.w[w], x)
        return nx.matvec(x, self.w[w], bias)

    def token_embedding(self, token: int) -> np.ndarray:
        if self.dtype == "int8":
            q, s = self.q["wte.weight"]
            return q[token].astype(np.float32) * s[token]
        return self.w["wte.weight"][token]

    def forward(self, token: int, pos: int, kv: KVCache) -> np.ndarray:
        """Logits (vocab_size,) for `token` at `pos`; writes this position's keys/values."""
        cfg, w = self.cfg, self.w
        nh, eps = cfg.n_head, np.float32(cfg.layer_norm_epsilon)
        # embed
        x = nx.add(self.token_embedding(token), w["wpe.weight"][pos])  # (n_embd,)
        for layer in range(cfg.n_layer):
            p = f"h.{layer}."
            # ln_1
            h = nx.layernorm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            # attn_qkv
            qkv = self.linear(h, p + "attn.c_attn.weight", p + "attn.c_attn.bias")  # (3 n_embd,)
            q, k, v = np.split(qkv, 3)
            kv.keys[layer, pos], kv.values[layer, pos] = k, v
            # attn_core: each head attends over positions 0..pos of the cache,
            # softmax(q k^T / sqrt(head_dim)) v (numerics.attention: every head at once)
            att = nx.attention(q, kv.keys[layer, : pos + 1], kv.values[layer, : pos + 1], nh)
            # attn_proj (+ residual)
            x = nx.add(x, self.linear(att, p + "attn.c_proj.weight", p + "attn.c_proj.bias"))
            # ln_2
            h = nx.layernorm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            # mlp (+ residual)
            hidden = nx.gelu_tanh(self.linear(h, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias"))  # (4 n_embd,)
            x = nx.add(x, self.linear(hidden, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"))
        # head: final layer norm, then the LM head tied to the token embedding
        x = nx.layernorm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
        return self.linear(x, "wte.weight", None)  # (vocab_size,)


@dataclass
class Generation:
    prompt_tokens: list[int]
    tokens: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)  # one per generated token


def check_context(n_prompt: int, n_new: int, n_ctx: int) -> None:
    if n_prompt == 0:
        raise McugptError("the prompt is empty: give at least one token of text")
    if n_prompt + n_new > n_ctx:
        raise McugptError(
            f"prompt ({n_prompt} tokens) + {n_new} new tokens = {n_prompt + n_new} exceeds "
            f"the context of {n_ctx} tokens")


def generate(model: Reference, prompt_tokens: list[int], n_new: int, sampling: Sampling,
             n_ctx: int | None = None, keep_logits: bool = False) -> Generation:
    n_ctx = n_ctx or model.cfg.n_ctx
    check_context(len(prompt_tokens), n_new, n_ctx)
    kv = KVCache.empty(model.cfg, n_ctx)
    rng = None if sampling.greedy else Prng(sampling.seed)
    out = Generation(list(prompt_tokens))
    logits = None
    for pos, tok in enumerate(prompt_tokens):
        logits = model.forward(tok, pos, kv)
    for pos in range(len(prompt_tokens), len(prompt_tokens) + n_new):
        nxt = choose(logits, sampling, rng)
        out.tokens.append(nxt)
        if keep_logits:
            out.logits.append(logits)
        if pos + 1 < len(prompt_tokens) + n_new:
            logits = model.forward(nxt, pos, kv)
    return out
