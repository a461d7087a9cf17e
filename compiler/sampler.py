"""Choosing the next token: greedy or seeded top-k sampling, defined to be ported to C.

The firmware computes the LM head one vocabulary tile at a time and never holds all the
logits, so both decoders work on a running top-k (k = 1 for greedy). Everything here is
float32 and sequential so runtime_c/ can do the same operations in the same order.

The PRNG is xorshift64* (the generator llama2.c uses), seeded as
    state = seed ^ 0x9E3779B97F4A7C15   (and 1 if that is 0)
    next_u32: state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
              return (state * 0x2545F4914F6CDD1D mod 2^64) >> 32
    next_f32: (next_u32 >> 8) / 2^24, in [0, 1)
"""

from dataclasses import dataclass

import numpy as np

from target.errors import McugptError
from target.memory_map import TOPK_MAX

from .numerics import expf

MASK64 = (1 << 64) - 1


class Prng:
    def __init__(self, seed: int):
        self.state = (seed ^ 0x9E3779B97F4A7C15) & MASK64 or 1

    def next_u32(self) -> int:
        s = self.state
        s ^= s >> 12
        s = (s ^ (s << 25)) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def next_f32(self) -> np.float32:
        return np.float32(self.next_u32() >> 8) * np.float32(1.0 / 16777216.0)


@dataclass(frozen=True)
class Sampling:
    """temperature == 0 means greedy (argmax, lowest id on ties)."""
    temperature: float = 0.0
    top_k: int = 40
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


SEED_MAX = MASK64   # the mailbox carries the seed as two 32-bit words
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def check_request(temperature: float, top_k: int, n_new: int, seed: int = 0) -> None:
    """The generation settings the reference and the firmware accept (its top-k buffer holds
    TOPK_MAX candidates); anything else is a one-line error naming the option."""
    # The firmware receives the temperature as a float32: NaN, infinity and values that
    # round to inf or to 0 (the firmware would be greedy, the reference divide by 0) are refused.
    if not (temperature == 0 or FLOAT32_TINY <= temperature <= FLOAT32_MAX):
        raise McugptError(f"--temperature {temperature}: must be 0 (greedy) or a float32 from "
                          f"{FLOAT32_TINY:.3g} to {FLOAT32_MAX:.3g}")
    if not 1 <= top_k <= TOPK_MAX:
        raise McugptError(f"--top-k {top_k}: must be between 1 and {TOPK_MAX}")
    if n_new < 1:
        raise McugptError(f"--tokens {n_new}: must be at least 1")
    if not 0 <= seed <= SEED_MAX:
        raise McugptError(f"--seed {seed}: must be between 0 and {SEED_MAX:,} (64 bits)")


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k largest logits, largest first, lower id first on ties: what the firmware's
    running top-k over vocabulary tiles keeps."""
    return np.argsort(-logits, kind="stable")[:k]


def choose(logits: np.ndarray, sampling: Sampling, rng: Prng | None) -> int:
    if sampling.greedy:
        return int(top_k(logits, 1)[0])
    ids = top_k(logits, sampling.top_k)
    vals = logits[ids].astype(np.float32)
    t = np.float32(sampling.temperature)
    w = expf((vals - vals[0]) / t)  # subtract, divide, exp: every weight in (0, 1]
    total = np.float32(0.0)
    for x in w:  # sequential float32 sum, as the firmware adds them
        total = np.float32(total + x)
    r = np.float32(rng.next_f32() * total)
    acc = np.float32(0.0)
    for i, x in zip(ids, w):
        acc = np.float32(acc + x)
        if r < acc:
            return int(i)
    return int(ids[-1])
