"""GSM8K scoring: the gold solutions score 100 %, solutions of other questions near 0, read from a
predictions file exactly as the CLI reads one; the hub's copy offline is one line naming the local setting."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, compose_config
from lora_one import ConfigError
from lora_one.eval import BENCHMARKS, run_benchmark


def gsm8k_config(shared_data, **changes):
    cfg = compose_config(["eval=gsm8k", f"eval.gsm8k.path={shared_data / 'gsm8k' / 'test.jsonl'}"]).eval.gsm8k
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def write_predictions(path, completions):
    path.write_text("".join(json.dumps({"idx": i, "completion": c}) + "\n" for i, c in enumerate(completions)))
    return str(path)


def test_gold_solutions_score_100_and_shifted_ones_near_0(shared_data, tmp_path):
    answers = [json.loads(line)["answer"] for line in open(shared_data / "gsm8k" / "test.jsonl")]
    cfg = gsm8k_config(shared_data)
    gold = run_benchmark("gsm8k", cfg, str(tmp_path / "gold"),
                         predictions=write_predictions(tmp_path / "g.jsonl", answers))
    assert gold["accuracy"] == 1.0 and gold["n"] == 1319
    shifted = answers[1:] + answers[:1]
    other = run_benchmark("gsm8k", cfg, str(tmp_path / "shifted"),
                          predictions=write_predictions(tmp_path / "s.jsonl", shifted))
    assert other["accuracy"] < 0.05
    records = [json.loads(line) for line in open(tmp_path / "gold" / "gsm8k_predictions.jsonl")]
    assert records[0]["gold"] == "18" and records[0]["extracted"] == "18" and records[0]["correct"]
    assert "### Instruction:\nJanet" in records[0]["prompt"]  # the training (alpaca) prompt


def test_limit_and_seeded_subset_keep_question_ids(shared_data, tmp_path):
    first = BENCHMARKS["gsm8k"].load_items(gsm8k_config(shared_data, limit=5))
    assert [item["id"] for item in first] == ["0", "1", "2", "3", "4"]
    sampled = BENCHMARKS["gsm8k"].load_items(gsm8k_config(shared_data, limit=5, subset_seed=3))
    assert sampled == BENCHMARKS["gsm8k"].load_items(gsm8k_config(shared_data, limit=5, subset_seed=3))
    assert sampled != first and [int(i["id"]) for i in sampled] == sorted(int(i["id"]) for i in sampled)


def test_a_predictions_file_missing_questions_is_named(shared_data, tmp_path):
    cfg = gsm8k_config(shared_data, limit=3)
    with pytest.raises(ConfigError, match="no completion for 1 of 3"):
        run_benchmark("gsm8k", cfg, str(tmp_path), predictions=write_predictions(tmp_path / "p.jsonl", ["#### 1"] * 2))


def test_cli_scores_a_predictions_file(shared_data, tmp_path):
    predictions = write_predictions(tmp_path / "p.jsonl", ["#### 18", "The answer is 4.", "#### 70,000"])
    out = subprocess.run([sys.executable, str(ROOT / "eval" / "gsm8k.py"), "--predictions", predictions,
                          "--path", str(shared_data / "gsm8k" / "test.jsonl"), "--limit", "3",
                          "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "out" / "gsm8k_results.json").read_text())
    assert summary["metrics"]["correct"] == 2 and summary["metrics"]["n"] == 3  # gold: 18, 3, 70000


def test_gsm8k_from_the_hub_offline_is_one_line_naming_the_local_setting(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ConfigError, match=r"openai/gsm8k.*eval\.gsm8k\.path"):
        BENCHMARKS["gsm8k"].load_items(compose_config(["eval=gsm8k", "eval.gsm8k.path=null"]).eval.gsm8k)
