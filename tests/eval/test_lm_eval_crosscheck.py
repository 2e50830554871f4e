"""The project's own scoring cross-checked against EleutherAI's lm-evaluation-harness on the same model and inputs.

Log-likelihoods: the harness (run through eval=lm_eval) logs, per document, each (context, continuation) request
and the log-likelihood it computed; the project's scorer (`shared_prompt_log_probs`, which eval=glue uses) is
given the same token ids, tokenised by the harness's own `_encode_pair`, and must return the same sums and pick
the same choice. GSM8K: the project's answer extraction (`extract_final_number`) against the harness's two
filters of the gsm8k task ("strict-match", "flexible-extract") and its exact_match, applied through the harness's
own task object built from its upstream config."""
import re
import time
from collections import defaultdict

import pytest
import torch
from accelerate import Accelerator

from conftest import compose_config
from lora_one.eval import BENCHMARKS
from lora_one.eval.answers import extract_final_number, last_number, numbers_equal, parse_number, statement_after
from lora_one.eval.harness_data import local_task_config
from lora_one.eval.scoring import shared_prompt_log_probs
from lora_one.models import load_model, load_tokenizer

LOGLIKELIHOOD_TASKS = ["boolq", "piqa", "arc_easy", "sst2"]
DOCS_PER_TASK = 5  # boolq, piqa, sst2: 2 requests a document, arc_easy 3-5: ≥ 50 (context, continuation) pairs
TOLERANCE = 1e-4
MODELS = ["tiny_llama", pytest.param("smollm2_135m", marks=pytest.mark.slow)]
# SmolLM2 on one CPU core reads a 5-shot prompt (~1k tokens) in ~10 s, and one generation in ten runs to the
# harness's 256 tokens: 20 questions take 7-14 min (50 would take over 20). One at a time (batch_size 1): a batch
# generates until its longest is done (16 at a time: 22 min for the same 20).
GSM8K_QUESTIONS = 20
GSM8K_SHOTS = 5


def load(model_name: str):
    """The model (seeded: tiny_llama's weights are random) in eval mode, and its tokenizer."""
    cfg = compose_config([f"model={model_name}"])
    torch.manual_seed(0)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    return load_model(cfg.model, tokenizer, cfg.cache_dir).eval(), tokenizer


def harness_samples(model_name: str, model, tokenizer, data_dir, tasks: list[str], limit: int, *overrides: str):
    """The harness's per-sample logs of `tasks` (their first `limit` documents) on `model`, as eval=lm_eval runs
    it in one process."""
    cfg = compose_config([f"model={model_name}", "eval=lm_eval", f"eval.lm_eval.tasks=[{','.join(tasks)}]",
                          f"eval.lm_eval.limit={limit}", f"eval.lm_eval.data_dir={data_dir}",
                          "eval.lm_eval.bootstrap_iters=0", *overrides]).eval.lm_eval
    benchmark = BENCHMARKS["lm_eval"]
    _, records = benchmark.evaluate(cfg, benchmark.load_items(cfg), model, tokenizer, Accelerator(cpu=True))
    return records


