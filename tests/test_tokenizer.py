"""The tokenizer is GPT-2's own BPE, loaded offline."""

import shutil

import pytest

from compiler.config import EOT_TOKEN
from compiler.tokenizer import encode, load_tokenizer, shipped_vocab_files, token_bytes_table
from target.errors import McugptError


def test_vocab_files_are_openais(tok):
    bpe, enc = shipped_vocab_files()  # raises if the sha256 differ
    assert bpe.name == "vocab.bpe" and enc.name == "encoder.json"


def test_known_gpt2_encodings(tok):
    assert encode(tok, "Hello, world!") == [15496, 11, 995, 0]
    assert encode(tok, " the") == [262]
    assert encode(tok, "<|endoftext|>") == [EOT_TOKEN] == [50256]
    assert tok.n_vocab == 50257


def test_roundtrip_and_token_bytes(tok):
    text = "Stages run one after another: naïve café ☕ 1234"
    assert tok.decode(encode(tok, text)) == text
    table = token_bytes_table(tok, 50257)
    assert b"".join(table[t] for t in encode(tok, text)) == text.encode()
    assert table[EOT_TOKEN] == b"<|endoftext|>"


def test_checkpoint_vocab_files_are_used(tmp_path):
    bpe, enc = shipped_vocab_files()
    shutil.copy(bpe, tmp_path / "merges.txt")
    shutil.copy(enc, tmp_path / "vocab.json")
    own = load_tokenizer(str(tmp_path))
    assert own.name.startswith("gpt2:") and encode(own, "Hello, world!") == [15496, 11, 995, 0]


def test_inconsistent_checkpoint_vocab_is_refused(tmp_path):
    bpe, _ = shipped_vocab_files()
    shutil.copy(bpe, tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    with pytest.raises(McugptError, match="vocab.json and merges.txt do not agree"):
        load_tokenizer(str(tmp_path))
