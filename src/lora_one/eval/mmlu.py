"""MMLU: 57 subjects of four-way multiple choice, 0- or k-shot, scored without generation: the logits
of the model's first answer token for " A", " B", " C", " D" after "Answer:", softmax-normalised over
those four, the most likely letter being the prediction. Accuracy per subject, per category, overall."""
import csv
import glob
import os

import torch

from lora_one import ConfigError
from lora_one.data.loading import load_hub_dataset, reaching_hub
from lora_one.eval.answers import extract_letter
from lora_one.eval.benchmark import Benchmark, register
from lora_one.eval.generation import map_batches, prompt_lengths
from lora_one.eval.records import read_completions, select
from lora_one.eval.scoring import next_token_logits

HUB_ID = "cais/mmlu"
LETTERS = ("A", "B", "C", "D")
CATEGORIES = {
    "STEM": ["abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics", "high_school_biology",
             "high_school_chemistry", "high_school_computer_science", "high_school_mathematics",
             "high_school_physics", "high_school_statistics", "machine_learning"],
    "humanities": ["formal_logic", "high_school_european_history", "high_school_us_history",
                   "high_school_world_history", "international_law", "jurisprudence", "logical_fallacies",
                   "moral_disputes", "moral_scenarios", "philosophy", "prehistory", "professional_law",
                   "world_religions"],
    "social sciences": ["econometrics", "high_school_geography", "high_school_government_and_politics",
                        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
                        "human_sexuality", "professional_psychology", "public_relations", "security_studies",
                        "sociology", "us_foreign_policy"],
    "other": ["business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging",
              "management", "marketing", "medical_genetics", "miscellaneous", "nutrition",
              "professional_accounting", "professional_medicine", "virology"],
}
CATEGORY_OF = {subject: category for category, subjects in CATEGORIES.items() for subject in subjects}


def read_csv_split(data_dir: str, split: str) -> dict[str, list[dict]]:
    """`<data_dir>/<split>/<subject>_<split>.csv` (no header: question, A, B, C, D, answer letter) → rows by subject."""
    by_subject = {}
    for path in sorted(glob.glob(os.path.join(data_dir, split, f"*_{split}.csv"))):
        subject = os.path.basename(path)[: -len(f"_{split}.csv")]
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        for number, row in enumerate(rows, 1):
            if len(row) != 6 or row[5].strip() not in LETTERS:
                raise ConfigError(f"{path}: line {number} must be question,A,B,C,D,answer-letter")
        by_subject[subject] = [{"question": r[0], "choices": r[1:5], "answer": LETTERS.index(r[5].strip())}
                               for r in rows]
    return by_subject


def read_hub_split(split: str) -> dict[str, list[dict]]:
    by_subject = {}
    for row in load_hub_dataset(HUB_ID, "all", split, "eval.mmlu.data_dir"):
        by_subject.setdefault(row["subject"], []).append(
            {"question": row["question"], "choices": row["choices"], "answer": int(row["answer"])})
    return by_subject


