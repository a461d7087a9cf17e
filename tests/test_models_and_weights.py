"""Presets, synthetic weights and Hugging Face checkpoints."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from compiler.config import load_preset
from compiler.pipeline import load_model
from compiler.weights import load_checkpoint, synthetic_weights, tensor_shapes
from target.errors import McugptError


def test_presets_have_gpt2_shapes():
    gpt2 = load_preset("gpt2")
    assert (gpt2.n_layer, gpt2.n_head, gpt2.n_embd, gpt2.n_ctx, gpt2.vocab_size) == (12, 12, 768, 1024, 50257)
    assert gpt2.n_params() == 124_439_808  # GPT-2 "124M", tied LM head counted once
    assert load_preset("distilgpt2").n_layer == 6
    medium = load_preset("gpt2-medium")
    assert (medium.n_layer, medium.n_head, medium.n_embd) == (24, 16, 1024)
    tiny = load_preset("tiny")
    assert tiny.vocab_size == 50257 and tiny.n_layer == 2


def test_kv_cache_bytes_per_token_is_gpt2s():
    assert load_preset("gpt2").kv_bytes_per_token == 73_728


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(McugptError, match=r"unknown model preset 'gpt5'.*distilgpt2, gpt2, gpt2-medium, tiny"):
        load_preset("gpt5")


def test_synthetic_weights_are_deterministic_and_seeded():
    cfg = load_preset("tiny")
    a, b, c = synthetic_weights(cfg, 0), synthetic_weights(cfg, 0), synthetic_weights(cfg, 1)
    assert set(a) == set(tensor_shapes(cfg))
    for name, shape in tensor_shapes(cfg).items():
        assert a[name].shape == shape and a[name].dtype == np.float32
        assert np.array_equal(a[name], b[name])
    assert not np.array_equal(a["h.0.mlp.c_fc.weight"], c["h.0.mlp.c_fc.weight"])
    # layer norms are not the identity, so a skipped layer norm changes the output
    assert abs(a["h.0.ln_1.weight"].std() - 0.2) < 0.05 and abs(a["h.0.ln_1.bias"].std() - 0.2) < 0.05


def _write_checkpoint(folder, cfg, weights, prefix="transformer.", drop=None, reshape=None):
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {prefix + k: v for k, v in weights.items() if k != drop}
    if reshape:
        tensors[prefix + reshape] = np.zeros((3, 5), np.float32)
    tensors["lm_head.weight"] = weights["wte.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
        "n_positions": cfg.n_ctx, "vocab_size": cfg.vocab_size, "layer_norm_epsilon": 1e-5}))


def test_checkpoint_folder_loads_with_hf_names_and_its_config_wins(tmp_path, tiny):
    cfg, w = tiny
    _write_checkpoint(tmp_path / "ckpt", cfg, w)
    # --model gpt2 names the model, but the folder's config.json gives the shapes
    cfg2, w2, _ = load_model("gpt2", str(tmp_path / "ckpt"))
    assert (cfg2.n_layer, cfg2.n_embd, cfg2.n_ctx) == (cfg.n_layer, cfg.n_embd, cfg.n_ctx)
    for k in w:
        assert np.array_equal(w[k], w2[k])


def test_checkpoint_without_prefix_loads(tmp_path, tiny):
    cfg, w = tiny
    _write_checkpoint(tmp_path / "ckpt", cfg, w, prefix="")
    assert np.array_equal(load_checkpoint(tmp_path / "ckpt", cfg)["h.1.mlp.c_proj.weight"],
                          w["h.1.mlp.c_proj.weight"])


def test_missing_tensor_is_named(tmp_path, tiny):
    cfg, w = tiny
    _write_checkpoint(tmp_path / "ckpt", cfg, w, drop="h.1.attn.c_proj.bias")
    with pytest.raises(McugptError, match=r"missing tensor 'h.1.attn.c_proj.bias' \(expected shape \[64\]\)"):
        load_checkpoint(tmp_path / "ckpt", cfg)


def test_misshaped_tensor_names_both_shapes(tmp_path, tiny):
    cfg, w = tiny
    _write_checkpoint(tmp_path / "ckpt", cfg, w, reshape="h.0.mlp.c_fc.weight")
    with pytest.raises(McugptError, match=r"'h.0.mlp.c_fc.weight' has shape \[3, 5\], expected \[64, 256\]"):
        load_checkpoint(tmp_path / "ckpt", cfg)


def test_missing_folder_files_are_clear_errors(tmp_path):
    with pytest.raises(McugptError, match="no such folder"):
        load_model(None, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(McugptError, match="no config.json"):
        load_model(None, str(tmp_path / "empty"))
