"""MMLU: the csv-layout loader on a tiny hand-written set, 0/5-shot prompts, the logit scoring against a
softmax computed by hand from one unpadded forward pass of tiny_llama and of tiny_t5, and a data_dir without
questions refused before any work."""
import csv
import json
import math

import pytest
import torch
from accelerate import Accelerator

from conftest import ARCHITECTURES, compose_config, tiny_model
from lora_one import ConfigError
from lora_one.eval import BENCHMARKS, run_benchmark

SUBJECTS = {"abstract_algebra": "STEM", "virology": "other"}


def write_csv_set(root):
    """test: 3 questions per subject (answers A, B, C…), dev: 5 per subject."""
    for split, count in (("test", 3), ("dev", 5)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for subject in SUBJECTS:
            with open(root / split / f"{subject}_{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                for i in range(count):
                    writer.writerow([f"{subject} {split} question {i}, with a comma?", f"a{i}", f"b{i}", f"c{i}",
                                     f"d{i}", "ABCD"[i % 4]])
    return root


def mmlu_config(data_dir, **changes):
    cfg = compose_config(["eval=mmlu", f"eval.mmlu.data_dir={data_dir}"]).eval.mmlu
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def test_csv_layout_and_prompts(tmp_path):
    data = write_csv_set(tmp_path / "mmlu")
    zero = BENCHMARKS["mmlu"].load_items(mmlu_config(data, shots=0))
    assert [i["id"] for i in zero] == [f"{s}/{n}" for s in SUBJECTS for n in range(3)]
    assert [i["gold"] for i in zero[:3]] == ["A", "B", "C"]
    assert zero[0]["prompt"] == ("The following are multiple choice questions (with answers) about abstract "
                                 "algebra.\n\n"
                                 "abstract_algebra test question 0, with a comma?\nA. a0\nB. b0\nC. c0\nD. d0\nAnswer:")
    five = BENCHMARKS["mmlu"].load_items(mmlu_config(data, shots=5))
    shots = five[0]["prompt"].split("\n\n")[1:-1]
    assert len(shots) == 5 and shots[1].endswith("Answer: B") and shots[4].startswith("abstract_algebra dev question 4")
    assert five[0]["prompt"].endswith(zero[0]["prompt"].split("\n\n", 1)[1])
    with pytest.raises(ConfigError, match="6-shot needs 6 dev questions"):
        BENCHMARKS["mmlu"].load_items(mmlu_config(data, shots=6))
    with pytest.raises(ConfigError, match="'astronomy' has no test questions"):
        BENCHMARKS["mmlu"].load_items(mmlu_config(data, subjects=["astronomy"]))


def test_bad_csv_row_is_named(tmp_path):
    data = write_csv_set(tmp_path / "mmlu")
    with open(data / "test" / "virology_test.csv", "a") as f:
        f.write("question,a,b,c,d,E\n")
    with pytest.raises(ConfigError, match="virology_test.csv: line 4"):
        BENCHMARKS["mmlu"].load_items(mmlu_config(data, shots=0))


def first_answer_logits(model, tokenizer, prompt: str) -> list[float]:
    """One unpadded prompt: the last position's logits (causal), or the decoder's first step's (T5)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        if not model.config.is_encoder_decoder:
            return model(**inputs).logits[0, -1].tolist()
        start = torch.tensor([[model.config.decoder_start_token_id]])
        return model(**inputs, decoder_input_ids=start).logits[0, 0].tolist()


@pytest.mark.parametrize("option", ARCHITECTURES)
def test_logit_scores_match_a_hand_computed_softmax(tmp_path, option):
    data = write_csv_set(tmp_path / "mmlu")
    model, tokenizer = tiny_model(option)
    task = mmlu_config(data, shots=1, batch_size=4)  # batches mix lengths: left padding must not matter
    metrics = run_benchmark("mmlu", task, str(tmp_path / "out"), model, tokenizer, Accelerator(cpu=True))
    records = [json.loads(line) for line in open(tmp_path / "out" / "mmlu_predictions.jsonl")]
    letter_ids = [tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][0] for letter in "ABCD"]
    for record in records:
        logits = first_answer_logits(model, tokenizer, record["prompt"])
        exps = [math.exp(logits[i]) for i in letter_ids]
        expected = {letter: e / sum(exps) for letter, e in zip("ABCD", exps)}
        assert record["probs"] == pytest.approx(expected, abs=1e-5)
        assert record["extracted"] == max(expected, key=expected.get)
        assert record["correct"] == (record["extracted"] == record["gold"])
    for subject, category in SUBJECTS.items():
        hits = [r["correct"] for r in records if r["subject"] == subject]
        assert metrics["subjects"][subject]["accuracy"] == pytest.approx(sum(hits) / 3)
        assert metrics["categories"][category] == metrics["subjects"][subject]
    assert metrics["overall"]["accuracy"] == pytest.approx(sum(r["correct"] for r in records) / 6)


def test_predicted_letters_from_a_file(tmp_path):
    data = write_csv_set(tmp_path / "mmlu")
    answers = ["A", "The answer is B", "D", "A", "B", "C"]  # all right but the third
    questions = [(s, n) for s in SUBJECTS for n in range(3)]
    rows = [{"task_id": f"{s}/{n}", "completion": answers[k]} for k, (s, n) in enumerate(questions)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = run_benchmark("mmlu", mmlu_config(data, shots=0), str(tmp_path), predictions=str(tmp_path / "p.jsonl"))
    assert metrics["subjects"]["abstract_algebra"]["accuracy"] == pytest.approx(2 / 3)
    assert metrics["subjects"]["virology"]["accuracy"] == 1.0 and metrics["overall"]["accuracy"] == pytest.approx(5 / 6)


def test_mmlu_data_dir_without_questions_is_refused_before_work(tmp_path):
    with pytest.raises(ConfigError, match=rf"^eval.mmlu.data_dir '{tmp_path}' has no test/\*_test.csv$"):
        BENCHMARKS["mmlu"].check_config(compose_config(["eval=mmlu", f"eval.mmlu.data_dir={tmp_path}"]).eval.mmlu)
