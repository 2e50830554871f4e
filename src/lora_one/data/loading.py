"""Load a training set (hub id, local file, or the generated toy set), check every row, and turn
it into (prompt, response) pairs with the dataset's template."""
import contextlib
import logging
import os
import random
from dataclasses import dataclass

from omegaconf import DictConfig

from lora_one import ConfigError
from lora_one.data.files import check_data_file, read_jsonl, row_name
from lora_one.data.glue import glue_file, read_glue_tsv
from lora_one.data.templates import TEMPLATES, build_prompt, chat_prompt
from lora_one.data.toy_math import generate_toy_math

log = logging.getLogger(__name__)

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_raw_rows(cfg: DictConfig, seed: int) -> tuple[list[dict], str]:
    """The dataset's rows as dicts, and a short description of where they came from."""
    if cfg.path:
        path = os.path.expanduser(str(cfg.path))
        if not os.path.exists(path):
            raise ConfigError(f"dataset.path '{cfg.path}' does not exist")
        if os.path.isdir(path) or path.endswith(".tsv"):  # a GLUE task folder (its train.tsv) or TSV file
            train_file = glue_file(path, "train.tsv")
            return read_glue_tsv(cfg.name, train_file), train_file  # it checks the file it reads
        check_data_file(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise ConfigError(f"dataset.path '{cfg.path}': unsupported extension {ext!r}; "
                              f"use one of {sorted(LOCAL_FORMATS)}")
        if ext == ".jsonl":  # read here, so that row N is line N in every error
            return read_jsonl(path), path
        import datasets

        try:
            ds = datasets.load_dataset(LOCAL_FORMATS[ext], data_files=path, split="train")
        except Exception as err:  # datasets reports schema problems deep in pyarrow; name the file
            raise ConfigError(f"dataset.path '{cfg.path}' could not be parsed as {ext}: {err}") from err
        return ds.to_list(), path
    if cfg.name == "toy_math":
        return generate_toy_math(int(cfg.num_generated), seed), f"toy_math(n={cfg.num_generated}, seed={seed})"
    if not cfg.hub_id:
        raise ConfigError(f"dataset '{cfg.name}' has neither dataset.path nor dataset.hub_id")
    ds = load_hub_dataset(cfg.hub_id, cfg.hub_config, cfg.split, "dataset.path")
    return ds.to_list(), f"{cfg.hub_id}[{cfg.hub_config or ''}:{cfg.split}]"


def load_hub_dataset(hub_id: str, config: str | None, split: str, local_setting: str):
    """`datasets.load_dataset` of a hub dataset (see `reaching_hub` for when it is unavailable)."""
    import datasets

    with reaching_hub(hub_id, config, split, local_setting):
        return datasets.load_dataset(hub_id, config, split=split)


@contextlib.contextmanager
def reaching_hub(hub_id: str, config: str | None, split: str, local_setting: str):
    """A hub dataset that is neither cached nor reachable (HF_HUB_OFFLINE=1, no network, no such repo)
    is one ConfigError naming it, the cause, and the setting (`local_setting`) for a local copy."""
    import datasets

    try:
        yield
    except (ConnectionError, FileNotFoundError) as err:  # DatasetNotFoundError is a FileNotFoundError
        offline = ", HF_HUB_OFFLINE=1" if datasets.config.HF_HUB_OFFLINE else ""
        cause = " ".join(str(err).split())  # one line
        raise ConfigError(f"hub dataset '{hub_id}' (config {config}, split {split}) is neither cached nor reachable "
                          f"({cause}{offline}): download it once with network, "
                          f"or set {local_setting} to a local copy") from err


def to_examples(rows: list[dict], cfg: DictConfig, source: str) -> list[dict[str, str]]:
    """Check that every row has every mapped column, then format prompts and responses."""
    if cfg.template not in TEMPLATES:
        raise ConfigError(f"dataset.template '{cfg.template}' is unknown; known: {sorted(TEMPLATES)}")
    if not isinstance(cfg.chat_template, bool):
        raise ConfigError(f"dataset.chat_template must be true or false (got {cfg.chat_template!r})")
    columns = dict(cfg.columns)
    if "response" not in columns:
        raise ConfigError(f"dataset.columns of '{cfg.name}' must map 'response' to a column")
    optional = {"input"}  # alpaca-style rows often leave `input` out or empty
    examples = []
    for idx, row in enumerate(rows):
        fields = {}
        for placeholder, column in columns.items():
            value = row.get(column)
            if value is None and placeholder not in optional:
                raise ConfigError(f"{source}: {row_name(source, idx)} has no field '{column}' "
                                  f"(dataset.columns.{placeholder})")
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{source}: {row_name(source, idx)} field '{column}' holds a "
                                  f"{'dict' if isinstance(value, dict) else 'list'} where text is expected "
                                  f"(dataset.columns.{placeholder})")
            fields[placeholder] = "" if value is None else value
        response = fields.pop("response")
        if cfg.label_names is not None:
            response = label_word(response, cfg.label_names, f"{source}: {row_name(source, idx)}")
        fields["task"] = cfg.name
        prompt = build_prompt(cfg.template, fields)
        if cfg.chat_template:
            prompt = chat_prompt(prompt, cfg.label_names)
        examples.append({"prompt": prompt, "response": str(response)})
    return examples


