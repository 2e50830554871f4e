"""lm-evaluation-harness on local data: every local task's rows against the source files (MANIFEST.md counts,
labels against the files' answers), the harness prompts rendered from parsed rows against the text of the raw
LLM-Adapters instructions (hand-checked first rows; every row's fields cut from its instruction by hand),
malformed and missing files, the benchmark's config checks, a run_exp run whose metrics are recomputed from
its per-sample log-likelihoods, and (slow) two processes against one."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK, ROOT, compose_config, run_experiment
from lora_one import ConfigError
from lora_one.eval import BENCHMARKS
from lora_one.eval.cli import main
from lora_one.eval.harness_data import LOCAL_TASKS, local_rows, local_task_config

HARNESS = BENCHMARKS["lm_eval"]
COMMONSENSE_FOLDERS = {"boolq": "boolq", "piqa": "piqa", "social_iqa": "social_i_qa", "winogrande": "winogrande",
                       "arc_easy": "ARC-Easy", "arc_challenge": "ARC-Challenge", "openbookqa": "openbookqa"}
QUESTION_PREFIX = "Please choose the correct answer to the question: "
BOOLQ_PREFIX = "Please answer the following question with true or false, question: "
WINOGRANDE_PREFIX = "Please choose the correct answer to fill in the blank to complete the given sentence: "


def lm_eval_config(shared_data, *overrides: str):
    return compose_config(["eval=lm_eval", f"eval.lm_eval.data_dir={shared_data}", *overrides]).eval.lm_eval


def harness_task(task: str, data_dir, num_fewshot: int = 0):
    """The harness's ConfigurableTask of a local task, as run_harness builds it."""
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(config=local_task_config(task, str(data_dir), num_fewshot))


def raw_commonsense(shared_data, task: str) -> list[dict]:
    return json.loads((shared_data / "commonsense" / COMMONSENSE_FOLDERS[task] / "test.json").read_text())


def answer_count(instruction: str) -> int:
    """The N of `Answer format: answer1/…/answerN`."""
    return int(instruction.rsplit("/answer", 1)[1])


# --- the local rows (reference: ../shared/data/MANIFEST.md and the source files' own answers)

# The LLM-Adapters answer word each hub row stands for.
ANSWER_WORD = {
    "boolq": lambda row: "true" if row["label"] == 1 else "false",
    "piqa": lambda row: f"solution{row['label'] + 1}",
    "social_iqa": lambda row: f"answer{row['label']}",
    "winogrande": lambda row: f"option{row['answer']}",
    "arc_easy": lambda row: f"answer{row['choices']['label'].index(row['answerKey']) + 1}",
    "arc_challenge": lambda row: f"answer{row['choices']['label'].index(row['answerKey']) + 1}",
    "openbookqa": lambda row: f"answer{row['choices']['label'].index(row['answerKey']) + 1}",
}


@pytest.mark.parametrize("task,split,count", [
    ("boolq", "validation", 3270), ("piqa", "validation", 1838), ("social_iqa", "validation", 1954),
    ("winogrande", "validation", 1267), ("arc_easy", "test", 2376), ("arc_challenge", "test", 1172),
    ("openbookqa", "test", 500)])
def test_commonsense_rows_and_labels_match_the_source_answers(shared_data, task, split, count):
    rows = local_rows(task, str(shared_data))
    raw = raw_commonsense(shared_data, task)
    assert list(rows) == [split] and len(rows[split]) == count == len(raw)
    assert [ANSWER_WORD[task](row) for row in rows[split]] == [r["answer"] for r in raw]
    if task == "boolq":
        assert sum(row["label"] == 1 for row in rows[split]) == sum(r["answer"] == "true" for r in raw)
    if "choices" in rows[split][0]:  # ARC, OpenBookQA: as many choices as the answer format lists, labelled A, B, …
        assert [len(row["choices"]["text"]) for row in rows[split]] == [answer_count(r["instruction"]) for r in raw]
        assert all(row["choices"]["label"] == list("ABCDE"[:len(row["choices"]["text"])]) for row in rows[split])


def tsv_fields(path: Path, header: bool) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return [line.split("\t") for line in lines[1 if header else 0:]]