def project_log_likelihoods(model, tokenizer, records: list[dict]) -> list[list[float]]:
    """Per record, the total log-likelihood of each of its continuations by `shared_prompt_log_probs`, on the
    token ids the harness reads (its `_encode_pair`). The documents with as many choices are scored as one
    batch: their contexts left-padded, their continuations continued from the shared prompt cache."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer)
    encoded = []
    for record in records:
        # the harness reads an empty context as its prefix token; none of these tasks' prompts is empty
        assert all(context for context, _ in record["arguments"]), record["idx"]
        pairs = [lm._encode_pair(context, continuation) for context, continuation in record["arguments"]]
        assert all(context == pairs[0][0] for context, _ in pairs), record["idx"]  # a document's choices share it
        encoded.append((pairs[0][0], [continuation for _, continuation in pairs]))
    by_choices = defaultdict(list)
    for number, (_, continuations) in enumerate(encoded):
        by_choices[len(continuations)].append(number)
    totals = [None] * len(records)
    for numbers in by_choices.values():
        scores = shared_prompt_log_probs(model, [encoded[n][0] for n in numbers], [encoded[n][1] for n in numbers],
                                         tokenizer.pad_token_id, torch.device("cpu"))
        for number, per_choice in zip(numbers, scores):
            totals[number] = [sum(tokens) for tokens in per_choice]
    return totals


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


@pytest.mark.parametrize("model_name", MODELS)
def test_log_likelihoods_match_the_harness(model_name, shared_data):
    """Every (context, continuation) pair the harness scored on boolq, piqa, arc_easy and sst2 gets the same
    log-likelihood (within 1e-4) from the project's scorer, and every document the same chosen answer (so the
    same `acc` against its gold)."""
    model, tokenizer = load(model_name)
    started = time.perf_counter()
    records = harness_samples(model_name, model, tokenizer, shared_data, LOGLIKELIHOOD_TASKS, DOCS_PER_TASK)
    harness_seconds = time.perf_counter() - started
    assert sorted({r["task"] for r in records}) == sorted(LOGLIKELIHOOD_TASKS)
    harness = [[response[0][0] for response in record["resps"]] for record in records]
    assert sum(map(len, harness)) >= 50

    ours = project_log_likelihoods(model, tokenizer, records)
    differences = [abs(a - b) for theirs, mine in zip(harness, ours) for a, b in zip(theirs, mine)]
    chosen_alike = [argmax(theirs) == argmax(mine) for theirs, mine in zip(harness, ours)]
    print(f"\n{model_name}: {len(differences)} pairs in {len(records)} documents (harness {harness_seconds:.1f} s), "
          f"max |Δ log-likelihood| {max(differences):.2e}, same choice in {sum(chosen_alike)}/{len(records)}")
    assert max(differences) <= TOLERANCE
    assert all(chosen_alike)
    assert [float(argmax(mine) == record["target"]) for mine, record in zip(ours, records)] == \
        [record["acc"] for record in records]


# Completions, the gold answer (the number after the gold solution's "####") and, written by hand, what each
# extractor reads: lm-eval's strict-match (the first "#### N"), its flexible-extract (the last number-like run
# anywhere), the project's extract_final_number (the last number of the first complete "####" statement, else of
# an "answer is" one, else the last number); then the verdicts (strict-match, flexible-extract, project): lm-eval's
# exact_match compares strings once ",", "$", a trailing "." and everything up to a "#### " are dropped from both
# sides, the project compares numbers.
EXTRACTIONS = [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18", "18", "18", 18, (True, True, True)),
    ("#### 1,000.", "1000", "1,000.", "1,000.", 1000, (True, True, True)),
    ("#### -7", "-7", "-7", "-7", -7, (True, True, True)),
    # a second "####" line: strict-match and the project take the first statement, flexible-extract the last number
    ("#### 18\n#### 19", "18", "18", "19", 18, (True, False, True)),
    # cut off by max_gen_toks in a repeated "####" line: the project reads the first complete statement
    ("#### 18\n#### 1", "18", "18", "1", 18, (True, False, True)),
    # text after the answer: flexible-extract reads its number; the sentence ended, so the project reads "18"
    ("#### 18. Then 5 more.", "18", "18.", "5", 18, (True, False, True)),
    # the project reads a "####" statement's result (its last number), strict-match the number right after "####"
    ("#### 2 * 1.5 = 3", "3", "2", "3", 3, (False, True, True)),
    # ... which misleads the project where the statement goes on after the answer
    ("#### 18 apples for 3 days", "18", "18", "3", 3, (True, False, False)),
    # strict-match needs a digit or minus right after "#### "; the project skips a "$" there
    ("#### $18", "18", "[invalid]", "$18", 18, (False, True, True)),
    # no "####": strict-match finds nothing; the project reads the "answer is" statement
    ("The answer is 1,234.", "1234", "[invalid]", "1,234.", 1234, (False, True, True)),
    ("The answer is 2 * 1.5 = 3.", "3", "[invalid]", "3.", 3, (False, True, True)),
    ("The answer is 18. Next, 5 more.", "18", "[invalid]", "5", 18, (False, False, True)),
    ("18.", "18", "[invalid]", "18.", 18, (False, True, True)),
    # the same number written differently: unequal strings to lm-eval ("5.50" is not "5.5"), equal numbers
    ("so $5.50 in total", "5.5", "[invalid]", "$5.50", 5.5, (False, False, True)),
    ("#### 18.00", "18", "18.00", "18.00", 18, (False, False, True)),
    # flexible-extract's number-like run takes in the dots that follow: "18..." is "18.." once a trailing "." goes
    ("It is 18...", "18", "[invalid]", "18...", 18, (False, False, True)),
    # a range: flexible-extract reads "-4", the project a minus after a word character as a dash
    ("3-4 apples", "4", "[invalid]", "-4", 4, (False, False, True)),
    ("I do not know.", "18", "[invalid]", "[invalid]", None, (False, False, False)),
]


def gsm8k_task(data_dir):
    """The harness's gsm8k task (its upstream config: filters, exact_match settings) on the local test set."""
    from lm_eval.api.task import ConfigurableTask

    return ConfigurableTask(config=local_task_config("gsm8k", str(data_dir), num_fewshot=0))


