"""Unloadable models stop with one line naming the path and the cause, a hub model offline at once; loading a
model never moves the global torch RNG, so a cold cache and a warm one give the same run; a converted GGUF
cache is used only while it matches its manifest; a saved adapter names its base's hub id. No test touches
the network (HF_HUB_OFFLINE=1, an empty HF_HOME or hub cache)."""
import json
import os
import re
import time

import huggingface_hub.constants
import pytest
import torch
from accelerate.utils import set_seed
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

from conftest import TINY, assert_one_error_line, cli_process, compose_config, flip_a_byte
from lora_one import ConfigError
from lora_one.manifest import manifest_damage, sha256_of, write_manifest
from lora_one.models import load_model, load_tokenizer
from lora_one.models.loading import _cache_problem, base_model_id, name_base_model

FAKE_HUB_ID = "nobody-lora-one-test/no-such-model"


def test_cli_names_an_unreachable_hub_id(tmp_path):
    proc = cli_process(TINY + [f"model.path={FAKE_HUB_ID}"], tmp_path / "run", HF_HOME=str(tmp_path / "hf_home"))
    assert_one_error_line(proc, f"error: model.path '{FAKE_HUB_ID}' is not in the local Hugging Face cache, "
                                "and HF_HUB_OFFLINE=1 forbids downloading it")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """In this process: the hub is offline and its cache empty."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))


def test_hub_id_of_the_weights_offline_is_one_line(offline_hub, tmp_path):
    cfg = compose_config(["model=smollm2_135m", f"model.path={FAKE_HUB_ID}"])
    with pytest.raises(ConfigError, match=f"^model.path '{FAKE_HUB_ID}' is not in the local Hugging Face cache"):
        load_model(cfg.model, None, str(tmp_path / "cache"))


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE when imported: offline only through the environment, cache empty."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("hub", ["HF_HUB_OFFLINE=1", "unreachable"])
def test_a_hub_model_offline_fails_at_once_in_one_line(no_hub_cache, monkeypatch, tmp_path, hub):
    if hub == "unreachable":
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused, on this machine
        cause = "the hub (http://127.0.0.1:9) does not answer"
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        cause = "HF_HUB_OFFLINE=1 forbids downloading it"
    cfg = compose_config(["model=smollm2_135m", f"model.path={FAKE_HUB_ID}"])
    start = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        load_tokenizer(cfg.model, str(tmp_path / "cache"))
    assert time.perf_counter() - start < 5
    assert str(refused.value) == f"model.path '{FAKE_HUB_ID}' is not in the local Hugging Face cache, and {cause}"


def write_tiny_checkpoint(directory, with_weights: bool) -> None:
    cfg = compose_config(TINY)
    model = load_model(cfg.model, load_tokenizer(cfg.model, cfg.cache_dir), cfg.cache_dir)
    model.save_pretrained(directory)
    if not with_weights:
        os.remove(os.path.join(directory, "model.safetensors"))


@pytest.mark.parametrize("layout,cause", [
    ("empty", "is an empty directory"),
    ("no_weights", r"has no weights \(none of model.safetensors,"),
    ("no_config", r"has no config.json \(not a transformers model directory\)"),
])
def test_unusable_model_dir_is_named_with_the_cause(offline_hub, tmp_path, layout, cause):
    directory = tmp_path / "model"
    directory.mkdir()
    if layout == "no_weights":
        write_tiny_checkpoint(directory, with_weights=False)
    elif layout == "no_config":
        (directory / "model.safetensors").write_bytes(b"")
    cfg = compose_config(["model=smollm2_135m", f"model.path={directory}"])
    with pytest.raises(ConfigError, match=f"^model.path '{directory}' {cause}"):
        load_tokenizer(cfg.model, str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=f"^model.path '{directory}' {cause}"):
        load_model(cfg.model, None, str(tmp_path / "cache"))


def test_tiny_tokenizer_needs_no_cache_and_leaves_the_rng_alone(tmp_path):
    """A cold, empty cache dir and a warm one: the tokenizer reads neither, the RNG is where set_seed
    left it, and the random tiny weights depend on the seed alone."""
    cfg = compose_config(TINY)
    weights = []
    for cache in (tmp_path / "cold", cfg.cache_dir):
        set_seed(11)
        seeded = torch.get_rng_state()
        tokenizer = load_tokenizer(cfg.model, str(cache))
        assert torch.equal(torch.get_rng_state(), seeded)
        weights.append(load_model(cfg.model, tokenizer, str(cache)).state_dict())
    assert not (tmp_path / "cold").exists()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


def test_pretrained_load_leaves_the_rng_alone(tmp_path):
    write_tiny_checkpoint(tmp_path / "model", with_weights=True)
    cfg = compose_config(["model=smollm2_135m", f"model.path={tmp_path / 'model'}", "model.builtin_tokenizer=true"])
    tokenizer = load_tokenizer(compose_config(TINY).model, cfg.cache_dir)
    set_seed(5)
    seeded = torch.get_rng_state()
    load_model(cfg.model, tokenizer, cfg.cache_dir)
    assert torch.equal(torch.get_rng_state(), seeded)


@pytest.mark.slow
def test_gguf_conversion_cold_or_warm_leaves_the_rng_alone(tmp_path):
    """The cold cache converts the GGUF (a randomly initialised model is built, then overwritten):
    the RNG after loading equals the seeded one, cold and warm, and so do the weights."""
    cfg = compose_config(["model=smollm2_135m"])
    weights = []
    for _ in ("cold", "warm"):
        set_seed(3)
        seeded = torch.get_rng_state()
        model = load_model(cfg.model, load_tokenizer(cfg.model, str(tmp_path)), str(tmp_path))
        assert torch.equal(torch.get_rng_state(), seeded)
        # copies: the loaded tensors may map the cache's file, which the test then damages in place
        weights.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    cache = next(tmp_path.glob("SmolLM2*"))
    flip_a_byte(cache / "model.safetensors", offset=os.path.getsize(cache / "model.safetensors") // 2)
    again = load_model(cfg.model, load_tokenizer(cfg.model, str(tmp_path)), str(tmp_path)).state_dict()
    assert all(torch.equal(weights[0][name], again[name]) for name in again)  # converted again, not trained on
    assert manifest_damage(str(cache)) is None


def fake_gguf_cache(tmp_path) -> tuple:
    """A converted cache as _converted_gguf_dir leaves it (files, then the manifest naming its GGUF)."""
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)))
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    (cache / "model.safetensors").write_bytes(bytes(1000))
    source = {"file": str(gguf), "bytes": gguf.stat().st_size, "sha256": sha256_of(str(gguf))}
    write_manifest(str(cache), gguf=source)
    return cache, source


@pytest.mark.parametrize("change,problem", [
    (lambda cache, source: None, None),
    (lambda cache, source: flip_a_byte(cache / "model.safetensors", 10),
     r"^is damaged \(model.safetensors does not match its sha256 \(damaged\)\)$"),
    (lambda cache, source: (cache / "model.safetensors").write_bytes(bytes(10)),
     r"^is damaged \(model.safetensors is 10 bytes, 1000 were written \(truncated\?\)\)$"),
    (lambda cache, source: (cache / "config.json").unlink(), r"^is damaged \(config.json is missing\)$"),
    (lambda cache, source: (cache / "manifest.json").unlink(), r"^has no manifest.json \(an interrupted or older"),
    (lambda cache, source: (cache / "manifest.json").write_text("[1"), r"^has a damaged manifest"),
    (lambda cache, source: source.update(sha256="0" * 64), r"^was converted from another model.Q4_1.gguf than the one"),
])
def test_a_gguf_cache_is_used_only_while_it_matches_its_manifest_and_its_gguf(tmp_path, change, problem):
    """The de-quantised cache is read by every later run: checked like data, converted again when it fails."""
    cache, source = fake_gguf_cache(tmp_path)
    change(cache, source)
    found = _cache_problem(str(cache), source)
    assert found is None if problem is None else re.search(problem, found), found


@pytest.mark.parametrize("overrides,hub_id", [
    (["model=smollm2_135m"], "HuggingFaceTB/SmolLM2-135M-Instruct"),
    (["model=llama2_7b"], "meta-llama/Llama-2-7b-hf"),
    (["model=llama2_7b", "model.path=/data/llama-2-7b"], "meta-llama/Llama-2-7b-hf"),
    (["model=t5_base"], "google-t5/t5-base"),
    (["model=tiny_llama"], None),
    (["model=smollm2_135m", "model.hub_id=null", "model.path=org/model"], "org/model"),
    (["model=smollm2_135m", "model.hub_id=null", "model.path=/data/model"], None),
])
def test_base_model_id(overrides, hub_id):
    assert base_model_id(compose_config(overrides).model) == hub_id


@pytest.mark.parametrize("hub_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", None])
def test_saved_adapter_names_the_hub_id_of_its_base(offline_hub, tmp_path, hub_id):
    """As run_exp saves an adapter: save_pretrained, then name_base_model on the directory. The
    adapter config and the model card name the hub id; without one, what PEFT wrote stays."""
    cfg = compose_config(TINY + [f"model.hub_id={hub_id or 'null'}"])
    model = load_model(cfg.model, load_tokenizer(cfg.model, cfg.cache_dir), cfg.cache_dir)
    peft_model = get_peft_model(model, LoraConfig(target_modules=["q_proj"], r=2))
    written_by_peft = peft_model.peft_config["default"].base_model_name_or_path
    peft_model.save_pretrained(tmp_path)
    as_saved = json.loads((tmp_path / "adapter_config.json").read_text())
    name_base_model(str(tmp_path), cfg.model)
    renamed = json.loads((tmp_path / "adapter_config.json").read_text())
    assert renamed == {**as_saved, "base_model_name_or_path": hub_id or written_by_peft}  # the rest is kept
    card = ModelCard.load(tmp_path / "README.md")
    if hub_id:
        assert card.data.base_model == hub_id and f"base_model:adapter:{hub_id}" in card.data.tags


def test_a_verified_gguf_cache_is_hashed_once_per_process_while_its_files_stay_unchanged(tmp_path, monkeypatch):
    """load_tokenizer and load_model both resolve the cache: the second hashes nothing; a file written since
    (here the GGUF, rewritten with the same bytes: only its mtime changes) is hashed and checked again."""
    from omegaconf import OmegaConf

    from lora_one.models import loading

    made, source = fake_gguf_cache(tmp_path)
    cache = made.rename(tmp_path / "model.Q4_1")  # where _converted_gguf_dir keeps model.Q4_1.gguf's cache
    cfg = OmegaConf.create({"name": "fake", "gguf_package": None, "gguf_file": source["file"]})
    monkeypatch.setattr(loading, "_verified_caches", {})
    hashed = []
    monkeypatch.setattr(loading, "sha256_of", lambda path: hashed.append(path) or sha256_of(path))
    monkeypatch.setattr(loading, "manifest_damage", lambda path: hashed.append(path) or manifest_damage(path))
    assert loading._converted_gguf_dir(cfg, str(tmp_path)) == str(cache)
    first = len(hashed)
    assert first == 2  # the GGUF, then the cache's files
    assert loading._converted_gguf_dir(cfg, str(tmp_path)) == str(cache)
    assert len(hashed) == first
    gguf = tmp_path / "model.Q4_1.gguf"
    time.sleep(0.01)
    gguf.write_bytes(gguf.read_bytes())
    assert loading._converted_gguf_dir(cfg, str(tmp_path)) == str(cache)
    assert len(hashed) == 2 * first