# GLUE: (folder, header line, {hub column: its TSV field}, the label's field and its hub value)
GLUE_LAYOUT = {
    "sst2": ("SST-2", True, {"sentence": 0}, lambda f: int(f[1])),
    "cola": ("CoLA", False, {"sentence": 3}, lambda f: int(f[1])),
    "mrpc": ("MRPC", True, {"sentence1": 3, "sentence2": 4}, lambda f: int(f[0])),
    "qnli": ("QNLI", True, {"question": 1, "sentence": 2}, lambda f: {"entailment": 0, "not_entailment": 1}[f[3]]),
}


@pytest.mark.parametrize("task,dev,train", [("sst2", 872, 67349), ("cola", 1043, 8551), ("mrpc", 408, 3668),
                                            ("qnli", 5463, None)])
def test_glue_rows_match_the_tsv_files(shared_data, task, dev, train):
    folder, header, columns, label = GLUE_LAYOUT[task]
    rows = local_rows(task, str(shared_data))
    assert {split: len(r) for split, r in rows.items()} == ({"validation": dev} if train is None
                                                            else {"validation": dev, "train": train})
    fields = tsv_fields(shared_data / "glue" / folder / "dev.tsv", header)
    expected = [{**{column: f[i] for column, i in columns.items()}, "label": label(f), "idx": n}
                for n, f in enumerate(fields)]
    assert rows["validation"] == expected
    assert list(local_rows(task, str(shared_data), fewshot=False)) == ["validation"]  # zero-shot: train not read


def test_gsm8k_rows_are_the_jsonl_rows(shared_data):
    rows = local_rows("gsm8k", str(shared_data))
    for split, count in (("test", 1319), ("train", 7473)):
        lines = (shared_data / "gsm8k" / f"{split}.jsonl").read_text().splitlines()
        assert len(rows[split]) == count and rows[split] == [json.loads(line) for line in lines]


# --- the harness prompts (reference: the first row of each source file, read by hand)

FIRST_ROWS = {
    "gsm8k": ("Question: Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
              "muffins for her friends every day with four. She sells the remainder at the farmers' market daily for "
              "$2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?\nAnswer:",
              None, "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every "
                    "day at the farmer\u2019s market.\n#### 18"),
    "boolq": ("\nQuestion: does ethanol take more energy make that produces?\nAnswer:", ["no", "yes"], 0),
    "piqa": ("Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:",
             ["Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you "
              "will also need to supply it with a water bottle and a food dish.",
              "Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you "
              "will also need to supply it with a water bottle and a food dish."], 0),
    "social_iqa": ("Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy need to do "
                   "before this?\nA:", ["make a new plan", "Go home and see Riley", "Find somewhere to go"], 2),
    # partial evaluation: the "text" is the gold option's index, the choices the sentence up to the blank
    "winogrande": (1, ["Sarah was a much better surgeon than Maria so Sarah",
                       "Sarah was a much better surgeon than Maria so Maria"], "always got the easier cases."),
    "arc_easy": ("Question: Which statement best explains why photosynthesis is the foundation of most food webs?"
                 "\nAnswer:", ["Sunlight is the source of energy for nearly all ecosystems.",
                               "Most ecosystems are found on land instead of in water.",
                               "Carbon dioxide is more available than other gases.",
                               "The producers in all ecosystems are plants."], 0),
    "arc_challenge": ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which "
                      "is the most likely effect of this increase in rotation?\nAnswer:",
                      ["Planetary density will decrease.", "Planetary years will become longer.",
                       "Planetary days will become shorter.", "Planetary gravity will become stronger."], 2),
    "openbookqa": ("A person wants to start saving money so that they can afford a nice vacation at the end of the "
                   "year. After looking over their budget and expenses, they decide the best way to save money is to",
                   ["make more phone calls", "quit eating lunch out", "buy less with monopoly money",
                    "have lunch with friends"], 1),
    "sst2": ("it 's a charming and often affecting journey . \nQuestion: Is this sentence positive or negative?"
             "\nAnswer:", ["negative", "positive"], 1),
    "qnli": ("What came into force after the new constitution was herald?\nAs of that day, the new constitution "
             "heralding the Second Republic came into force.\nQuestion: Does this response answer the question?"
             "\nAnswer:", ["yes", "no"], 0),
}


@pytest.mark.parametrize("task", list(FIRST_ROWS))
def test_first_row_prompt_choices_and_target(shared_data, task):
    text, choices, target = FIRST_ROWS[task]
    harness = harness_task(task, shared_data)
    doc = harness.eval_docs[0]
    assert harness.doc_to_text(doc) == text
    if choices is not None:
        assert harness.doc_to_choice(doc) == choices
    assert harness.doc_to_target(doc) == target


