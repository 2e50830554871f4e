"""GLUE: the TSV reader against the shared files' manifest (row and label counts, BOM, no header,
word labels, quotes kept), the metrics against hand-computed confusion-matrix values, the label
scores against log-likelihoods computed by hand from one unpadded forward pass of tiny_llama and
tiny_t5, predictions files, the validation split, the CLI and a run_exp run with eval=glue."""
import json
import math
import subprocess
import sys
from collections import Counter

import pytest
import torch
from accelerate import Accelerator

from conftest import ARCHITECTURES, ROOT, TINY, compose_config, run_experiment, tiny_model
from lora_one import ConfigError
from lora_one.data import load_splits
from lora_one.data.encoding import encode_example, make_collator
from lora_one.data.glue import read_glue_tsv
from lora_one.eval import BENCHMARKS, glue, run_benchmark
from lora_one.eval.classification import confusion, f1_score, matthews_correlation
from lora_one.init import METHODS
from lora_one.models import add_lora_adapters, load_model, load_tokenizer

FOLDERS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC", "qnli": "QNLI"}


def glue_config(shared_data, task: str, *overrides: str):
    return compose_config([f"dataset={task}", f"dataset.path={shared_data / 'glue' / FOLDERS[task]}", "eval=glue",
                           *overrides]).eval.glue


# --- reading the files (reference: ../shared/data/glue/MANIFEST.md)

@pytest.mark.parametrize("task,split,rows,labels", [
    ("sst2", "dev", 872, {1: 444, 0: 428}), ("sst2", "train", 67349, {0: 29780, 1: 37569}),
    ("cola", "dev", 1043, {1: 721, 0: 322}), ("cola", "train", 8551, {1: 6023, 0: 2528}),
    ("mrpc", "dev", 408, {1: 279, 0: 129}), ("mrpc", "train", 3668, {1: 2474, 0: 1194}),
    ("qnli", "dev", 5463, {0: 2702, 1: 2761})])  # QNLI: entailment 2,702, not_entailment 2,761
def test_tsv_rows_and_labels_match_the_manifest(shared_data, task, split, rows, labels):
    read = read_glue_tsv(task, str(shared_data / "glue" / FOLDERS[task] / f"{split}.tsv"))
    assert len(read) == rows and Counter(r["label"] for r in read) == labels


def test_tsv_quirks(shared_data):
    cola = read_glue_tsv("cola", str(shared_data / "glue" / "CoLA" / "dev.tsv"))  # no header: row 1 is data
    assert cola[0] == {"sentence": "The sailors rode the breeze clear of the rocks.", "label": 1}
    mrpc = read_glue_tsv("mrpc", str(shared_data / "glue" / "MRPC" / "dev.tsv"))  # BOM header
    assert mrpc[0]["sentence1"].startswith("He said the foodservice pie business doesn 't fit")
    assert mrpc[0]["sentence2"].startswith('" The foodservice pie business does not fit')  # quote kept, not parsed
    qnli = read_glue_tsv("qnli", str(shared_data / "glue" / "QNLI" / "dev.tsv"))
    assert qnli[0] == {"question": "What came into force after the new constitution was herald?", "label": 0,
                       "sentence": "As of that day, the new constitution heralding the Second Republic came into "
                                   "force."}
    assert qnli[694]["sentence"].startswith('" ')


def test_mnli_layout_and_bad_files_are_named(tmp_path):
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    path = tmp_path / "dev_matched.tsv"
    path.write_text(header + "0\t1\t1n\tfiction\tA man.\tA person.\tentailment\tentailment\n"
                             "1\t2\t2c\tfiction\tIt rains.\tIt is dry.\tcontradiction\tcontradiction\n")
    assert read_glue_tsv("mnli", str(path)) == [{"premise": "A man.", "hypothesis": "A person.", "label": 0},
                                                {"premise": "It rains.", "hypothesis": "It is dry.", "label": 2}]
    path.write_text(header + "0\t1\t1n\tfiction\tA man.\tA person.\tentailment\tmaybe\n")
    with pytest.raises(ConfigError, match=r"dev_matched.tsv: line 2: label 'maybe'"):
        read_glue_tsv("mnli", str(path))
    path.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n")
    with pytest.raises(ConfigError, match=r"dev_matched.tsv: line 3 has 3 tab-separated fields, expected 2"):
        read_glue_tsv("sst2", str(path))
    with pytest.raises(ConfigError, match="not a GLUE task"):
        read_glue_tsv("gsm8k", str(path))


