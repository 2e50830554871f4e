"""Load a training set (hub id, local file, or the generated toy set), check every row, and turn
it into (prompt, response) pairs with the dataset's template."""
import contextlib
import logging
import os
import random

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
        if os.path.isfile(path):
            check_data_file(path)
        if os.path.isdir(path) or path.endswith(".tsv"):  # a GLUE task folder (its train.tsv) or TSV file
            train_file = glue_file(path, "train.tsv")
            return read_glue_tsv(cfg.name, train_file), train_file
        ext = os.path.splitext(path)[1].lower()
        if ext not in LOCAL_FORMATS:
            raise ConfigError(f"dataset.path '{cfg.path}': unsupported extension {ext!r}; use one of {sorted(LOCAL_FORMATS)}")
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
                          f"({cause}{offline}): download it once with network, or set {local_setting} to a local copy") from err


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
                raise ConfigError(f"{source}: {row_name(source, idx)} has no field '{column}' (dataset.columns.{placeholder})")
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{source}: {row_name(source, idx)} field '{column}' holds a "
                                  f"{'dict' if isinstance(value, dict) else 'list'} where text is expected "
                                  f"(dataset.columns.{placeholder})")
            fields[placeholder] = "" if value is None else value
        response = fields.pop("response")
        if cfg.label_names is not None:
            response = cfg.label_names[int(response)]
        fields["task"] = cfg.name
        prompt = build_prompt(cfg.template, fields)
        if cfg.chat_template:
            prompt = chat_prompt(prompt, cfg.label_names)
        examples.append({"prompt": prompt, "response": str(response)})
    return examples


def load_splits(cfg: DictConfig, seed: int) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, held-out) examples: a seeded shuffle, the first `eval_size` rows held out for the
    eval loss, then at most `max_train_samples` training rows."""
    rows, source = load_raw_rows(cfg, seed)
    examples = to_examples(rows, cfg, source)
    random.Random(seed).shuffle(examples)
    eval_size = min(int(cfg.eval_size), len(examples) // 10)
    if eval_size < 1:
        raise ConfigError(f"dataset '{cfg.name}' from {source}: {len(examples)} rows leave no held-out row for the "
                          f"eval loss (dataset.eval_size={cfg.eval_size}, at most a tenth of the rows is held out)")
    held_out, train = examples[:eval_size], examples[eval_size:]
    if cfg.max_train_samples:
        train = train[: int(cfg.max_train_samples)]
    if not train:
        raise ConfigError(f"dataset '{cfg.name}' from {source} has no training rows")
    log.info("dataset %s from %s: %d train, %d held-out", cfg.name, source, len(train), len(held_out))
    return train, held_out