def test_siqa_context_and_question_split_at_the_last_sentence(shared_data):
    doc = harness_task("social_iqa", shared_data).eval_docs[0]
    assert doc["context"] == "Tracy didn't go home that evening and resisted Riley's attacks."
    assert doc["question"] == "What does Tracy need to do before this?"


RENDERED_EVERY = 20  # the harness's Jinja rendering takes ~2 ms a call: every row's fields, every 20th row rendered


def instruction_parts(raw: dict, prefix: str, answers_from: str) -> tuple[str, str]:
    """An LLM-Adapters instruction cut by hand at its fixed phrases: (the question, the answers' text)."""
    question, _, answers = raw["instruction"].removeprefix(prefix).partition(answers_from)
    return question, answers.partition("\n\nAnswer format:")[0]


def numbered_answers(text: str, count: int) -> list[str]:
    """`Answer1: a Answer2: b …` cut at each `AnswerK: ` in turn."""
    cuts = [text.index(f"Answer{k}: ") for k in range(1, count + 1)] + [len(text)]
    return [text[start + len(f"Answer{k}: "):end].strip()
            for k, (start, end) in enumerate(zip(cuts, cuts[1:]), start=1)]


def test_every_siqa_prompt_is_the_instructions_question(shared_data):
    raw = raw_commonsense(shared_data, "social_iqa")
    questions = [instruction_parts(r, QUESTION_PREFIX, "\n\nAnswer1: ")[0] for r in raw]
    rows = local_rows("social_iqa", str(shared_data))["validation"]
    assert [f"{row['context']} {row['question']}" for row in rows] == questions  # joined as the template joins them
    assert all(row["context"] for row in rows)  # an empty one would render "Q:  …" (two spaces)
    siqa = harness_task("social_iqa", shared_data)
    docs = list(siqa.eval_docs)
    for n in range(0, len(docs), RENDERED_EVERY):
        assert siqa.doc_to_text(docs[n]) == "Q: " + questions[n] + "\nA:"


def test_every_boolq_prompt_is_the_instructions_question(shared_data):
    raw = raw_commonsense(shared_data, "boolq")
    questions = [r["instruction"].removeprefix(BOOLQ_PREFIX).removesuffix("\n\nAnswer format: true/false")
                 for r in raw]
    rows = local_rows("boolq", str(shared_data))["validation"]
    assert [row["question"] + "?" for row in rows] == questions and {row["passage"] for row in rows} == {""}
    boolq = harness_task("boolq", shared_data)
    docs = list(boolq.eval_docs)
    for n in range(0, len(docs), RENDERED_EVERY):
        assert boolq.doc_to_text(docs[n]) == "\nQuestion: " + questions[n] + "\nAnswer:"


def test_every_winogrande_choice_is_the_sentence_up_to_the_blank_and_an_option(shared_data):
    winogrande = harness_task("winogrande", shared_data)  # its prompts are Python functions: every row, quickly
    for doc, raw in zip(winogrande.eval_docs, raw_commonsense(shared_data, "winogrande"), strict=True):
        sentence, options = instruction_parts(raw, WINOGRANDE_PREFIX, "\n\nOption1: ")
        first, _, second = options.removesuffix(" Answer format: option1/option2").partition(" Option2: ")
        blank = sentence.index("_")
        assert winogrande.doc_to_choice(doc) == [sentence[:blank] + first, sentence[:blank] + second]
        assert winogrande.doc_to_target(doc) == sentence[blank + 1:].strip()
        assert winogrande.doc_to_text(doc) == int(raw["answer"].removeprefix("option")) - 1


def test_every_arc_question_and_choice_is_the_instructions_text(shared_data):
    raw = raw_commonsense(shared_data, "arc_challenge")
    parts = [instruction_parts(r, QUESTION_PREFIX, "\n\n") for r in raw]
    answers = [numbered_answers(text, answer_count(r["instruction"])) for (_, text), r in zip(parts, raw)]
    rows = local_rows("arc_challenge", str(shared_data))["test"]
    assert [(row["question"], row["choices"]["text"]) for row in rows] == [
        (question, texts) for (question, _), texts in zip(parts, answers)]
    arc = harness_task("arc_challenge", shared_data)
    docs = list(arc.eval_docs)
    for n in range(0, len(docs), RENDERED_EVERY):
        assert arc.doc_to_text(docs[n]) == "Question: " + parts[n][0] + "\nAnswer:"
        assert arc.doc_to_choice(docs[n]) == answers[n]
        assert arc.doc_to_target(docs[n]) == int(raw[n]["answer"].removeprefix("answer")) - 1