def test_training_reads_the_folders_train_file(shared_data):
    cfg = compose_config(["dataset=cola", f"dataset.path={shared_data / 'glue' / 'CoLA'}"])
    train, held_out = load_splits(cfg.dataset, seed=0)
    assert len(train) + len(held_out) == 8551 and len(held_out) == 256
    assert all(ex["prompt"].startswith("cola sentence: ") and ex["response"] in ("unacceptable", "acceptable")
               for ex in train + held_out)


# --- metrics (hand-computed references)

def test_f1_and_matthews_correlation_match_hand_computed_values():
    # TP=3, FP=1, FN=2, TN=4 (positive = 1)
    gold = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    pred = [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert confusion(gold, pred, 1) == (3, 1, 2, 4)
    assert f1_score(gold, pred, 1) == pytest.approx(2 * 3 / (2 * 3 + 1 + 2))  # 2/3
    assert matthews_correlation(gold, pred, 1) == pytest.approx((3 * 4 - 1 * 2) / math.sqrt(4 * 5 * 5 * 6))  # 0.4082
    assert matthews_correlation(gold, gold, 1) == 1.0 and matthews_correlation(gold, [1 - g for g in gold], 1) == -1.0
    assert matthews_correlation(gold, [1] * 10, 1) == 0.0  # one predicted class: sklearn's 0
    assert f1_score([0, 0], [0, 0], 1) == 0.0


def test_class_counts_flag_a_one_class_run_and_give_the_majority_baseline():
    words = ["unacceptable", "acceptable"]
    gold = ["acceptable"] * 7 + ["unacceptable"] * 3
    predicted = ["acceptable"] * 6 + [None] + ["acceptable"] * 2 + ["unacceptable"]  # 9 of 10 parsed: 8 acceptable
    metrics = glue.task_metrics("cola", words, gold, predicted)
    assert metrics["predicted_counts"] == {"unacceptable": 1, "acceptable": 8} and metrics["unparsed"] == 1
    assert metrics["gold_counts"] == {"unacceptable": 3, "acceptable": 7}  # majority-class baseline: 7/10
    assert max(metrics["gold_counts"].values()) / metrics["n"] == 0.7
    assert glue.task_metrics("cola", words, gold, ["acceptable"] * 10)["predicted_counts"] == \
           {"unacceptable": 0, "acceptable": 10}  # every label word is counted, predicted or not


def test_label_extraction_prefers_the_longer_label():
    words = ["not_equivalent", "equivalent"]
    assert glue.extract_label("not_equivalent", words) == "not_equivalent"
    assert glue.extract_label("They are Equivalent.", words) == "equivalent"
    assert glue.extract_label("equivalently", words) is None and glue.extract_label("", words) is None


def test_paper_protocol_compares_first_tokens():
    assert glue.paper_protocol_correct({"entailment": -1.0, "neutral": -2.0, "contradiction": -3.0}, "entailment")
    assert not glue.paper_protocol_correct({"entailment": -1.0, "neutral": -0.5, "contradiction": -3.0}, "entailment")
    assert not glue.paper_protocol_correct({"negative": -1.0, "positive": -1.0}, "positive")  # strict, as theirs


# --- scoring with a model

def hand_log_likelihoods(model, tokenizer, prompt: str, word: str) -> list[float]:
    """log p of each token of word + eos after the prompt, from one unpadded forward pass (a causal
    model reads the word after a space: GLUE prompts end in the sentence's last character)."""
    assert not prompt[-1].isspace()
    spaced = word if model.config.is_encoder_decoder else " " + word
    target = tokenizer(spaced, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            source = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
            decoder_inputs = torch.tensor([[model.config.decoder_start_token_id] + target[:-1]])
            log_probs = torch.log_softmax(model(input_ids=source, decoder_input_ids=decoder_inputs).logits[0], -1)
            return [log_probs[t, token].item() for t, token in enumerate(target)]
        prompt_ids = tokenizer(prompt)["input_ids"]
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + target])).logits[0], -1)
        return [log_probs[len(prompt_ids) + t - 1, token].item() for t, token in enumerate(target)]


