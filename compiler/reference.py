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

from target.errors import McugptError
from target.stages import checkpoint_tensors, stage_sequence

from . import numerics as nx
from .config import GPTConfig
from .quantize import attention_int8, matvec_int8, quantize_rows, quantize_vector
from .sampler import Prng, Sampling, choose


@dataclass
class KVCache:
    """keys, values (n_layer, n_ctx, n_embd): row t holds every head's key (value) for
    position t, as float32; with an int8 cache the int8 values (exact in float32), each
    head's scale in key_scales, value_scales (n_layer, n_ctx, n_head)."""
    keys: np.ndarray
    values: np.ndarray
    key_scales: np.ndarray
    value_scales: np.ndarray

    @classmethod
    def empty(cls, cfg: GPTConfig, n_ctx: int):
        shape, scales = (cfg.n_layer, n_ctx, cfg.n_embd), (cfg.n_layer, n_ctx, cfg.n_head)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                   np.zeros(scales, np.float32), np.zeros(scales, np.float32))


@dataclass
class Activations:
    """The buffers stages pass to one another (target/stages.py ACTIVATIONS), for one token."""
    token: int
    pos: int
    x: np.ndarray = None        # (n_embd,) the residual stream
    h: np.ndarray = None        # (n_embd,) layer-norm output
    qkv: np.ndarray = None      # (3 n_embd,)
    att: np.ndarray = None      # (n_embd,) attention output, heads side by side
    logits: np.ndarray = None   # (vocab_size,)


class Reference:
    """dtype "int8": every tensor target/stages.py marks int8 (the matrices, and so the tied
    wte) is quantized per output row, and each matrix-vector product quantizes its input
    vector: compiler/quantize.py. kv_dtype "int8": each head's key and value are quantized
    per position (one float32 scale each) as they enter the cache, and attention computes
    on the int8 values, as the firmware does (quantize.attention_int8; compiler/plan.py
    KV_DTYPES)."""

    def __init__(self, cfg: GPTConfig, weights: dict[str, np.ndarray], dtype: str = "fp32",
                 kv_dtype: str = "fp32"):
        if kv_dtype not in ("fp32", "int8"):
            raise McugptError(f"unknown KV cache dtype '{kv_dtype}' (known: fp32, int8)")
        self.cfg, self.w, self.dtype, self.kv_dtype = cfg, weights, dtype, kv_dtype
        self.eps = np.float32(cfg.layer_norm_epsilon)
        self.rows = {}   # name -> stored [out, in] (one row per output), as the firmware streams it
        self.q = {}
        for name, (role, _shape) in checkpoint_tensors(cfg).items():
            if len(role.shape) == 2:
                self.rows[name] = not role.transposed
                if dtype == "int8" and role.int8:
                    self.q[name] = quantize_rows(weights[name].T if role.transposed else weights[name])

    def linear(self, x, w: str, b: str | None) -> np.ndarray:
        """x @ W (+ b): W [in, out] as GPT-2's Conv1D stores it, or [out, in] (wte, the tied
        LM head), as the firmware streams it: one row per output."""
        bias = self.w[b] if b else None
        if self.dtype == "int8":
            return matvec_int8(*self.q[w], x, bias)
        if self.rows[w]:
            return nx.matvec_rows(self.w[w], x, bias)
        return nx.matvec(x, self.w[w], bias)

    def forward(self, token: int, pos: int, kv: KVCache, on_stage=None) -> np.ndarray:
        """Logits (vocab_size,) for `token` at `pos`; writes this position's keys/values.
        The stages of target/stages.py in order, each given its tensors' names by role.
        `on_stage(kind, layer, a)`, if given, sees the activations after each stage (a debug
        hook: mcugpt/check_stages.py compares them with the board's, stage by stage)."""
        a = Activations(token, pos)
        for kind, layer in stage_sequence(self.cfg.n_layer):
            names = {r.name: r.checkpoint.format(layer=layer) for r in kind.roles}
            getattr(self, kind.name)(a, names, layer, kv)
            if on_stage is not None:
                on_stage(kind, layer, a)
        return a.logits

    # -- the stages -------------------------------------------------------------

    def embed(self, a: Activations, w: dict, layer, kv) -> None:
        if self.dtype == "int8":   # the row of the int8 wte the head streams, dequantized
            q, s = self.q[w["wte"]]
            row = q[a.token].astype(np.float32) * s[a.token]
        else:
            row = self.w[w["wte"]][a.token]
        a.x = nx.add(row, self.w[w["wpe"]][a.pos])

    def ln_1(self, a: Activations, w: dict, layer, kv) -> None:
        a.h = nx.layernorm(a.x, self.w[w["gain"]], self.w[w["bias"]], self.eps)

    ln_2 = ln_1

    def attn_qkv(self, a: Activations, w: dict, layer, kv) -> None:
        a.qkv = self.linear(a.h, w["w"], w["b"])   # (3 n_embd,)

    def attn_core(self, a: Activations, w: dict, layer: int, kv: KVCache) -> None:
        """Each head attends over positions 0..pos of the cache: softmax(q k^T / sqrt(head_dim)) v
        (numerics.attention: every head at once)."""
        q, k, v = np.split(a.qkv, 3)
        n = a.pos + 1
        if self.kv_dtype == "int8":
            (kv.keys[layer, a.pos], kv.key_scales[layer, a.pos]) = self.kv_quantize(k)
            (kv.values[layer, a.pos], kv.value_scales[layer, a.pos]) = self.kv_quantize(v)
            a.att = attention_int8(q, kv.keys[layer, :n].astype(np.int8), kv.key_scales[layer, :n],
                                   kv.values[layer, :n].astype(np.int8), kv.value_scales[layer, :n], self.cfg.n_head)
            return
        kv.keys[layer, a.pos], kv.values[layer, a.pos] = k, v
        a.att = nx.attention(q, kv.keys[layer, :n], kv.values[layer, :n], self.cfg.n_head)

    def kv_quantize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every head's slice of x quantized (quantize_vector): the int8 values (n_embd,) and
        the scales (n_head,), as the int8 cache holds them."""
        hd = self.cfg.head_dim
        heads = [quantize_vector(x[h * hd:(h + 1) * hd]) for h in range(self.cfg.n_head)]
        return np.concatenate([q for q, _ in heads]), np.array([s for _, s in heads], np.float32)

    def kv_round_trip(self, x: np.ndarray) -> np.ndarray:
        """Every head's slice of x quantized and dequantized, q * scale: what an int8 cache
        entry stands for (mcugpt/check_stages.py feeds it to the float ONNX attention)."""
        q, scales = self.kv_quantize(x)
        return (q.astype(np.float32).reshape(self.cfg.n_head, -1) * scales[:, None]).reshape(-1)

    def attn_proj(self, a: Activations, w: dict, layer, kv) -> None:
        a.x = nx.add(a.x, self.linear(a.att, w["w"], w["b"]))

    def mlp(self, a: Activations, w: dict, layer, kv) -> None:
        hidden = nx.gelu_tanh(self.linear(a.h, w["w_fc"], w["b_fc"]))   # (4 n_embd,)
        a.x = nx.add(a.x, self.linear(hidden, w["w_proj"], w["b_proj"]))

    def head(self, a: Activations, w: dict, layer, kv) -> None:
        """The final layer norm, then the LM head tied to the token embedding."""
        h = nx.layernorm(a.x, self.w[w["gain"]], self.w[w["bias"]], self.eps)
        a.logits = self.linear(h, w["wte"], None)   # (vocab_size,)


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