# --- bad and missing files

PIQA_ROW = {"instruction": "Please choose the correct solution to the question: Open a jar.\n\nSolution1: Twist the "
                           "lid.\n\nSolution2: Kick the jar.\n\nAnswer format: solution1/solution2",
            "input": "", "output": "the correct answer is solution2", "answer": "solution2"}
ARC_ROW = {"instruction": QUESTION_PREFIX + "What melts ice?\n\nAnswer1: heat Answer2: cold Answer3: dark\n\n"
                                            "Answer format: answer1/answer2/answer3",
           "input": "", "output": "the correct answer is answer1", "answer": "answer1"}


def write_commonsense(data_dir: Path, task: str, rows: list[dict]) -> Path:
    """`rows` as the task's LLM-Adapters test file under `data_dir`; its path."""
    path = data_dir / next(iter(LOCAL_TASKS[task].files.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


def test_well_formed_tmp_rows_parse(tmp_path):
    write_commonsense(tmp_path, "piqa", [PIQA_ROW])
    assert local_rows("piqa", str(tmp_path)) == {
        "validation": [{"goal": "Open a jar.", "sol1": "Twist the lid.", "sol2": "Kick the jar.", "label": 1}]}
    write_commonsense(tmp_path, "arc_easy", [ARC_ROW])
    assert local_rows("arc_easy", str(tmp_path)) == {"test": [{
        "question": "What melts ice?", "choices": {"text": ["heat", "cold", "dark"], "label": ["A", "B", "C"]},
        "answerKey": "A"}]}


@pytest.mark.parametrize("task,bad_row", [
    ("piqa", dict(PIQA_ROW, instruction="Which opens a jar: twisting the lid or kicking it?")),
    ("piqa", {key: value for key, value in PIQA_ROW.items() if key != "answer"}),
    ("arc_easy", dict(ARC_ROW, answer="answer5")),  # of three choices
    ("arc_easy", dict(ARC_ROW, instruction=ARC_ROW["instruction"].replace("/answer3", "/answer3/answer4"))),
    ("piqa", dict(PIQA_ROW, answer="solution3")),  # not an answer its format lists (it would read as label 0)
    ("piqa", dict(PIQA_ROW, answer="yes")),
    ("piqa", "a row that is no object"),
    ("piqa", dict(PIQA_ROW, instruction=None)),
])
def test_a_malformed_row_is_refused_naming_file_and_row(tmp_path, task, bad_row):
    good = PIQA_ROW if task == "piqa" else ARC_ROW
    path = write_commonsense(tmp_path, task, [good, good, bad_row, good])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: row 2 is not in the LLM-Adapters form"):
        local_rows(task, str(tmp_path))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: row 2 "):  # before any model work
        HARNESS.load_items(lm_eval_config(tmp_path, f"eval.lm_eval.tasks=[{task}]"))


def test_a_missing_local_file_is_refused_naming_its_path(tmp_path, shared_data):
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "commonsense" / "boolq" / "test.json"))):
        local_rows("boolq", str(tmp_path))
    dev = tmp_path / "glue" / "SST-2" / "dev.tsv"
    dev.parent.mkdir(parents=True)
    dev.write_text((shared_data / "glue" / "SST-2" / "dev.tsv").read_text())
    assert [len(rows) for rows in local_rows("sst2", str(tmp_path), fewshot=False).values()] == [872]
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "glue" / "SST-2" / "train.tsv"))):
        local_rows("sst2", str(tmp_path))  # few-shot prompts need the training file
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "gsm8k" / "test.jsonl"))):
        HARNESS.load_items(lm_eval_config(tmp_path, "eval.lm_eval.tasks=[gsm8k]"))


# --- the benchmark's config checks