@pytest.mark.parametrize("option", ARCHITECTURES)
@pytest.mark.parametrize("task", ["cola", "mrpc"])
def test_scores_match_hand_computed_log_likelihoods(shared_data, tmp_path, task, option):
    model, tokenizer = tiny_model(option)
    cfg = glue_config(shared_data, task, "eval.glue.limit=7", "eval.glue.subset_seed=1", "eval.glue.batch_size=3")
    metrics = run_benchmark("glue", cfg, str(tmp_path), model, tokenizer, Accelerator(cpu=True))
    records = [json.loads(line) for line in open(tmp_path / f"{task}_predictions.jsonl")]
    words = list(cfg.dataset.label_names)
    for record in records:
        by_hand = {w: hand_log_likelihoods(model, tokenizer, record["prompt"], w) for w in words}
        assert record["log_likelihood"] == pytest.approx({w: sum(lps) for w, lps in by_hand.items()}, abs=1e-4)
        assert record["first_token_log_prob"] == pytest.approx({w: lps[0] for w, lps in by_hand.items()}, abs=1e-4)
        best = max(words, key=lambda w: sum(by_hand[w]))
        assert record["predicted"] == record["completion"] == best and record["correct"] == (best == record["gold"])
    gold, predicted = [r["gold"] for r in records], [r["predicted"] for r in records]
    assert metrics["n"] == 7 and metrics["accuracy"] == pytest.approx(sum(g == p for g, p in zip(gold, predicted)) / 7)
    main = {"cola": matthews_correlation, "mrpc": f1_score}[task](gold, predicted, words[1])
    assert metrics[metrics["main_metric"]] == pytest.approx(main)
    assert metrics["paper_protocol_accuracy"] == pytest.approx(sum(r["paper_protocol_correct"] for r in records) / 7)


@pytest.mark.parametrize("option", ARCHITECTURES)
def test_batched_scores_equal_one_example_at_a_time(shared_data, option):
    model, tokenizer = tiny_model(option)
    items = BENCHMARKS["glue"].load_items(glue_config(shared_data, "qnli", "eval.glue.limit=5"))
    prompts = [item["prompt"] for item in items]
    words = ["entailment", "not_entailment"]
    one = glue.label_log_probs(model, tokenizer, prompts, words, 1, Accelerator(cpu=True))
    batched = glue.label_log_probs(model, tokenizer, prompts, words, 4, Accelerator(cpu=True))
    for a, b in zip(one, batched):
        for lps_a, lps_b in zip(a, b):
            assert lps_b == pytest.approx(lps_a, abs=1e-4)


def per_label_log_probs(model, tokenizer, prompts: list[str], words: list[str]) -> list[list[list[float]]]:
    """The reference: each (prompt, label word) scored as its own training row (`encode_example`, right-padded,
    the vocabulary head at every position), the way GLUE was scored before a prompt was read once for all labels."""
    seq2seq = model.config.is_encoder_decoder
    rows = [encode_example(tokenizer, p, w, glue.NO_TRUNCATION, seq2seq) for p in prompts for w in words]
    batch = make_collator(tokenizer)(rows)
    labels = batch["labels"]
    with torch.no_grad():
        if seq2seq:
            logits = model(**batch).logits
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            labels = labels[:, 1:]
    picked = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    per_row = [row[mask].tolist() for row, mask in zip(picked, labels != -100)]
    return [per_row[i * len(words):(i + 1) * len(words)] for i in range(len(prompts))]


