"""GLUE (SST-2, CoLA, MRPC, QNLI, MNLI) as text-to-text classification, scored without generating.

Each example is written with the training prompt of its dataset config, and each label word of
`dataset.label_names` (the verbaliser) is scored as the training target it would be: the word and
the end-of-sequence token, `encode_example` exactly as in training (T5: the decoder's target;
causal: the continuation of the prompt). The prediction is the label whose target has the highest
total log-likelihood Σ_t log p(y_t | prompt, y_<t). Prompts are not truncated here, so every label
is scored in full. Each prompt is read once for all its labels (`shared_prompt_log_probs`: a causal
model continues every label from the prompt's KV cache, T5 decodes every label from one encoder pass),
which gives the scores of one training row per label (tests/eval/test_eval_glue.py checks it against that).

Metrics follow HF `evaluate`'s GLUE conventions: accuracy (SST-2, QNLI, MNLI), Matthews correlation
(CoLA), F1 and accuracy (MRPC), the positive class being label 1 (`acceptable`, `equivalent`).

`paper_protocol_accuracy` is reported beside them, named as such: the LoRA-GA / LoRA-One code's own
GLUE metric, which reads only the first decoding step and counts an example correct when the gold
label's first token is more probable than the other label's first token (strictly). Their code
finds "the other label" as (sum of the label first-token ids present) − (gold id), which for a
3-class task (MNLI) is in general no label's token at all; here, for any number of classes, an
example is correct when the gold label's first token is more probable than every other label's
first token, which equals their rule on 2-class tasks. (A causal model reads the label word after a
space, `encode_example`; with a tokenizer that makes that space a token of its own, e.g. the tiny
models' byte-level one, every label shares its first token and this protocol scores 0. SmolLM2's
and T5's tokenizers start each label with a different word-initial token.)

The labelled dev set is scored (`split: dev`; GLUE test labels are private), or with
`split: validation` the rows that `load_splits` holds out of the training set (same seed, same
`eval_size`), for choosing hyperparameters without looking at dev."""
import os
import re

import torch
from omegaconf import OmegaConf

from lora_one import ConfigError
from lora_one.data.encoding import IGNORE_INDEX, encode_example
from lora_one.data.glue import glue_file, read_glue_tsv
from lora_one.data.loading import load_raw_rows, load_splits, to_examples
from lora_one.eval.benchmark import Benchmark, register
from lora_one.eval.classification import f1_score, matthews_correlation
from lora_one.eval.generation import map_batches, prompt_lengths
from lora_one.eval.records import read_completions, select
from lora_one.eval.scoring import is_encoder_decoder, shared_prompt_log_probs

# Each task's metrics, the headline one first.
TASK_METRICS = {"sst2": ("accuracy",), "cola": ("matthews_correlation",), "mrpc": ("f1", "accuracy"),
                "qnli": ("accuracy",), "mnli": ("accuracy",)}
NO_TRUNCATION = 2**62  # encode_example's max_length when the whole prompt must be read
SPLITS = ("dev", "validation")


def dev_examples(cfg) -> list[dict]:
    """The labelled dev set as training-format examples: `<path>/<dataset.dev_file>` (or the .tsv file
    `path`), else the hub's `dataset.dev_split`."""
    dataset = cfg.dataset
    if cfg.path:
        path = glue_file(cfg.path, dataset.dev_file)
        if os.path.basename(path).startswith("train"):
            raise ConfigError(f"eval.glue.path '{path}' is a training file; GLUE is scored on its dev set "
                              f"(give the task folder or its {dataset.dev_file})")
        return to_examples(read_glue_tsv(dataset.name, path), dataset, path)
    hub_dev = OmegaConf.merge(dataset, {"path": None, "split": dataset.dev_split})
    rows, source = load_raw_rows(hub_dev, seed=0)
    return to_examples(rows, dataset, source)


@torch.no_grad()
def label_log_probs(model, tokenizer, prompts: list[str], label_words: list[str], batch_size: int,
                    accelerator) -> list[list[list[float]]]:
    """[prompt][label] → log p of each token of that label's training target (the word, then eos).
    A batch holds `batch_size` prompts, each read once for all its labels."""
    seq2seq = is_encoder_decoder(model)
    was_training = model.training
    model.eval()

    def run_batch(number: int, indices: list[int]) -> list[list[list[float]]]:
        split = [[prompt_and_target(encode_example(tokenizer, prompts[i], word, NO_TRUNCATION, seq2seq), seq2seq)
                  for word in label_words] for i in indices]
        return shared_prompt_log_probs(model, [rows[0][0] for rows in split],
                                       [[target for _, target in rows] for rows in split],
                                       tokenizer.pad_token_id, accelerator.device)

    scores = map_batches(run_batch, prompt_lengths(tokenizer, prompts), batch_size, accelerator, desc="glue")
    model.train(was_training)
    return scores


def prompt_and_target(row: dict, seq2seq: bool) -> tuple[list[int], list[int]]:
    """An `encode_example` row as (the ids read, the ids scored): the target is where the labels are set
    (causal: after the prompt, which is the same for every label word; seq2seq: the decoder's labels)."""
    target = [label for label in row["labels"] if label != IGNORE_INDEX]
    return (row["input_ids"] if seq2seq else row["input_ids"][:len(row["input_ids"]) - len(target)]), target