def test_a_task_without_local_data_needs_the_hub(shared_data):
    with pytest.raises(ConfigError) as refused:
        HARNESS.check_config(lm_eval_config(shared_data, "eval.lm_eval.tasks=[arc_easy,hellaswag]"))
    message = str(refused.value)
    assert "\n" not in message and "'hellaswag'" in message and "hub=true" in message
    with_hub = lm_eval_config(shared_data, "eval.lm_eval.tasks=[arc_easy,hellaswag]", "eval.lm_eval.hub=true")
    HARNESS.check_config(with_hub)
    items = HARNESS.load_items(with_hub)  # the hub task is left to the harness, by name: nothing read here
    assert [(item["task"], item["config"] is None) for item in items] == [("arc_easy", False), ("hellaswag", True)]
    with pytest.raises(ConfigError, match="data_dir is null.*hub=true"):  # no data folder: every task is the hub's
        HARNESS.check_config(lm_eval_config(shared_data, "eval.lm_eval.tasks=[arc_easy]", "eval.lm_eval.data_dir=null"))


def test_empty_tasks_are_refused(shared_data):
    with pytest.raises(ConfigError, match="tasks is empty"):
        HARNESS.check_config(lm_eval_config(shared_data, "eval.lm_eval.tasks=[]"))
    with pytest.raises(ConfigError, match="tasks is empty"):
        HARNESS.check_config(lm_eval_config(shared_data, "eval.lm_eval.tasks=' , '"))


def test_without_lm_eval_installed_the_error_names_the_extra(shared_data, monkeypatch):
    assert re.search(r'^lm-eval = \["lm-eval==', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)  # the extra
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    with pytest.raises(ConfigError, match=re.escape('pip install -e ".[lm-eval]"')):
        HARNESS.check_config(lm_eval_config(shared_data))


def test_one_comma_separated_string_is_several_tasks(shared_data):
    cfg = lm_eval_config(shared_data, "eval.lm_eval.tasks='gsm8k,boolq'")
    assert cfg.tasks == "gsm8k,boolq"
    HARNESS.check_config(cfg)
    items = HARNESS.load_items(cfg)
    assert [item["task"] for item in items] == ["gsm8k", "boolq"]
    assert [item["config"]["task"] for item in items] == ["gsm8k", "boolq"]


def test_few_shot_needs_a_local_training_split(shared_data):
    with pytest.raises(ConfigError, match="'piqa'.*no training split.*num_fewshot=0"):
        HARNESS.load_items(lm_eval_config(shared_data, "eval.lm_eval.tasks=[piqa]", "eval.lm_eval.num_fewshot=2"))
    [piqa] = HARNESS.load_items(lm_eval_config(shared_data, "eval.lm_eval.tasks=[piqa]"))  # its own default: 0-shot
    assert piqa["config"]["training_split"] is None
    [gsm8k] = HARNESS.load_items(lm_eval_config(shared_data, "eval.lm_eval.tasks=[gsm8k]",
                                                "eval.lm_eval.num_fewshot=1"))
    from lm_eval.api.task import ConfigurableTask

    examples = ConfigurableTask(config=gsm8k["config"]).fewshot_docs()
    assert len(examples) == 7473 and examples[0]["question"].startswith("Natalia sold clips to 48 of her friends")
    [zero_shot] = HARNESS.load_items(lm_eval_config(shared_data, "eval.lm_eval.tasks=[gsm8k]",
                                                    "eval.lm_eval.num_fewshot=0"))
    assert zero_shot["config"]["training_split"] is None and zero_shot["config"]["fewshot_split"] is None


# --- run_exp end to end (tiny_llama): the metrics recomputed from the per-sample log-likelihoods

def predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "lm_eval_predictions.jsonl").read_text().splitlines()]


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def test_run_exp_metrics_are_the_per_sample_log_likelihood_argmax(shared_data, tmp_path):
    results = run_experiment(QUICK + ["eval=lm_eval", f"eval.lm_eval.data_dir={shared_data}",
                                      "eval.lm_eval.tasks=[boolq,sst2]", "eval.lm_eval.limit=8"], tmp_path)
    harness = results["eval"]["lm_eval"]
    assert harness["n-samples"] == {"boolq": 8, "sst2": 8} and harness["n-shot"] == {"boolq": 0, "sst2": 0}
    assert list(harness["deviations"]) == ["boolq"]
    assert harness["data"] == {"boolq": str(shared_data / "commonsense" / "boolq" / "test.json"),
                               "sst2": str(shared_data / "glue" / "SST-2" / "dev.tsv")}
    records = predictions(tmp_path)
    boolq_raw = raw_commonsense(shared_data, "boolq")[:8]
    sst2_raw = tsv_fields(shared_data / "glue" / "SST-2" / "dev.tsv", header=True)[:8]
    boolq_questions = [r["instruction"].removeprefix(BOOLQ_PREFIX).split("\n\n")[0] for r in boolq_raw]
    expected = {"boolq": [(f"\nQuestion: {question}\nAnswer:", ["no", "yes"], int(r["answer"] == "true"))
                          for question, r in zip(boolq_questions, boolq_raw)],
                "sst2": [(f"{f[0]}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                          ["negative", "positive"], int(f[1])) for f in sst2_raw]}
    for task in ("boolq", "sst2"):
        samples = sorted((r for r in records if r["task"] == task), key=lambda r: r["doc_id"])
        assert [r["doc_id"] for r in samples] == list(range(8))
        for sample, (prompt, choices, target) in zip(samples, expected[task]):
            assert sample["arguments"] == [[prompt, " " + choice] for choice in choices]
            assert sample["target"] == target
            log_likelihoods = [response[0] for response in sample["filtered_resps"]]
            assert sample["acc"] == float(argmax(log_likelihoods) == target)
        accuracy = sum(sample["acc"] for sample in samples) / len(samples)
        assert harness["results"][task]["acc,none"] == pytest.approx(accuracy, abs=1e-12)

    # The CLI on the run's saved adapter (merged into the base on load) scores as the run's own model did
    # (adapter layers unmerged): the same log-likelihoods up to float rounding.
    cli = tmp_path / "cli"
    main("lm_eval", ["--model", "tiny_llama", "--adapter", str(tmp_path / "adapter"), "--tasks", "boolq,sst2",
                     "--limit", "8", "--data_dir", str(shared_data), "--output_dir", str(cli)])
    saved = {r["idx"]: r for r in predictions(cli)}
    assert saved.keys() == {r["idx"] for r in records}
    for record in records:
        for ours, theirs in zip(record["filtered_resps"], saved[record["idx"]]["filtered_resps"]):
            assert ours[0] == pytest.approx(theirs[0], abs=1e-4)
    written = json.loads((cli / "lm_eval_results.json").read_text())
    assert written["adapter"] == str(tmp_path / "adapter")
    assert written["metrics"]["n-samples"] == {"boolq": 8, "sst2": 8}


# --- several processes

@pytest.mark.slow
def test_two_processes_score_as_one(shared_data, tmp_path):
    # No training step: two processes train to weights ~1e-6 apart (gradients summed in another order), which
    # moves log-likelihoods by ~3e-5; the base model (init=default: B = 0) isolates the harness's sharding.
    # limit 11: rank 0 gets 6 documents, rank 1 five, so the harness pads and gathers uneven shares.
    run = ["model=tiny_llama", "dataset.eval_size=4", "model.max_steps=0", "init=default", "checkpoint.every_n_steps=0",
           "eval=lm_eval", f"eval.lm_eval.data_dir={shared_data}", "eval.lm_eval.tasks=[sst2,arc_easy]",
           "eval.lm_eval.limit=11"]
    one = run_experiment(run, tmp_path / "one")
    # conftest's run_torchrun, but keeping stderr: rank 0's progress bar tells how many requests it scored
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["torchrun", "--standalone", "--nproc_per_node", "2", "run_exp.py", *run,
                           f"hydra.run.dir={tmp_path / 'two'}"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert one["num_processes"] == 1 and two["num_processes"] == 2
    records = [{r["idx"]: r for r in predictions(tmp_path / name)} for name in ("one", "two")]
    assert len(predictions(tmp_path / "two")) == len(records[1]) == 22  # each sample once
    scored = re.findall(r"Running loglikelihood requests: 100%\|[^|]*\| (\d+)/\1 ", done.stderr)
    requests = sum(len(sample["arguments"]) for sample in records[1].values())
    assert len(scored) == 1 and int(scored[0]) < requests, (scored, requests)  # its share, not every request
    assert records[0].keys() == records[1].keys()
    for idx, sample in records[0].items():
        other = records[1][idx]
        assert [r[0] for r in other["filtered_resps"]] == pytest.approx([r[0] for r in sample["filtered_resps"]],
                                                                         abs=1e-5)
        assert {k: other[k] for k in ("acc", "target", "arguments")} == {k: sample[k]
                                                                         for k in ("acc", "target", "arguments")}
    metrics = [run["eval"]["lm_eval"] for run in (one, two)]
    assert metrics[1]["n-samples"] == metrics[0]["n-samples"] == {"sst2": 11, "arc_easy": 11}
    for task, values in metrics[0]["results"].items():
        assert metrics[1]["results"][task] == pytest.approx(values, rel=1e-9)