def label_word(label, label_names, where: str) -> str:
    """The word of class index `label` (an int, or its digits as text). Any other label is one
    ConfigError naming `where` and the allowed labels: -1 (the hub's GLUE test split: no label) would
    index the last word, and 1.5 or "yes" are no class."""
    digits = isinstance(label, str) and label.strip().isdecimal()
    index = int(label) if digits or (isinstance(label, int) and not isinstance(label, bool)) else None
    if index is None or not 0 <= index < len(label_names):
        allowed = ", ".join(f"{i} ({word})" for i, word in enumerate(label_names))
        raise ConfigError(f"{where}: label {label!r} is not a class index of dataset.label_names: {allowed}")
    return label_names[index]


@dataclass
class Splits:
    """The (train, held-out) examples of a dataset and what splitting it found (results.json `data`)."""
    train: list[dict[str, str]]
    held_out: list[dict[str, str]]
    report: dict


def split_examples(cfg: DictConfig, seed: int) -> Splits:
    """A seeded shuffle, the first rows held out for the eval loss (`held_out_size`), the training rows
    after them that are not copies of a held-out row, at most `max_train_samples` of them.

    Identical rows (same prompt and response) never sit on both sides: a held-out row also trained on
    measures memorisation, not generalisation. Their training copies are removed, not the whole file
    deduplicated, so data without duplicates is split as before, and copies inside the training set
    (a dataset's deliberate weighting) stay."""
    rows, source = load_raw_rows(cfg, seed)
    examples = to_examples(rows, cfg, source)
    random.Random(seed).shuffle(examples)
    eval_size = held_out_size(cfg, len(examples), source)
    held_out, rest = examples[:eval_size], examples[eval_size:]
    held_out_keys = {identity(ex) for ex in held_out}
    train = [ex for ex in rest if identity(ex) not in held_out_keys]
    copies = len(rest) - len(train)
    if not train:
        raise ConfigError(f"dataset '{cfg.name}' from {source} has no training rows: "
                          f"all {copies} rows after the {eval_size} held out are copies of held-out rows")
    if cfg.max_train_samples:
        train = train[: int(cfg.max_train_samples)]
    duplicates = len(examples) - len({identity(ex) for ex in examples})
    log.info("dataset %s from %s: %d train, %d held-out%s", cfg.name, source, len(train), len(held_out),
             f"; {duplicates} rows repeat an earlier one, {copies} training copies of held-out rows removed"
             if duplicates else "")
    return Splits(train, held_out, {"source": source, "rows": len(examples), "duplicate_rows": duplicates,
                                    "train_copies_of_held_out_removed": copies})


def identity(example: dict[str, str]) -> tuple[str, str]:
    return example["prompt"], example["response"]


def held_out_size(cfg: DictConfig, rows: int, source: str) -> int:
    """`dataset.eval_size`, capped at a tenth of the rows (the rest trains), with a warning saying so."""
    eval_size = min(int(cfg.eval_size), rows // 10)
    if eval_size < 1:
        raise ConfigError(f"dataset '{cfg.name}' from {source}: {rows} rows leave no held-out row for the "
                          f"eval loss (dataset.eval_size={cfg.eval_size}, at most a tenth of the rows is held out)")
    if eval_size < int(cfg.eval_size):
        log.warning("dataset.eval_size=%s is more than a tenth of the %d rows of %s: %d rows held out",
                    cfg.eval_size, rows, source, eval_size)
    return eval_size


def load_splits(cfg: DictConfig, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) examples (`split_examples`)."""
    splits = split_examples(cfg, seed)
    return splits.train, splits.held_out