def extract_label(text: str, label_words: list[str]) -> str | None:
    """The first label word in `text` (longest first where one contains another: not_equivalent)."""
    alternatives = "|".join(re.escape(w.lower()) for w in sorted(label_words, key=len, reverse=True))
    match = re.search(rf"(?<![a-z_])({alternatives})(?![a-z_])", text.lower())
    return label_words[[w.lower() for w in label_words].index(match.group(1))] if match else None


def paper_protocol_correct(first_token_log_probs: dict[str, float], gold: str) -> bool:
    return all(first_token_log_probs[gold] > lp for word, lp in first_token_log_probs.items() if word != gold)


def task_metrics(task: str, label_words: list[str], gold: list[str], predicted: list[str | None]) -> dict:
    """The task's metrics; a prediction naming no label counts as a wrong one (for binary tasks: the other label).
    `predicted_counts` and `gold_counts` ({label word: rows}; unparsed predictions are in neither) show a
    run that predicts one class almost everywhere, and give the majority-class baseline."""
    scored = [p if p is not None else next(w for w in label_words if w != g) for g, p in zip(gold, predicted)]
    correct = sum(g == p for g, p in zip(gold, scored))
    metrics = {"accuracy": correct / len(gold), "correct": correct, "n": len(gold),
               "unparsed": sum(p is None for p in predicted), "main_metric": TASK_METRICS[task][0],
               "predicted_counts": {w: predicted.count(w) for w in label_words},
               "gold_counts": {w: gold.count(w) for w in label_words}}
    positive = label_words[1]
    if "f1" in TASK_METRICS[task]:
        metrics["f1"] = f1_score(gold, scored, positive)
    if "matthews_correlation" in TASK_METRICS[task]:
        metrics["matthews_correlation"] = matthews_correlation(gold, scored, positive)
    return metrics


def score(cfg, items: list[dict], completions: list[str], log_probs: list[list[list[float]]] | None = None):
    """(metrics, records). `completions` are label words (from the model) or free text (from a file);
    with the model's `log_probs`, each record keeps every label's scores and the paper protocol's verdict."""
    label_words = list(cfg.dataset.label_names)
    records = []
    for item, completion in zip(items, completions):
        predicted = extract_label(completion, label_words)
        records.append({"idx": int(item["id"]), "prompt": item["prompt"], "completion": completion,
                        "predicted": predicted, "gold": item["gold"], "correct": predicted == item["gold"]})
    metrics = task_metrics(cfg.task, label_words, [i["gold"] for i in items], [r["predicted"] for r in records])
    metrics.update(task=cfg.task, split=cfg.split)
    if log_probs is not None:
        for record, per_label in zip(records, log_probs):
            record["log_likelihood"] = {w: sum(lps) for w, lps in zip(label_words, per_label)}
            record["first_token_log_prob"] = {w: lps[0] for w, lps in zip(label_words, per_label)}
            record["paper_protocol_correct"] = paper_protocol_correct(record["first_token_log_prob"], record["gold"])
        metrics["paper_protocol_accuracy"] = sum(r["paper_protocol_correct"] for r in records) / len(records)
    return metrics, records


@register
class GLUE(Benchmark):
    """SST-2, CoLA, MRPC, QNLI, MNLI dev sets, scored by the log-likelihood of each label word."""

    name = "glue"

    def cli_overrides(self, args) -> list[str]:
        """eval/glue.py --task cola also composes `dataset=cola`: its prompt template and label words."""
        return [f"dataset={args.task}"] if args.task else []

    def output_name(self, cfg) -> str:
        """Files are named after the GLUE task: cola_predictions.jsonl."""
        return str(cfg.task)

    def check_config(self, cfg) -> None:
        dataset = cfg.dataset
        if cfg.task not in TASK_METRICS:
            raise ConfigError(f"eval.glue.task '{cfg.task}' is not a GLUE task; use one of {sorted(TASK_METRICS)}"
                              " (it follows dataset.name; eval/glue.py takes --task)")
        if cfg.task != dataset.name:
            raise ConfigError(f"eval.glue.task '{cfg.task}' differs from dataset '{dataset.name}', "
                              "whose prompts it would use")
        if not dataset.label_names:
            raise ConfigError(f"eval.glue: dataset '{dataset.name}' has no label_names (the label words to score)")
        if cfg.split not in SPLITS:
            raise ConfigError(f"eval.glue.split '{cfg.split}' is unknown; use one of {SPLITS}")

    def load_items(self, cfg) -> list[dict]:
        self.check_config(cfg)
        examples = dev_examples(cfg) if cfg.split == "dev" else load_splits(cfg.dataset, cfg.seed)[1]
        items = [{"id": str(idx), "prompt": ex["prompt"], "gold": ex["response"]} for idx, ex in enumerate(examples)]
        return select(items, cfg.limit, cfg.subset_seed)

    def evaluate(self, cfg, items, model, tokenizer, accelerator):
        label_words = list(cfg.dataset.label_names)
        log_probs = label_log_probs(model, tokenizer, [item["prompt"] for item in items], label_words,
                                    cfg.batch_size, accelerator)
        chosen = [label_words[max(range(len(label_words)), key=lambda k: sum(per_label[k]))]
                  for per_label in log_probs]
        return score(cfg, items, chosen, log_probs) if accelerator.is_main_process else (None, None)

    def score_file(self, cfg, items, path):
        return score(cfg, items, [outs[0] for outs in read_completions(path, items)])