def with_random_adapters(model, option: str, adapters: str):
    """`peft=all` LoRA (or DoRA) adapters whose B is random, so that they change every layer's output."""
    cfg = compose_config(TINY + [f"model={option}", "peft=all", f"peft.use_dora={adapters == 'dora'}"])
    torch.manual_seed(1)  # A as well as B
    model = add_lora_adapters(model, cfg.peft, cfg.model.type, METHODS["LoRA"], cfg.init)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)
    return model.eval()


def assert_same_scores_and_predictions(shared, reference, words: list[str], abs_tol: float):
    for per_label, expected in zip(shared, reference):
        assert [len(lps) for lps in per_label] == [len(lps) for lps in expected]  # the same target tokens
        for lps, lps_expected in zip(per_label, expected):
            assert lps == pytest.approx(lps_expected, abs=abs_tol)
            assert sum(lps) == pytest.approx(sum(lps_expected), abs=abs_tol)
        assert max(words, key=lambda w: sum(per_label[words.index(w)])) == \
               max(words, key=lambda w: sum(expected[words.index(w)]))


@pytest.mark.parametrize("option,adapters", [("tiny_llama", "none"), ("tiny_llama", "lora"), ("tiny_llama", "dora"),
                                             ("tiny_t5", "lora")])
def test_one_prompt_pass_scores_as_each_label_on_its_own(shared_data, option, adapters):
    """Prompts of different lengths (so left padding and the repeated KV cache matter) and labels of
    different token counts (MRPC: not_equivalent is longer than equivalent), through PEFT adapters."""
    model, tokenizer = tiny_model(option)
    if adapters != "none":
        model = with_random_adapters(model, option, adapters)
    cfg = glue_config(shared_data, "mrpc", "eval.glue.limit=6")
    prompts, words = [item["prompt"] for item in BENCHMARKS["glue"].load_items(cfg)], list(cfg.dataset.label_names)
    shared = glue.label_log_probs(model, tokenizer, prompts, words, 4, Accelerator(cpu=True))
    reference = per_label_log_probs(model, tokenizer, prompts, words)
    assert_same_scores_and_predictions(shared, reference, words, abs_tol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sst2", "mrpc"])
def test_one_prompt_pass_scores_as_each_label_on_its_own_on_smollm2(shared_data, task):
    """In float64, where rounding cannot hide a difference of 1e-5 (measured: 0). In float32 the two differ
    by up to 3.6e-5 (SST-2) and 2.9e-5 (MRPC) nats on these 12 rows, about as much as the reference
    differs from itself batched otherwise (2.1e-5, 1.4e-5): rounding of log-probabilities near -15."""
    cfg = compose_config(["model=smollm2_135m"])
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = with_random_adapters(load_model(cfg.model, tokenizer, cfg.cache_dir), "smollm2_135m", "lora").double()
    glue_cfg = glue_config(shared_data, task, "eval.glue.limit=12", "eval.glue.subset_seed=0")
    prompts = [item["prompt"] for item in BENCHMARKS["glue"].load_items(glue_cfg)]
    words = list(glue_cfg.dataset.label_names)
    shared = glue.label_log_probs(model, tokenizer, prompts, words, 8, Accelerator(cpu=True))
    reference = [per_label_log_probs(model, tokenizer, [p], words)[0] for p in prompts]
    assert_same_scores_and_predictions(shared, reference, words, abs_tol=1e-5)


def test_a_predictions_file_is_rescored(shared_data, tmp_path):
    cfg = glue_config(shared_data, "mrpc", "eval.glue.limit=5")
    golds = [item["gold"] for item in BENCHMARKS["glue"].load_items(cfg)]  # MRPC dev labels 1, 0, 0, 1, 0
    assert golds == ["equivalent", "not_equivalent", "not_equivalent", "equivalent", "not_equivalent"]
    completions = ["equivalent", "The answer: not_equivalent", "no idea", "not_equivalent", "equivalent"]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"idx": i, "completion": c}) + "\n" for i, c in enumerate(completions)))
    metrics = run_benchmark("glue", cfg, str(tmp_path / "out"), predictions=str(path))
    # scored as: equivalent, not_equivalent, (unparsed → the wrong label) equivalent, not_equivalent, equivalent
    # positive = equivalent: TP=1 (row 0), FP=2 (rows 2, 4), FN=1 (row 3), TN=1 (row 1)
    assert metrics["accuracy"] == pytest.approx(2 / 5) and metrics["unparsed"] == 1
    assert metrics["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1)) and "paper_protocol_accuracy" not in metrics
    assert metrics["predicted_counts"] == {"not_equivalent": 2, "equivalent": 2}  # the unparsed row in neither
    assert metrics["gold_counts"] == {"not_equivalent": 3, "equivalent": 2}
    record = json.loads((tmp_path / "out" / "mrpc_predictions.jsonl").read_text().splitlines()[2])
    assert record["predicted"] is None and record["correct"] is False and record["gold"] == "not_equivalent"


def test_validation_split_is_carved_from_train(shared_data):
    cfg = glue_config(shared_data, "cola", "eval.glue.split=validation", "seed=3")
    cola = compose_config(["dataset=cola", f"dataset.path={shared_data / 'glue' / 'CoLA'}"]).dataset
    held_out = load_splits(cola, 3)[1]
    items = BENCHMARKS["glue"].load_items(cfg)
    assert [i["prompt"] for i in items] == [ex["prompt"] for ex in held_out] and len(items) == 256
    dev = {ex["prompt"] for ex in glue.dev_examples(glue_config(shared_data, "cola"))}
    assert len(dev) > 1000 and not dev & {i["prompt"] for i in items}


def test_bad_glue_configs_are_named(shared_data):
    with pytest.raises(ConfigError, match="'toy_math' is not a GLUE task"):
        BENCHMARKS["glue"].load_items(compose_config(["eval=glue"]).eval.glue)
    with pytest.raises(ConfigError, match="is a training file"):
        BENCHMARKS["glue"].load_items(glue_config(shared_data, "cola",
                                                  f"eval.glue.path={shared_data / 'glue' / 'CoLA' / 'train.tsv'}"))
    with pytest.raises(ConfigError, match="split 'test' is unknown"):
        BENCHMARKS["glue"].load_items(glue_config(shared_data, "cola", "eval.glue.split=test"))
    with pytest.raises(ConfigError, match="differs from dataset 'cola'"):
        BENCHMARKS["glue"].load_items(glue_config(shared_data, "cola", "eval.glue.task=sst2"))


def test_cli_task_picks_the_dataset_prompts(shared_data, tmp_path):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps({"idx": i, "completion": "acceptable"}) + "\n" for i in range(4)))
    done = subprocess.run([sys.executable, str(ROOT / "eval" / "glue.py"), "--task", "cola", "--path",
                           str(shared_data / "glue" / "CoLA"), "--limit", "4", "--predictions", str(predictions),
                           "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "cola_results.json").read_text())
    assert summary["metrics"]["accuracy"] == 1.0 and summary["metrics"]["task"] == "cola"  # dev rows 0-3 are acceptable
    assert summary["metrics"]["matthews_correlation"] == 0.0  # one class everywhere
    first = json.loads((tmp_path / "out" / "cola_predictions.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "cola sentence: The sailors rode the breeze clear of the rocks."


def test_run_exp_scores_the_trained_model_on_dev(shared_data, tmp_path):
    overrides = TINY + ["dataset=cola", f"dataset.path={shared_data / 'glue' / 'CoLA'}", "dataset.max_train_samples=16",
                        "model.max_steps=1", "eval=glue", "eval.glue.limit=4"]
    results = run_experiment(overrides, tmp_path)
    assert results["eval"]["glue"]["task"] == "cola" and results["eval"]["glue"]["n"] == 4
    records = [json.loads(line) for line in open(tmp_path / "cola_predictions.jsonl")]
    dev = read_glue_tsv("cola", str(shared_data / "glue" / "CoLA" / "dev.tsv"))
    assert [r["prompt"] for r in records] == [f"cola sentence: {row['sentence']}" for row in dev[:4]]
