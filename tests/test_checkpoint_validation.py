"""A Hugging Face checkpoint folder is validated, not coerced.

`--weights DIR` loads only what mcugpt computes exactly: GPT-2's settings (anything else is
refused by name), integer shapes of the right type and range, F32/F16/BF16 tensors of the
config's shapes with finite values, from regular files, as one model.safetensors or as
shards. Every refusal is one McugptError line naming the key, tensor or file.
"""

import dataclasses
import json
import os
import re
import threading

import numpy as np
import pytest
import safetensors
from safetensors.numpy import load_file, save_file

from compiler.pipeline import load_model
from compiler.reference import Reference, generate
from compiler.sampler import Sampling
from target.errors import McugptError

from conftest import mcugpt


def tiny_config(cfg, **changes) -> dict:
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": cfg.n_layer,
              "n_head": cfg.n_head, "n_embd": cfg.n_embd, "n_positions": cfg.n_ctx, "n_ctx": cfg.n_ctx,
              "vocab_size": cfg.vocab_size, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new",
              # keys that do not change inference, accepted as they are
              "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02,
              "summary_type": "cls_index", "summary_use_proj": True, "use_cache": True, "bos_token_id": 50256,
              "eos_token_id": 50256, "task_specific_params": {"text-generation": {"do_sample": True}},
              "torch_dtype": "float32", "transformers_version": "4.46.0"}
    config.update(changes)
    return {k: v for k, v in config.items() if v is not DROP}


DROP = object()   # tiny_config(key=DROP) leaves the key out


