"""The standard lm-evaluation-harness tasks read from local files instead of the hub, in the hub's own schema.

The harness's task configs (prompts, choices, metrics, filters, few-shot settings) stay exactly as upstream
ships them; only the data source changes: each local task names its upstream YAML, and `local_task_config`
loads that YAML and replaces its dataset with the rows of the local files, converted to the columns the
upstream prompts read (`custom_dataset`). The local files are those of the project's data folder
(`../shared/data`, see its MANIFEST.md):

- GSM8K: `gsm8k/{test,train}.jsonl`, the hub's `openai/gsm8k` rows as they are (train: the few-shot examples).
- GLUE: `glue/<TASK>/{dev,train}.tsv` (SST-2, CoLA, MRPC; QNLI dev only), the hub's `nyu-mll/glue` columns.
- Commonsense: the LLM-Adapters test sets `commonsense/<task>/test.json`, whose rows hold each question
  re-written as an instruction; the hub's columns are parsed back out of it (every row must parse, or the
  file is refused naming the row). They are the hub's evaluation splits (BoolQ, PIQA, SIQA, WinoGrande:
  validation; ARC, OpenBookQA: test), without training splits, so few-shot prompts need the hub.

BoolQ differs from the hub by what LLM-Adapters dropped, recorded beside every result (`DEVIATIONS`): its rows
have no passage (the harness prompt starts `\\nQuestion:`; not comparable with published BoolQ numbers). SIQA's
rows join context and question into one text; split back before its last sentence, they render the harness
prompt `Q: {{context}} {{question}}` as the hub's rows do when LLM-Adapters joined them with one space.
"""
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable

from lora_one import ConfigError
from lora_one.data.glue import read_glue_tsv


@dataclass(frozen=True)
class LocalTask:
    """A harness task with local data: its upstream YAML (under lm_eval/tasks), the local file of each split
    it reads (relative to the data folder) and how a file's rows become the hub's rows."""

    upstream: str
    files: dict[str, str]
    read: Callable[[str], list[dict]]
    splits: dict[str, str | None] = field(default_factory=dict)  # split settings the local files change


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


ANSWER_FORMAT = re.compile(r"Answer format: (\S+)$")  # how every LLM-Adapters instruction ends: "true/false"


def parse_rows(path: str, pattern: str, to_row: Callable[[re.Match, str], dict]) -> list[dict]:
    """The hub's rows from an LLM-Adapters test file (a JSON list): each row's `instruction` must match `pattern`
    whole and its `answer` be one of the words its "Answer format:" lists, or the file is refused naming the row."""
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: not a JSON list of LLM-Adapters rows")
    parsed = []
    for number, row in enumerate(rows):
        try:
            instruction, answer = row["instruction"], row["answer"].strip().lower()
            if answer not in ANSWER_FORMAT.search(instruction)[1].split("/"):
                raise ValueError(f"answer {answer!r} is not in the row's answer format")
            parsed.append(to_row(re.fullmatch(pattern, instruction, flags=re.DOTALL), answer))
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as err:  # no match, an odd row
            raise ConfigError(f"{path}: row {number} is not in the LLM-Adapters form this task parses "
                              f"({str(row)[:60]!r}…)") from err
    return parsed


def choices(text: str, count: int) -> list[str]:
    """`Answer1: a Answer2: b …` → [a, b, …] (exactly `count` of them)."""
    parts = re.split(r"\s*Answer\d+: ", " " + text)[1:]
    if len(parts) != count:
        raise ValueError(f"expected {count} answers in {text[:60]!r}")
    return [part.strip() for part in parts]


def read_boolq(path: str) -> list[dict]:
    return parse_rows(path, r"Please answer the following question with true or false, question: (.*?)\?"
                            r"\n\nAnswer format: true/false",
                      lambda m, answer: {"question": m[1], "passage": "", "label": int(answer == "true")})


def read_piqa(path: str) -> list[dict]:
    return parse_rows(path, r"Please choose the correct solution to the question: (.*)\n\nSolution1: (.*)"
                            r"\n\nSolution2: (.*)\n\nAnswer format: solution1/solution2",
                      lambda m, answer: {"goal": m[1], "sol1": m[2], "sol2": m[3],
                                         "label": int(answer == "solution2")})


def siqa_row(match: re.Match, answer: str) -> dict:
    context, question = split_question(match[1])
    options = choices(match[2], 3)
    return {"context": context, "question": question, "answerA": options[0], "answerB": options[1],
            "answerC": options[2], "label": answer.removeprefix("answer")}


def split_question(text: str) -> tuple[str, str]:
    """A SIQA context and its question, joined by one space: split before the last sentence."""
    cut = max(text.rfind(". ", 0, len(text) - 1), text.rfind("! ", 0, len(text) - 1))
    return (text[:cut + 1], text[cut + 2:]) if cut > 0 else ("", text)


def read_siqa(path: str) -> list[dict]:
    return parse_rows(path, r"Please choose the correct answer to the question: (.*)\n\n(Answer1: .*)"
                            r"\n\nAnswer format: answer1/answer2/answer3", siqa_row)


def read_winogrande(path: str) -> list[dict]:
    return parse_rows(path, r"Please choose the correct answer to fill in the blank to complete the given "
                            r"sentence: (.*)\n\nOption1: (.*) Option2: (.*) Answer format: option1/option2",
                      lambda m, answer: {"sentence": m[1], "option1": m[2], "option2": m[3],
                                         "answer": answer.removeprefix("option")})


def multiple_choice_row(question_key: str):
    """ARC and OpenBookQA rows: the question, its choices labelled A, B, … and the gold label."""
    def to_row(match: re.Match, answer: str) -> dict:
        texts = choices(match[2], int(match[3]))
        labels = [chr(ord("A") + i) for i in range(len(texts))]
        return {question_key: match[1], "choices": {"text": texts, "label": labels},
                "answerKey": labels[int(answer.removeprefix("answer")) - 1]}
    return to_row


