"""Bad data files and unloadable models stop with one line naming the file (and line) or the path and
the cause; loading a model never moves the global torch RNG, so a cold cache and a warm one give the
same run. No test touches the network (HF_HUB_OFFLINE=1, an empty HF_HOME)."""
import json
import os
import re
import subprocess
import sys

import huggingface_hub.constants
import pytest
import torch
from accelerate.utils import set_seed
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

from conftest import ROOT, TINY, compose_config, run_cli
from lora_one import ConfigError
from lora_one.data import load_splits
from lora_one.models import load_model, load_tokenizer
from lora_one.manifest import manifest_damage, sha256_of, write_manifest
from lora_one.models.loading import _cache_problem, base_model_id, name_base_model

GOOD_LINE = b'{"question": "1+1?", "answer": "#### 2"}\n'
FAKE_HUB_ID = "nobody-lora-one-test/no-such-model"


def offline_env(tmp_path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "WANDB_MODE": "disabled"}


def cli_process(overrides: list[str], tmp_path) -> subprocess.CompletedProcess:
    """run_exp.py in a process of its own: huggingface_hub reads HF_HUB_OFFLINE and HF_HOME when imported."""
    return subprocess.run([sys.executable, "run_exp.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                          env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)


def assert_one_error_line(proc, expected: str) -> None:
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [expected], proc.stderr[-2000:]


def gsm8k_file(tmp_path, content: bytes, name: str = "data.jsonl") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def load_gsm8k(path: str):
    cfg = compose_config(TINY + ["dataset=gsm8k", f"dataset.path={path}"])
    return load_splits(cfg.dataset, cfg.seed)


def test_cli_names_the_file_and_line_of_non_utf8_bytes(tmp_path):
    # line 3 holds "café" in Latin-1: byte 0xe9 is the 18th byte of that line
    path = gsm8k_file(tmp_path, GOOD_LINE * 2 + b'{"question": "caf\xe9?", "answer": "#### 1"}\n')
    proc = run_cli(TINY + ["dataset=gsm8k", f"dataset.path={path}"], tmp_path / "run")
    assert_one_error_line(proc, f"error: {path}: line 3 is not valid UTF-8 (byte 18 of the line: b'\\xe9')")


@pytest.mark.parametrize("content,name,message", [
    (b"", "data.jsonl", r"is empty \(0 bytes\)"),
    (b"\n  \n\t\n", "data.jsonl", r"is empty \(only whitespace\)"),
    (b"", "data.parquet", r"is empty \(0 bytes\)"),
    (b"question,answer\n1+1?,#### 2\nd\xc3\xa9j\xe0,#### 3\n", "data.csv", r": line 3 is not valid UTF-8"),
    (GOOD_LINE * 3 + b'{"question": {"text": "1+1?"}, "answer": "#### 2"}\n', "data.jsonl",
     r": line 4 field 'question' holds a dict where text is expected \(dataset.columns.instruction\)"),
    (GOOD_LINE + b'{"question": "1+1?", "answer": ["#### 2"]}\n' + GOOD_LINE, "data.jsonl",
     r": line 2 field 'answer' holds a list where text is expected \(dataset.columns.response\)"),
    (b'[{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": {"n": 4}}]', "data.json",
     r"data.json: row 2 field 'answer' holds a dict"),
    (GOOD_LINE * 5 + b'{"question": "2+2?"}\n', "data.jsonl", r": line 6 has no field 'answer'"),
    (GOOD_LINE + b'{"question": "2+2?", "answer": }\n', "data.jsonl", r": line 2 is not valid JSON \(Expecting value at column 32\)"),
    (GOOD_LINE + b"\n" + GOOD_LINE, "data.jsonl", r": line 2 is blank"),
    (GOOD_LINE + b'["1+1?", "#### 2"]\n', "data.jsonl", r": line 2 holds a JSON list, not an object"),
])
def test_bad_data_file_is_named_with_its_line(tmp_path, content, name, message):
    path = gsm8k_file(tmp_path, content, name)
    with pytest.raises(ConfigError, match=message) as caught:
        load_gsm8k(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_trailing_blank_lines_and_crlf_are_fine(tmp_path):
    rows = b"".join(b'{"question": "%d+1?", "answer": "#### %d"}\r\n' % (i, i + 1) for i in range(20))
    train, held_out = load_gsm8k(gsm8k_file(tmp_path, rows + b"\r\n\n"))
    assert len(train) + len(held_out) == 20
    assert sorted(ex["response"] for ex in train + held_out) == sorted(f"#### {i + 1}" for i in range(20))


def test_cli_names_an_unreachable_hub_id(tmp_path):
    proc = cli_process(TINY + [f"model.path={FAKE_HUB_ID}"], tmp_path)
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
    flip_byte(cache / "model.safetensors", offset=os.path.getsize(cache / "model.safetensors") // 2)
    again = load_model(cfg.model, load_tokenizer(cfg.model, str(tmp_path)), str(tmp_path)).state_dict()
    assert all(torch.equal(weights[0][name], again[name]) for name in again)  # converted again, not trained on
    assert manifest_damage(str(cache)) is None


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


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
    (lambda cache, source: flip_byte(cache / "model.safetensors", 10),
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