def harness_extractions(task, docs: list[dict], completions: list[str]) -> list[dict[str, tuple[str, bool]]]:
    """Per completion, each of the task's filters: (what it extracted, exact_match against the doc's gold), as the
    harness computes them: its filter ensembles applied to the instances, then the task's process_results."""
    from lm_eval.api.instance import Instance

    instances = []
    for doc, completion in zip(docs, completions):
        instance = Instance(request_type="generate_until", doc=doc, arguments=(task.doc_to_text(doc), {}), idx=0)
        instance.resps = [completion]
        instances.append(instance)
    for ensemble in task._filters:
        ensemble.apply(instances)
    return [{name: (extracted, bool(task.process_results(instance.doc, [extracted])["exact_match"]))
             for name, extracted in instance.filtered_resps.items()} for instance in instances]


def project_correct(doc: dict, completion: str) -> bool:
    """The project's GSM8K verdict (eval=gsm8k's judge: its gold read from the solution, numbers compared)."""
    return BENCHMARKS["gsm8k"].judge({"gold": extract_final_number(doc["answer"])}, completion)["correct"]


def test_gsm8k_extraction_against_the_harness_filters(shared_data):
    """Each hand-written completion: lm-eval's strict-match and flexible-extract outputs and exact_match
    verdicts, and the project's number and verdict, are the ones written beside it; and all three read the gold
    from every GSM8K test solution."""
    task = gsm8k_task(shared_data)
    assert [ensemble.name for ensemble in task._filters] == ["strict-match", "flexible-extract"]
    docs = [{"question": "How many?", "answer": f"Some reasoning.\n#### {gold}"} for _, gold, *_ in EXTRACTIONS]
    completions = [completion for completion, *_ in EXTRACTIONS]
    harness = harness_extractions(task, docs, completions)
    observed = [(completion, gold, by["strict-match"][0], by["flexible-extract"][0], extract_final_number(completion),
                 (by["strict-match"][1], by["flexible-extract"][1], project_correct(doc, completion)))
                for (completion, gold, *_), by, doc in zip(EXTRACTIONS, harness, docs)]
    assert [(row, expected) for row, expected in zip(observed, EXTRACTIONS) if row != expected] == []

    solutions = list(task.test_docs())  # the test set's own solutions as completions: everyone reads their gold
    verdicts = [(by["strict-match"][1], by["flexible-extract"][1], project_correct(doc, doc["answer"]))
                for doc, by in zip(solutions, harness_extractions(task, solutions, [d["answer"] for d in solutions]))]
    assert len(verdicts) == 1319 and set(verdicts) == {(True, True, True)}


# Why the project's GSM8K reading (number, verdict) can differ from one of lm-eval's filters, given both rules.
DISAGREEMENTS = {
    "no '#### N'": "strict-match finds no \"#### \" followed by a number; the project reads its \"answer is\" "
                   "statement or, lacking one, the last number",
    "same number, other spelling": "both read the same number, which lm-eval compares as a string (\"5.50\" is not "
                                   "\"5.5\"), the project as a number",
    "'####' statement's first number": "strict-match takes the number right after \"####\", the project that "
                                       "statement's last (its result: \"#### 2 * 1.5 = 3\")",
    "numbers after the answer": "flexible-extract takes the last number of the completion, the project the one of its "
                                "answer statement, which text with other numbers follows",
    "a dash read as a minus": "flexible-extract reads \"3-4\" as 3 and -4, the project as 3 and 4",
    "punctuation in the number": "the filter's number-like run takes in dots or commas beside it (\"18...\"), "
                                 "which the project leaves out",
}


def harness_number(extracted: str) -> float | None:
    """The number a filter's output spells, as lm-eval's exact_match would read it (",", "$" and a trailing "."
    dropped), or None (no number: "[invalid]")."""
    try:
        return float(re.sub(r"\.$", "", extracted.replace(",", "").replace("$", "")))
    except ValueError:
        return None


