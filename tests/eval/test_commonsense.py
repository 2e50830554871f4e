"""Commonsense scoring on the real LLM-Adapters test files: each task's gold `output` scores 100 %,
another valid answer word 0 %; a task without a test file is skipped and reported."""
import json

import pytest

from conftest import compose_config
from lora_one import ConfigError
from lora_one.eval import BENCHMARKS, run_benchmark

AVAILABLE = ["boolq", "piqa", "social_i_qa", "winogrande", "ARC-Challenge", "ARC-Easy", "openbookqa"]


def commonsense_config(shared_data, **changes):
    overrides = ["eval=commonsense", f"eval.commonsense.data_dir={shared_data / 'commonsense'}"]
    cfg = compose_config(overrides).eval.commonsense
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def other_answer(gold: str) -> str:
    """A different, valid answer word of the same format (true↔false, answer1→answer2, ...)."""
    if gold in ("true", "false"):
        return {"true": "false", "false": "true"}[gold]
    return gold[:-1] + ("2" if gold[-1] == "1" else "1")


def test_gold_outputs_score_100_and_other_answers_0(shared_data, tmp_path):
    cfg = commonsense_config(shared_data, limit=30)
    items = BENCHMARKS["commonsense"].load_items(cfg)
    outputs = {}
    for task in AVAILABLE:
        rows = json.load(open(shared_data / "commonsense" / task / "test.json"))
        outputs.update({f"{task}/{i}": row["output"] for i, row in enumerate(rows)})
    gold_file, wrong_file = tmp_path / "gold.jsonl", tmp_path / "wrong.jsonl"
    gold_file.write_text("".join(json.dumps({"task_id": i["id"], "completion": outputs[i["id"]]}) + "\n"
                                 for i in items))
    wrong_file.write_text("".join(json.dumps({"task_id": i["id"], "completion": f"the correct answer is "
                                              f"{other_answer(i['gold'])}"}) + "\n" for i in items))
    gold = run_benchmark("commonsense", cfg, str(tmp_path / "g"), predictions=str(gold_file))
    assert all(gold[task] == {"accuracy": 1.0, "correct": 30, "n": 30} for task in AVAILABLE)
    assert gold["mean_accuracy"] == 1.0 and gold["skipped"] == ["hellaswag"]
    wrong = run_benchmark("commonsense", cfg, str(tmp_path / "w"), predictions=str(wrong_file))
    assert wrong["mean_accuracy"] == 0.0
    record = json.loads(open(tmp_path / "g" / "commonsense_predictions.jsonl").readline())
    assert record["task"] == "boolq" and record["extracted"] == record["gold"]
    assert record["prompt"].startswith("Below is an instruction") and record["prompt"].endswith("### Response:\n")


def test_unknown_task_and_empty_data_dir_are_named(shared_data, tmp_path):
    with pytest.raises(ConfigError, match="'siqa' is unknown"):
        BENCHMARKS["commonsense"].load_items(commonsense_config(shared_data, tasks=["siqa"]))
    with pytest.raises(ConfigError, match="no test file"):
        BENCHMARKS["commonsense"].load_items(commonsense_config(shared_data, data_dir=str(tmp_path)))