def format_question(row: dict, with_answer: bool) -> str:
    lines = [row["question"]] + [f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"])]
    answer = f" {LETTERS[row['answer']]}\n\n" if with_answer else ""
    return "\n".join(lines) + "\nAnswer:" + answer


def build_prompt(subject: str, row: dict, shots: list[dict]) -> str:
    header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return header + "".join(format_question(shot, True) for shot in shots) + format_question(row, False)


def letter_token_ids(tokenizer) -> list[int]:
    """The token of " A" … " D" (one token each, as after "Answer:")."""
    ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"] for letter in LETTERS]
    if any(len(i) != 1 for i in ids):
        raise ConfigError(f"mmlu: the tokenizer splits the answer letters into several tokens: {ids}")
    return [i[0] for i in ids]


@torch.no_grad()
def choice_probabilities(model, tokenizer, prompts: list[str], batch_size: int, accelerator) -> list[list[float]]:
    """softmax over the four letter logits of the first answer token (after the last prompt token of a
    causal model, at the first decoder step of an encoder-decoder one), for each prompt."""
    letter_ids = torch.tensor(letter_token_ids(tokenizer), device=accelerator.device)
    was_training = model.training
    model.eval()

    def run_batch(number: int, indices: list[int]) -> list[list[float]]:
        batch = tokenizer([prompts[i] for i in indices], padding=True, padding_side="left", return_tensors="pt")
        logits = next_token_logits(model, batch.to(accelerator.device))
        return torch.softmax(logits[:, letter_ids].float(), dim=-1).tolist()

    probs = map_batches(run_batch, prompt_lengths(tokenizer, prompts), batch_size, accelerator, desc="mmlu")
    model.train(was_training)
    return probs


def score(items: list[dict], completions: list[str], probs: list[list[float]] | None = None) -> tuple[dict, list[dict]]:
    """Completions are answers in words ("B", "The answer is C"): their first standalone letter counts."""
    records = [{"task_id": item["id"], "subject": item["subject"], "prompt": item["prompt"], "completion": completion,
                "extracted": extract_letter(completion), "gold": item["gold"]}
               for item, completion in zip(items, completions)]
    for record in records:
        record["correct"] = record["extracted"] == record["gold"]
    if probs is not None:
        for record, p in zip(records, probs):
            record["probs"] = dict(zip(LETTERS, p))

    def accuracy(rows):
        return {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows)}

    subjects = dict.fromkeys(r["subject"] for r in records)
    metrics = {"overall": accuracy(records),
               "subjects": {s: accuracy([r for r in records if r["subject"] == s]) for s in subjects},
               "categories": {}}
    for category in dict.fromkeys(CATEGORY_OF.get(s, "uncategorised") for s in subjects):
        rows = [r for r in records if CATEGORY_OF.get(r["subject"], "uncategorised") == category]
        metrics["categories"][category] = accuracy(rows)
    return metrics, records


@register
class MMLU(Benchmark):
    """57 subjects of four-way multiple choice, scored by the next-token logits of the letters A-D."""

    name = "mmlu"

    def check_config(self, cfg) -> None:
        """Before any training: the questions are there (the CSV folder, or cais/mmlu cached or reachable)."""
        if cfg.data_dir:
            data_dir = os.path.expanduser(str(cfg.data_dir))
            if not glob.glob(os.path.join(data_dir, "test", "*_test.csv")):
                raise ConfigError(f"eval.mmlu.data_dir '{cfg.data_dir}' has no test/*_test.csv")
            return
        import datasets

        with reaching_hub(HUB_ID, "all", "test", "eval.mmlu.data_dir"):
            datasets.load_dataset_builder(HUB_ID, "all")

    def load_items(self, cfg) -> list[dict]:
        """Test questions of `cfg.subjects` (all when null) with `cfg.shots` dev examples of the same subject
        in front; `cfg.limit` applies per subject."""
        read = ((lambda split: read_csv_split(os.path.expanduser(str(cfg.data_dir)), split)) if cfg.data_dir
                else read_hub_split)
        tests = read("test")
        if not tests:
            raise ConfigError(f"mmlu: no test/*_test.csv under '{cfg.data_dir}'")
        devs = read("dev") if cfg.shots else {}
        subjects = list(cfg.subjects) if cfg.subjects else sorted(tests)
        items = []
        for subject in subjects:
            if subject not in tests:
                raise ConfigError(f"mmlu subject '{subject}' has no test questions")
            shots = devs.get(subject, [])[: cfg.shots]
            if len(shots) < cfg.shots:
                raise ConfigError(f"mmlu: {cfg.shots}-shot needs {cfg.shots} dev questions for '{subject}', "
                                  f"found {len(shots)}")
            rows = [{"id": f"{subject}/{idx}", "subject": subject, "prompt": build_prompt(subject, row, shots),
                     "gold": LETTERS[row["answer"]]} for idx, row in enumerate(tests[subject])]
            items.extend(select(rows, cfg.limit, cfg.subset_seed))
        return items

    def evaluate(self, cfg, items, model, tokenizer, accelerator):
        probs = choice_probabilities(model, tokenizer, [item["prompt"] for item in items], cfg.batch_size, accelerator)
        predicted = [LETTERS[max(range(4), key=p.__getitem__)] for p in probs]
        return score(items, predicted, probs) if accelerator.is_main_process else (None, None)

    def score_file(self, cfg, items, path):
        return score(items, [outs[0] for outs in read_completions(path, items)])