def disagreement_reason(filter_name: str, completion: str, extracted: str) -> str | None:
    """The DISAGREEMENTS category that explains why `filter_name`'s output `extracted` and the project's reading of
    `completion` differ (in the number read or in the verdict), or None when none applies."""
    theirs, ours = harness_number(extracted), extract_final_number(completion)
    if filter_name == "strict-match" and extracted == "[invalid]":  # the regex filter's fallback: no match
        return "no '#### N'"
    if ours is None:
        return None
    if theirs is None:
        return "punctuation in the number" if extracted != "[invalid]" else None
    if numbers_equal(theirs, ours):
        return "same number, other spelling"
    if filter_name == "strict-match":
        first_statement, _ = statement_after(completion, completion.index("####") + len("####"))
        if numbers_equal(parse_number(first_statement), theirs) and numbers_equal(last_number(first_statement), ours):
            return "'####' statement's first number"
    if filter_name == "flexible-extract":
        if numbers_equal(theirs, -ours) and re.search(r"\w-\d", completion):
            return "a dash read as a minus"
        if numbers_equal(theirs, last_number(completion)):
            return "numbers after the answer"
    return None


def test_every_disagreement_in_the_table_has_a_reason():
    """The classifier names a documented reason for each verdict of the table where a filter and the project
    differ, and every reason occurs there."""
    reasons = []
    for completion, _, strict, flexible, _, (strict_correct, flexible_correct, project_correct_) in EXTRACTIONS:
        for name, extracted, correct in (("strict-match", strict, strict_correct),
                                         ("flexible-extract", flexible, flexible_correct)):
            if correct != project_correct_:
                reasons.append((completion, name, disagreement_reason(name, completion, extracted)))
    assert [reason for reason in reasons if reason[2] not in DISAGREEMENTS] == []
    assert {reason for *_, reason in reasons} == set(DISAGREEMENTS)


def same_reading(extracted: str, completion: str) -> bool:
    """Whether a filter's output and the project's extraction from the same completion are the same number (or
    neither found one)."""
    theirs, ours = harness_number(extracted), extract_final_number(completion)
    return (theirs is None and ours is None) or numbers_equal(theirs, ours)


@pytest.mark.slow
def test_gsm8k_verdicts_on_smollm2_generations(shared_data):
    """The harness generates on the first GSM8K test questions (SmolLM2, 5-shot as the task's default); on each
    logged generation the project's verdict and number are compared with strict-match's and flexible-extract's
    (exact_match, extracted string): the agreement rates are printed, and every sample where they differ has a
    documented reason."""
    model, tokenizer = load("smollm2_135m")
    started = time.perf_counter()
    records = harness_samples("smollm2_135m", model, tokenizer, shared_data, ["gsm8k"], GSM8K_QUESTIONS,
                              f"eval.lm_eval.num_fewshot={GSM8K_SHOTS}", "eval.lm_eval.batch_size=1")
    harness_seconds = time.perf_counter() - started
    by_filter = defaultdict(list)  # the harness logs each sample once per filter
    for record in sorted(records, key=lambda r: r["doc_id"]):
        by_filter[record["filter"]].append(record)
    assert sorted(by_filter) == ["flexible-extract", "strict-match"]
    assert records[0]["arguments"][0][0].count("Question:") == GSM8K_SHOTS + 1
    print(f"\ngsm8k: {GSM8K_QUESTIONS} questions, {GSM8K_SHOTS}-shot, harness {harness_seconds:.0f} s, project "
          f"{sum(project_correct(s['doc'], s['resps'][0][0]) for s in by_filter['strict-match'])} correct")
    unexplained = []
    for name, samples in by_filter.items():
        assert [sample["doc_id"] for sample in samples] == list(range(GSM8K_QUESTIONS))
        verdicts_agree = [project_correct(s["doc"], s["resps"][0][0]) == bool(s["exact_match"]) for s in samples]
        readings_agree = [same_reading(s["filtered_resps"][0], s["resps"][0][0]) for s in samples]
        print(f"{name}: harness {sum(s['exact_match'] for s in samples):.0f} correct; same verdict on "
              f"{sum(verdicts_agree)}/{len(samples)}, same number on {sum(readings_agree)}/{len(samples)}")
        for sample, verdict_agrees, reading_agrees in zip(samples, verdicts_agree, readings_agree):
            if verdict_agrees and reading_agrees:
                continue
            completion, extracted = sample["resps"][0][0], sample["filtered_resps"][0]
            reason = disagreement_reason(name, completion, extracted)
            print(f"  doc {sample['doc_id']}: {name} {extracted!r} (exact_match {sample['exact_match']:.0f}), "
                  f"project {extract_final_number(completion)}, gold {extract_final_number(sample['doc']['answer'])}"
                  f": {reason}")
            if reason is None:
                unexplained.append((sample["doc_id"], name, extracted, completion))
    assert unexplained == []