def read_multiple_choice(question_key: str):
    pattern = (r"Please choose the correct answer to the question: (.*)\n\n(Answer1: .*)"
               r"\n\nAnswer format: answer1(?:/answer\d)*/answer(\d)")
    return lambda path: parse_rows(path, pattern, multiple_choice_row(question_key))


def read_glue(task: str):
    return lambda path: [dict(row, idx=i) for i, row in enumerate(read_glue_tsv(task, path))]


NO_TRAINING = {"training_split": None}  # test sets only: zero-shot (few-shot examples need the hub's train)

LOCAL_TASKS: dict[str, LocalTask] = {
    "gsm8k": LocalTask("gsm8k/gsm8k.yaml", {"test": "gsm8k/test.jsonl", "train": "gsm8k/train.jsonl"}, read_jsonl),
    "boolq": LocalTask("super_glue/boolq/default.yaml", {"validation": "commonsense/boolq/test.json"},
                       read_boolq, NO_TRAINING),
    "piqa": LocalTask("piqa/piqa.yaml", {"validation": "commonsense/piqa/test.json"}, read_piqa, NO_TRAINING),
    "social_iqa": LocalTask("siqa/siqa.yaml", {"validation": "commonsense/social_i_qa/test.json"}, read_siqa,
                            NO_TRAINING),
    "winogrande": LocalTask("winogrande/default.yaml", {"validation": "commonsense/winogrande/test.json"},
                            read_winogrande, NO_TRAINING),
    "arc_easy": LocalTask("arc/arc_easy.yaml", {"test": "commonsense/ARC-Easy/test.json"},
                          read_multiple_choice("question"), {"training_split": None, "validation_split": None}),
    "arc_challenge": LocalTask("arc/arc_challenge.yaml", {"test": "commonsense/ARC-Challenge/test.json"},
                               read_multiple_choice("question"), {"training_split": None, "validation_split": None}),
    "openbookqa": LocalTask("openbookqa/openbookqa.yaml", {"test": "commonsense/openbookqa/test.json"},
                            read_multiple_choice("question_stem"), {"training_split": None, "validation_split": None}),
    "sst2": LocalTask("glue/sst2/default.yaml", {"validation": "glue/SST-2/dev.tsv", "train": "glue/SST-2/train.tsv"},
                      read_glue("sst2")),
    "cola": LocalTask("glue/cola/default.yaml", {"validation": "glue/CoLA/dev.tsv", "train": "glue/CoLA/train.tsv"},
                      read_glue("cola")),
    "mrpc": LocalTask("glue/mrpc/default.yaml", {"validation": "glue/MRPC/dev.tsv", "train": "glue/MRPC/train.tsv"},
                      read_glue("mrpc")),
    "qnli": LocalTask("glue/qnli/default.yaml", {"validation": "glue/QNLI/dev.tsv"}, read_glue("qnli"), NO_TRAINING),
}

# What a local task's data lacks against the hub's, recorded beside its metrics.
DEVIATIONS = {
    "boolq": "local rows (LLM-Adapters) have no passage: the harness prompt reads an empty passage; "
             "not comparable with published BoolQ numbers",
}


TRAINING_SPLITS = ("train",)


def local_rows(task: str, data_dir: str, fewshot: bool = True) -> dict[str, list[dict]]:
    """{split: the hub's rows} of a local task, read from `data_dir` (the training split only for `fewshot`
    prompts, its one use in the harness); one ConfigError if a file is missing."""
    local = LOCAL_TASKS[task]
    splits = {}
    for split, relative in local.files.items():
        if split in TRAINING_SPLITS and not fewshot:
            continue
        path = os.path.join(os.path.expanduser(data_dir), relative)
        if not os.path.isfile(path):
            raise ConfigError(f"lm_eval task '{task}': its local {split} file '{path}' does not exist "
                              f"(eval.lm_eval.data_dir)")
        splits[split] = local.read(path)
    return splits


def local_task_config(task: str, data_dir: str, num_fewshot: int | None = None) -> dict:
    """The harness's own config of `task` (upstream YAML, includes and functions resolved) with its data read
    from `data_dir`: nothing else changes but the split settings the local files imply. The training split,
    read only for few-shot examples (`num_fewshot`, None: the task's own default), is left out zero-shot
    (SST-2's is 67k rows); few-shot on a task without a local training split is refused before any file is read."""
    import datasets
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    local = LOCAL_TASKS[task]
    config = load_yaml(os.path.join(os.path.dirname(lm_eval.__file__), "tasks", local.upstream))
    fewshot = (config.get("num_fewshot") or 0 if num_fewshot is None else num_fewshot) > 0
    for key in ("tag", "group"):  # the upstream groups the task belongs to: not run here
        config.pop(key, None)
    config.update(local.splits)
    if fewshot and not (config.get("fewshot_split") or config.get("training_split")):
        raise ConfigError(f"lm_eval task '{task}': its local data has no training split for few-shot examples; "
                          f"use eval.lm_eval.num_fewshot=0 (or the hub: data_dir=null, hub=true)")
    splits = {name: datasets.Dataset.from_list(rows) for name, rows in local_rows(task, data_dir, fewshot).items()}
    if not fewshot:
        config.update(training_split=None, fewshot_split=None)
    config.pop("dataset_kwargs", None)
    config["custom_dataset"] = lambda **_: datasets.DatasetDict(splits)
    config["dataset_path"] = os.path.join(os.path.expanduser(data_dir), next(iter(local.files.values())))
    config["dataset_name"] = None
    return config
