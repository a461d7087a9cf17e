"""GPT-2 forward pass in numpy, one token at a time with a KV cache, float32: the oracle.

Laid out as the firmware runs it: each block is six atomic stages (ln_1, attn_qkv, attn_core,
attn_proj, ln_2, mlp), after the embedding and before the head. Weights use Hugging Face's
names and layout (y = x @ W + b, W is [in, out]).
"""

from dataclasses import dataclass, field

import numpy as np

from .config import GPTConfig
from .errors import McugptError
from .sampler import Prng, Sampling, choose

GELU_C = np.float32(np.sqrt(2.0 / np.pi))


def layer_norm(x, gain, bias, eps):
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return (x - mean) / np.sqrt(var + np.float32(eps)) * gain + bias


def gelu(x):
    # GPT-2's tanh approximation, not the exact erf GELU
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(GELU_C * (x + np.float32(0.044715) * x ** 3)))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@dataclass
class KVCache:
    keys: np.ndarray    # (n_layer, n_ctx, n_embd): row t holds every head's key for position t
    values: np.ndarray  # (n_layer, n_ctx, n_embd)

    @classmethod
    def empty(cls, cfg: GPTConfig, n_ctx: int):
        shape = (cfg.n_layer, n_ctx, cfg.n_embd)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))


class Reference:
    def __init__(self, cfg: GPTConfig, weights: dict[str, np.ndarray]):
        self.cfg, self.w = cfg, weights

    def forward(self, token: int, pos: int, kv: KVCache) -> np.ndarray:
        """Logits (vocab_size,) for `token` at `pos`; writes this position's keys/values."""
        cfg, w = self.cfg, self.w
        nh, hd, eps = cfg.n_head, cfg.head_dim, cfg.layer_norm_epsilon
        # embed
        x = w["wte.weight"][token] + w["wpe.weight"][pos]  # (n_embd,)
        for layer in range(cfg.n_layer):
            p = f"h.{layer}."
            # ln_1
            h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            # attn_qkv
            qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]  # (3 n_embd,)
            q, k, v = np.split(qkv, 3)
            kv.keys[layer, pos], kv.values[layer, pos] = k, v
            # attn_core: each head attends over positions 0..pos of the cache
            keys = kv.keys[layer, : pos + 1].reshape(pos + 1, nh, hd)     # (T, nh, hd)
            values = kv.values[layer, : pos + 1].reshape(pos + 1, nh, hd)
            att = np.empty(cfg.n_embd, np.float32)
            for head in range(nh):
                qh = q[head * hd:(head + 1) * hd]
                scores = keys[:, head] @ qh * np.float32(1.0 / np.sqrt(hd))  # (T,)
                att[head * hd:(head + 1) * hd] = softmax(scores) @ values[:, head]
            # attn_proj (+ residual)
            x = x + (att @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"])
            # ln_2
            h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            # mlp (+ residual)
            hidden = gelu(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])  # (4 n_embd,)
            x = x + (hidden @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"])
        # head: final layer norm, then the LM head tied to the token embedding
        x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
        return w["wte.weight"] @ x  # (vocab_size,)


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