def write_checkpoint(folder, cfg, weights, config=None, prefix="transformer.", tensors=None):
    """A folder as Hugging Face's save_pretrained writes it: config.json + model.safetensors.
    `tensors` replaces (or, with None values, removes) tensors by full name."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = {prefix + k: v for k, v in weights.items()}
    for k, v in (tensors or {}).items():
        if v is None:
            stored.pop(k)
        else:
            stored[k] = v
    save_file(stored, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or tiny_config(cfg)))
    return folder


def save_raw(tensors: dict, path, dtypes: dict):
    """save_file, but with safetensors dtype names numpy has no type for (bfloat16)."""
    specs = {k: safetensors.TensorSpec(dtype=dtypes.get(k, v.dtype.name), shape=v.shape, data_ptr=v.ctypes.data,
                                       data_len=v.nbytes) for k, v in tensors.items()}
    safetensors.serialize_file(specs, str(path))


def load(folder):
    return load_model(None, str(folder))


def refused(folder, match):
    with pytest.raises(McugptError, match=match) as e:
        load(folder)
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.fixture
def ckpt(tmp_path, tiny):
    cfg, w = tiny
    return write_checkpoint(tmp_path / "ckpt", cfg, w)


def set_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not DROP}))


# 1. Settings mcugpt does not compute are refused, naming the setting

@pytest.mark.parametrize("key, accepted, refused_values", [
    # GPT-2's tanh GELU under each of its names; "gelu" is the erf GELU, another function
    ("activation_function", ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate", DROP],
     ["relu", "gelu", "quick_gelu", None]),
    ("scale_attn_weights", [True, DROP], [False, "true"]),              # a string is not JSON's true
    ("scale_attn_by_inverse_layer_idx", [False, DROP], [True, 0]),       # nor is 0 JSON's false
    ("reorder_and_upcast_attn", [True, False], ["yes"]),                # float32 attention either way
    ("tie_word_embeddings", [True, DROP], [False]),
    ("model_type", ["gpt2", DROP], ["llama", "GPT2"]),
    ("add_cross_attention", [False, DROP], [True]),
    ("n_inner", [None, 256, DROP], [128, 256.0]),                        # tiny's MLP is 4 x 64 = 256 wide
    ("pruned_heads", [{}, DROP], [{"0": [1]}]),
    ("quantization_config", [None, DROP], [{"quant_method": "gptq", "bits": 4}]),
])
def test_a_setting_loads_only_with_a_value_mcugpt_computes(ckpt, tiny, key, accepted, refused_values):
    for value in accepted:
        set_config(ckpt, **{key: value})
        assert np.array_equal(load(ckpt)[1]["h.1.mlp.c_fc.weight"], tiny[1]["h.1.mlp.c_fc.weight"])
    for value in refused_values:
        set_config(ckpt, **{key: value})
        refused(ckpt, re.escape(f"config.json: {key} {json.dumps(value)} is not supported: mcugpt implements"))


def test_hugging_face_aliases_of_a_setting_must_agree(ckpt):
    set_config(ckpt, hidden_size=64, num_hidden_layers=2, max_position_embeddings=128)
    assert load(ckpt)[0].n_ctx == 128
    set_config(ckpt, num_hidden_layers=1)
    refused(ckpt, r"config.json: n_layer 2 and num_hidden_layers 1 disagree")


# 2. Every config key the loader reads has a type and a range

@pytest.mark.parametrize("key, raw_value, match", [
    ("n_layer", "2.5", r"n_layer must be an integer, got 2.5"),
    ("n_layer", '"2"', r'n_layer must be an integer, got "2" \(a string\)'),
    ("n_layer", "true", r"n_layer must be an integer, got true"),
    ("n_layer", "null", r"n_layer must be an integer, got null"),
    ("n_layer", "NaN", r"n_layer must be an integer, got NaN"),
    ("n_layer", "2.0", r"n_layer must be an integer, got 2.0"),
    ("n_layer", "0", r"n_layer 0 is outside 1..255"),
    ("n_head", "-4", r"n_head -4 is outside 1..65536"),
    ("n_head", "3", r"n_embd 64 is not divisible by n_head 3"),
    ("n_embd", "100000000000", r"n_embd 100000000000 is outside 1..65536"),
    ("vocab_size", "1e999", r"vocab_size must be an integer, got Infinity"),
    ("n_positions", "[128]", r"n_positions must be an integer, got \[128\]"),
    ("n_ctx", "64", r"n_positions 128 and n_ctx 64 disagree"),
    ("hidden_size", "32", r"n_embd 64 and hidden_size 32 disagree"),
    ("layer_norm_epsilon", "NaN", r"layer_norm_epsilon must be a positive number that float32 holds .*got NaN"),
    ("layer_norm_epsilon", "-1e-05", r"layer_norm_epsilon must be a positive number .*got -1e-05"),
    ("layer_norm_epsilon", "0", r"layer_norm_epsilon must be a positive number .*got 0.0"),
    ("layer_norm_epsilon", "1e-50", r"layer_norm_epsilon must be a positive number .*got 1e-50"),
    ("layer_norm_epsilon", "1e39", r"layer_norm_epsilon must be a positive number .*got 1e\+39"),
    ("layer_norm_epsilon", '"1e-5"', r'layer_norm_epsilon must be a positive number .*got "1e-5"'),
    ("layer_norm_epsilon", "Infinity", r"layer_norm_epsilon must be a positive number .*got Infinity"),
])
def test_config_integers_and_epsilon_have_a_type_and_a_range(ckpt, tiny, key, raw_value, match):
    config = tiny_config(tiny[0])
    config[key] = "@"
    (ckpt / "config.json").write_text(json.dumps(config).replace('"@"', raw_value))
    refused(ckpt, r"config.json: .*" + match)


@pytest.mark.parametrize("key, value, tensor, names", [
    ("n_positions", 256, "wpe.weight", r"\[256, 64\] = \[n_positions, n_embd\]"),
    ("vocab_size", 50000, "wte.weight", r"\[50000, 64\] = \[vocab_size, n_embd\]"),
])
def test_context_and_vocabulary_must_match_the_tensors(ckpt, key, value, tensor, names):
    set_config(ckpt, **{key: value, "n_ctx": DROP})
    refused(ckpt, rf"tensor '{tensor}' has shape \[\d+, 64\], expected {names} from config.json")


def test_the_vocabulary_must_hold_every_token_the_tokenizer_gives(tmp_path, tiny):
    cfg, w = tiny
    small = {**w, "wte.weight": w["wte.weight"][:1000]}
    folder = write_checkpoint(tmp_path / "ckpt", cfg, small, config=tiny_config(cfg, vocab_size=1000))
    refused(folder, r"config.json: vocab_size 1000 is less than the tokenizer's 50257 tokens \(gpt2\)")


@pytest.mark.parametrize("content, match", [
    (b'{"n_layer": 2, "name": "caf\xe9"}', r"config.json: not UTF-8 text \(byte 0xe9 at offset 27\)"),
    (b'{"n_layer": 2,', r"config.json: not valid JSON \(.* at line 1 column 15\)"),
    (b"[" * 100_000 + b"]" * 100_000, r"config.json: JSON nested too deeply to read"),
    (b"[1, 2]", r"config.json: the JSON must be an object \{...\}, not a list \[...\]"),
    (b"null", r"config.json: the JSON must be an object \{...\}, not null"),
    (b'{"n_layer": 2, "n_layer": 1}', r"config.json: key 'n_layer' appears twice"),
])
def test_unreadable_config_json_is_one_clear_line(ckpt, content, match):
    (ckpt / "config.json").write_bytes(content)
    refused(ckpt, match)


def test_vocab_json_must_be_an_object_of_ids(ckpt):
    (ckpt / "merges.txt").write_text("#version: 0.2\n")
    (ckpt / "vocab.json").write_text('["a", "b"]')
    refused(ckpt, r"vocab.json: the JSON must be an object \{...\}, not a list \[...\]")
    (ckpt / "vocab.json").write_text('{"a": "0"}')
    refused(ckpt, r"vocab.json: token 'a' has id \"0\"; ids must be integers")
    (ckpt / "vocab.json").write_text('{"a": 0}')
    (ckpt / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe\n")
    refused(ckpt, r"merges.txt: not UTF-8 text")


# 3. Tensors: F32, F16 and BF16, exactly; the config's shapes; finite values

def test_f16_and_bf16_load_as_their_exact_float32_values_and_other_dtypes_are_refused(tmp_path, tiny):
    cfg, w = tiny
    f16 = {k: v.astype(np.float16) for k, v in w.items()}
    write_checkpoint(tmp_path / "f16", cfg, f16)
    got = load(tmp_path / "f16")[1]
    for k, v in f16.items():
        assert got[k].dtype == np.float32 and np.array_equal(got[k], v.astype(np.float32))

    # bfloat16: a float32's top 16 bits; 1 + 2^-7 is the bfloat16 just above 1
    bits = {"transformer." + k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in w.items()}
    bits["transformer.h.0.ln_1.bias"][:3] = [0x3F81, 0xC0A0, 0x0001]   # 1.0078125, -5.0, the least subnormal
    (tmp_path / "bf16").mkdir()
    save_raw(bits, tmp_path / "bf16" / "model.safetensors", dtypes=dict.fromkeys(bits, "bfloat16"))
    (tmp_path / "bf16" / "config.json").write_text(json.dumps(tiny_config(cfg)))
    got = load(tmp_path / "bf16")[1]
    assert got["h.0.ln_1.bias"][:3].tolist() == [1.0078125, -5.0, 2.0 ** -133]
    for k, v in w.items():
        truncated = (v.view(np.uint32) & 0xFFFF0000).view(np.float32)
        if k != "h.0.ln_1.bias":
            assert np.array_equal(got[k], truncated)

    # integers, booleans and float64 are not weights mcugpt reads: refused, not coerced
    for dtype, array in [("I64", np.zeros(64, np.int64)), ("I32", np.zeros(64, np.int32)),
                         ("BOOL", np.zeros(64, np.bool_)), ("U8", np.zeros(64, np.uint8)),
                         ("F64", np.zeros(64, np.float64))]:
        folder = write_checkpoint(tmp_path / dtype, cfg, w, tensors={"transformer.h.1.ln_2.bias": array})
        refused(folder, rf"tensor 'transformer.h.1.ln_2.bias' is {dtype}; mcugpt reads only F32, F16, BF16 weights")


def test_a_checkpoint_with_more_layers_than_its_config_is_refused(ckpt):
    set_config(ckpt, n_layer=1)
    refused(ckpt, r"tensor 'transformer.h.1.[a-z_.]+' is of block 1, but config.json says n_layer 1")


@pytest.mark.parametrize("name, array", [
    ("transformer.h.0.crossattention.c_attn.weight", np.zeros((64, 128), np.float32)),
    ("score.weight", np.zeros((2, 64), np.float32)),
])
def test_a_tensor_gpt2_does_not_have_is_refused(tmp_path, tiny, name, array):
    cfg, w = tiny
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w, tensors={name: array})
    refused(folder, rf"unexpected tensor '{name}' \(F32 \[{array.shape[0]}, {array.shape[1]}\]\)")


def test_a_tensor_under_both_names_is_refused(tmp_path, tiny):
    cfg, w = tiny
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w, tensors={"h.0.ln_1.bias": w["h.0.ln_1.bias"]})
    refused(folder, r"tensor 'h.0.ln_1.bias' is there twice, as 'h.0.ln_1.bias' and 'transformer.h.0.ln_1.bias'"
            r"|tensor 'h.0.ln_1.bias' is there twice, as 'transformer.h.0.ln_1.bias' and 'h.0.ln_1.bias'")


def test_a_tied_lm_head_and_attention_masks_load_but_an_untied_head_is_refused(tmp_path, tiny):
    cfg, w = tiny
    mask = np.tril(np.ones((1, 1, cfg.n_ctx, cfg.n_ctx), np.uint8))
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w, tensors={
        "lm_head.weight": w["wte.weight"].copy(),   # stored, but equal to wte: tied
        "transformer.h.0.attn.bias": mask, "transformer.h.1.attn.masked_bias": np.array(-1e4, np.float32)})
    assert np.array_equal(load(folder)[1]["wte.weight"], w["wte.weight"])
    head = w["wte.weight"].copy()
    head[7, 3] += 1.0
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w, tensors={"lm_head.weight": head})
    refused(folder, r"lm_head.weight differs from wte.weight: an untied LM head")


@pytest.mark.parametrize("value, why", [
    (np.nan, r"holds nan at flat index 777 \(not finite; 1 such value of 16384\)"),
    (-np.inf, r"holds -inf at flat index 777 \(not finite"),
    (3e38, r"holds 3e\+38 at flat index 777 \(beyond \+-1e\+30, too large to compute with"),
])
def test_non_finite_and_huge_weights_are_refused_with_their_index(tmp_path, tiny, value, why):
    cfg, w = tiny
    bad = w["h.1.mlp.c_fc.weight"].copy()
    bad.flat[777] = value
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w, tensors={"transformer.h.1.mlp.c_fc.weight": bad})
    refused(folder, r"tensor 'transformer.h.1.mlp.c_fc.weight' " + why)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:5], r"not a safetensors file \(5 bytes"),
    (lambda b: (10 ** 12).to_bytes(8, "little") + b[8:], r"not a safetensors file .* says 1000000000000"),
    (lambda b: b[:-4096], r"has a malformed header entry .*data_offsets"),
    (lambda b: b[:8] + b"[" + b[9:], r"model.safetensors \(header\): not valid JSON"),
])
def test_a_damaged_safetensors_file_is_one_clear_line(ckpt, damage, match):
    path = ckpt / "model.safetensors"
    path.write_bytes(damage(path.read_bytes()))
    refused(ckpt, match)


# 4. Files: regular files only, so nothing blocks or reads forever

def no_hang(fn, seconds=20):
    """Run fn(); a FIFO opened for reading would block it forever, so give up after `seconds`."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as e:   # noqa: BLE001 - handed to the test
            result["error"] = e
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked (opened a FIFO?)"
    if "error" in result:
        raise result["error"]
    return result.get("value")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "vocab.json"])
