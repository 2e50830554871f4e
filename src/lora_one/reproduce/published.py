"""The paper-scale numbers published for the methods this study compares, exactly as quoted in the
reproduction issue, each with its source. Nothing here is measured or estimated; a method or task
without an entry is shown as not published (or, for GLUE, as not quoted)."""
from dataclasses import dataclass

LORA_ONE_README = "LoRA-One official README (github.com/YuanheZ/LoRA-One), GSM8K accuracy-vs-epoch curve"
LORA_ONE_ISSUE_3 = "LoRA-One official repository, issue #3"
LORA_GA_PAPER = "LoRA-GA paper (Wang et al., 2024), GSM8K table"


@dataclass(frozen=True)
class Published:
    task: str     # the study's task it sits beside (gsm8k), or a task the study does not run (mmlu)
    method: str
    value: str    # as published, in percent
    setting: str
    source: str


PUBLISHED = (
    Published("gsm8k", "LoRA", "55.2 / 58.9", "Llama-2-7B on MetaMathQA, epoch 1 / epoch 4", LORA_ONE_README),
    Published("gsm8k", "LoRA+", "56.4 / 60.0", "Llama-2-7B on MetaMathQA, epoch 1 / epoch 4", LORA_ONE_README),
    Published("gsm8k", "LoRA-GA", "56.5 / 60.9", "Llama-2-7B on MetaMathQA, epoch 1 / epoch 4", LORA_ONE_README),
    Published("gsm8k", "LoRA-One", "57.5 / 63.8", "Llama-2-7B on MetaMathQA, epoch 1 / epoch 4", LORA_ONE_README),
    Published("gsm8k", "LoRA", "42.08", "GSM8K accuracy", LORA_GA_PAPER),
    Published("gsm8k", "PiSSA", "44.54", "GSM8K accuracy", LORA_GA_PAPER),
    Published("gsm8k", "LoRA-GA", "53.60", "GSM8K accuracy", LORA_GA_PAPER),
    Published("mmlu", "LoRA-One", "47.24", "MMLU 5-shot", LORA_ONE_ISSUE_3),
    Published("mmlu", "base model", "45.73", "MMLU 5-shot", LORA_ONE_ISSUE_3),
)
GLUE_TASKS = ("sst2", "cola", "mrpc", "qnli", "mnli")


def published_cell(task: str, method: str) -> str:
    """What the table shows beside a measured row: every published value for (task, method) with its
    source number ([1], [2] ... as in `source_notes`), or why there is none."""
    entries = [p for p in PUBLISHED if p.task == task and p.method == method]
    if entries:
        return "; ".join(f"{p.value} [{source_number(p.source)}]" for p in entries)
    if task in GLUE_TASKS:
        return "not quoted (the paper's table is T5-base)"
    return "not published"


def sources() -> list[str]:
    return list(dict.fromkeys(p.source for p in PUBLISHED))


def source_number(source: str) -> int:
    return sources().index(source) + 1


def published_table() -> str:
    """Every published number as a markdown table, then the numbered sources."""
    lines = ["| task | method | published (%) | setting | source |", "|---|---|---:|---|---|"]
    lines += [f"| {p.task} | {p.method} | {p.value} | {p.setting} | [{source_number(p.source)}] |" for p in PUBLISHED]
    lines += [""] + [f"[{i}] {source}" for i, source in enumerate(sources(), 1)]
    return "\n".join(lines) + "\n"
