"""A run's data: the split examples encoded at `model.max_length`, with the rows that length costs
counted, logged and reported (results.json `data`), and refused when no row is left to train on or to
measure the held-out loss with."""
import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from lora_one import ConfigError
from lora_one.data.encoding import EncodedRows, encode_counting
from lora_one.data.loading import split_examples

log = logging.getLogger(__name__)
SIDE_NAMES = {"train": "training", "held_out": "held-out"}


@dataclass
class TrainingData:
    train_examples: list[dict]  # the training rows as text (the init encodes them again at init.max_length)
    train_set: list[dict]  # token ids of the training rows that fit max_length
    eval_set: list[dict]  # token ids of the held-out rows that fit max_length
    report: dict  # row counts: results.json `data`


def prepare_data(cfg: DictConfig, seed: int, tokenizer, max_length: int, seq2seq: bool) -> TrainingData:
    """`split_examples` of dataset config `cfg`, each side encoded at `max_length` (`encode_counting`)."""
    splits = split_examples(cfg, seed)
    sides = {"train": encode_counting(tokenizer, splits.train, max_length, seq2seq),
             "held_out": encode_counting(tokenizer, splits.held_out, max_length, seq2seq)}
    report = {**splits.report, **{side: length_report(encoded) for side, encoded in sides.items()}}
    log_length_report(report, max_length)
    for side, encoded in sides.items():
        if not encoded.rows:
            raise ConfigError(f"dataset '{cfg.name}' from {report['source']}: none of the {encoded.dropped} "
                              f"{SIDE_NAMES[side]} rows fits model.max_length={max_length} (each prompt alone fills "
                              "all of it, leaving no response token): raise model.max_length")
    return TrainingData(splits.train, sides["train"].rows, sides["held_out"].rows, report)


def length_report(encoded: EncodedRows) -> dict:
    return {"rows": len(encoded.rows) + encoded.dropped, "dropped_too_long": encoded.dropped,
            "truncated": encoded.truncated, "used": len(encoded.rows)}


def log_length_report(report: dict, max_length: int) -> None:
    """One line; a warning when rows are dropped (they are never trained on, or never measured)."""
    train, held_out = report["train"], report["held_out"]
    dropped = train["dropped_too_long"] + held_out["dropped_too_long"]
    log.log(logging.WARNING if dropped else logging.INFO,
            "model.max_length=%d: %d of %d training and %d of %d held-out rows used; %d and %d dropped (the prompt "
            "alone fills all %d tokens), %d and %d truncated (the response cut short)", max_length, train["used"],
            train["rows"], held_out["used"], held_out["rows"], train["dropped_too_long"],
            held_out["dropped_too_long"], max_length, train["truncated"], held_out["truncated"])