def test_a_fifo_in_place_of_a_file_is_refused_without_blocking(ckpt, name):
    (ckpt / "merges.txt").write_text("#version: 0.2\n")
    (ckpt / name).unlink(missing_ok=True)
    os.mkfifo(ckpt / name)
    with pytest.raises(McugptError, match=rf"{name}: not a regular file \(a FIFO, socket or device\)"):
        no_hang(lambda: load(ckpt))


def test_a_folder_or_a_symlink_loop_in_place_of_a_file_is_refused(ckpt):
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    refused(ckpt, r"config.json: is a folder, not a file")
    (ckpt / "config.json").rmdir()
    os.symlink("config.json", ckpt / "config.json")   # points at itself
    refused(ckpt, r"config.json: cannot read it \(Too many levels of symbolic links\)")


def test_a_missing_folder_or_a_file_instead_of_a_folder_is_refused(tmp_path, ckpt):
    refused(tmp_path / "nowhere", r"--weights .*nowhere: no such folder")
    refused(ckpt / "config.json", r"--weights .*config.json: a file, not a folder \(config.json \+ model.safetensors\)")


# 5. Sharded checkpoints, and a hint for PyTorch's pickles

def write_shards(folder, cfg, weights, prefix=""):
    """Two shards and their index, as save_pretrained(max_shard_size=...) writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(weights)
    weight_map = {}
    for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({prefix + k: weights[k] for k in part}, str(folder / file))
        weight_map.update(dict.fromkeys((prefix + k for k in part), file))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(tiny_config(cfg)))
    return folder


@pytest.mark.parametrize("prefix", ["", "transformer."])
def test_sharded_checkpoint_loads(tmp_path, tiny, prefix):
    cfg, w = tiny
    got = load(write_shards(tmp_path / "ckpt", cfg, w, prefix))[1]
    assert set(got) == set(w) and all(np.array_equal(got[k], w[k]) for k in w)


def edit_index(folder, edit):
    path = folder / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    edit(index["weight_map"])
    path.write_text(json.dumps(index))


def test_sharded_index_is_validated(tmp_path, tiny):
    cfg, w = tiny
    folder = write_shards(tmp_path / "ckpt", cfg, w)
    second = "model-00002-of-00002.safetensors"

    (folder / second).rename(folder / "elsewhere")
    refused(folder, rf"index.json: maps \d+ tensors \(e.g. '[^']+'\) to {second}, which is not in")
    (folder / "elsewhere").rename(folder / second)

    edit_index(folder, lambda m: m.update({"ln_f.bias": "model-00001-of-00002.safetensors"}))
    refused(folder, rf"index.json: tensor 'ln_f.bias' is in {second}, but the index maps it to model-00001")

    edit_index(folder, lambda m: m.update({"ln_f.bias": second, "h.9.ln_1.bias": second}))
    refused(folder, rf"index.json: maps tensor 'h.9.ln_1.bias' to {second}, which does not hold it")

    edit_index(folder, lambda m: m.update({"h.9.ln_1.bias": "../../etc/passwd"}))
    refused(folder, r"index.json: maps tensors to '../../etc/passwd', which is not a file name in the folder")

    edit_index(folder, lambda m: m.pop("h.9.ln_1.bias"))
    third = "model-00003-of-00003.safetensors"
    save_file({"ln_f.bias": w["ln_f.bias"], "h.0.ln_1.gain": w["ln_f.bias"]}, str(folder / third))
    edit_index(folder, lambda m: m.update({"h.0.ln_1.gain": third}))
    refused(folder, rf"tensor 'ln_f.bias' is in both {second} and {third}")


def test_a_pytorch_only_folder_gets_a_conversion_hint(tmp_path, tiny):
    folder = tmp_path / "torch"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config(tiny[0])))
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    message = refused(folder, r"has pytorch_model.bin \(PyTorch pickle\) but no model.safetensors; convert it once")
    assert "save_pretrained(DIR, safe_serialization=True)" in message


# The command line: one `mcugpt: error:` line

@pytest.mark.parametrize("edit, message", [
    (lambda d: set_config(d, activation_function="relu"), 'activation_function "relu" is not supported'),
    (lambda d: set_config(d, layer_norm_epsilon=float("nan")), "layer_norm_epsilon must be a positive number"),
    (lambda d: (d / "config.json").write_text("[" * 100_000), "JSON nested too deeply"),
    (lambda d: set_config(d, n_layer=1), "is of block 1, but config.json says n_layer 1"),
])
def test_compile_with_a_bad_checkpoint_prints_one_error_line(ckpt, tmp_path, edit, message):
    edit(ckpt)
    proc = mcugpt("compile", "--weights", ckpt, "--out", tmp_path / "out")
    assert proc.returncode == 1 and proc.stderr.startswith("mcugpt: error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_a_sharded_bf16_checkpoint_compiles_and_runs_as_its_float32_values(tmp_path, tiny, tok):
    """Converted weights are the model: the board, running a sharded bfloat16 folder, gives
    the tokens the reference gives for the same values held as float32 in memory. Its
    epsilon is the JSON integer 1, which the firmware must still read as a float."""
    cfg, w = tiny
    truncated = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in w.items()}
    folder = write_shards(tmp_path / "ckpt", cfg, truncated, prefix="transformer.")
    set_config(folder, layer_norm_epsilon=1)
    cfg = dataclasses.replace(cfg, layer_norm_epsilon=1.0)
    for file in folder.glob("model-*.safetensors"):
        bits = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in load_file(str(file)).items()}
        save_raw(bits, file, dtypes=dict.fromkeys(bits, "bfloat16"))
    mcugpt("compile", "--weights", folder, "--out", tmp_path / "build", check=True)
    run = json.loads(mcugpt("run", "--build", tmp_path / "build", "--prompt", "Hello, my name is", "--tokens", "5",
                            "--json", "--check", check=True).stdout)
    expected = generate(Reference(cfg, truncated), tok.encode("Hello, my name is"), 5, Sampling()).tokens
    assert run["tokens"] == expected and run["check"]["tokens_equal"]


def test_weights_that_overflow_float32_give_the_references_infinities_and_nans_quietly(tmp_path, tiny):
    """A finite but huge bias (1e30, within the loader's range) overflows to infinity and then
    NaN on the board, exactly as in the reference: `--check` calls that agreement (a NaN on
    both sides agrees), and no numpy warning reaches stderr."""
    cfg, w = tiny
    w = dict(w, **{"h.0.ln_1.bias": np.full_like(w["h.0.ln_1.bias"], 1e30)})
    folder = write_checkpoint(tmp_path / "ckpt", cfg, w)
    mcugpt("compile", "--weights", folder, "--out", tmp_path / "build", check=True)
    proc = mcugpt("run", "--build", tmp_path / "build", "--prompt", "Hello, my name is", "--tokens", "2",
                  "--json", "--check")
    assert proc.returncode == 0 and proc.stderr == ""
    check = json.loads(proc.stdout)["check"]
    assert check["tokens_equal"] and check["logits_identical"] and check["logits_max_abs_error"] == 0.0
