"""Batched generation equals one prompt at a time and transformers' own generate, for a causal and an
encoder-decoder model, through every generating evaluator; the batch plan does not depend on the
number of processes; the eval group composes as a list and runs after training into results.json."""
import json
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator

from conftest import ARCHITECTURES, ROOT, TINY, compose_config, run_experiment, tiny_model
from lora_one.eval import BENCHMARKS, run_benchmark
from lora_one.eval.generation import Decoding, generate, plan_batches, truncate_at_stop

PROMPTS = ["Q: 2 + 2 =", "A much longer prompt about ducks, eggs and a farmers' market, asking for money:", "Hi",
           "Below is an instruction.\n\n### Response:\n", "x"]


def greedy_reference(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """One unpadded prompt through transformers' own generate; a causal model's output repeats the prompt."""
    output = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)[0]
    new = output if model.config.is_encoder_decoder else output[len(tokenizer(prompt)["input_ids"]):]
    return tokenizer.decode(new, skip_special_tokens=True)


@pytest.mark.parametrize("option", ARCHITECTURES)
def test_batched_greedy_generation_equals_one_prompt_at_a_time(option):
    model, tokenizer = tiny_model(option)
    decoding = Decoding(max_new_tokens=12)
    accelerator = Accelerator(cpu=True)
    one_by_one = generate(model, tokenizer, PROMPTS, decoding, 1, accelerator)
    batched = generate(model, tokenizer, PROMPTS, decoding, 3, accelerator)
    assert batched == one_by_one
    assert all(len(outs) == 1 for outs in batched) and sum(bool(outs[0]) for outs in batched) >= 4
    assert [outs[0] for outs in batched] == [greedy_reference(model, tokenizer, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("option", ARCHITECTURES)
@pytest.mark.parametrize("task", ["gsm8k", "commonsense", "humaneval"])
def test_generating_evaluators_run_on_both_architectures(shared_data, tmp_path, task, option):
    """Each record's completion is the model's own greedy continuation of the record's prompt, cut at the stop
    strings."""
    model, tokenizer = tiny_model(option)
    options = {"gsm8k": [f"eval.gsm8k.path={shared_data / 'gsm8k' / 'test.jsonl'}"],
               "commonsense": [f"eval.commonsense.data_dir={shared_data / 'commonsense'}",
                               "eval.commonsense.tasks=[boolq]"],
               "humaneval": ["++eval.humaneval.confirm_run_unsafe_code=true"]}[task]  # the sandbox runs the programs
    cfg = compose_config([f"eval={task}", f"eval.{task}.limit=3", f"eval.{task}.max_new_tokens=8",
                          f"eval.{task}.batch_size=2"] + options).eval[task]
    metrics = run_benchmark(task, cfg, str(tmp_path), model, tokenizer, Accelerator(cpu=True))
    records = [json.loads(line) for line in open(tmp_path / f"{task}_predictions.jsonl")]
    assert len(records) == 3 and metrics
    decoding = BENCHMARKS[task].decoding(cfg)
    for record in records:
        greedy = greedy_reference(model, tokenizer, record["prompt"], 8)
        assert record["completion"] == truncate_at_stop(greedy, decoding.stop, decoding.stop_after)


def test_seeded_sampling_gives_several_reproducible_samples():
    model, tokenizer = tiny_model()
    decoding = Decoding(max_new_tokens=6, temperature=1.0, top_p=0.95, num_samples=3, seed=7)
    accelerator = Accelerator(cpu=True)
    first = generate(model, tokenizer, PROMPTS[:2], decoding, 2, accelerator)
    assert first == generate(model, tokenizer, PROMPTS[:2], decoding, 2, accelerator)
    assert [len(outs) for outs in first] == [3, 3] and len(set(first[1])) > 1


def test_batch_plan_is_shared_by_any_number_of_processes():
    lengths = [5, 9, 1, 9, 3, 7, 2]
    batches = plan_batches(lengths, 3)
    assert batches == [[1, 3, 5], [0, 4, 6], [2]]  # longest first, ties in order
    for processes in (1, 2, 3):
        shares = [batches[rank::processes] for rank in range(processes)]
        assert sorted(b for share in shares for batch in share for b in batch) == list(range(len(lengths)))


def test_stop_strings_cut_the_completion():
    assert truncate_at_stop("#### 18\n\n### Instruction:\nMore", ("### Instruction", "Below is")) == "#### 18\n\n"
    assert truncate_at_stop("no stop here", ("###",)) == "no stop here"


def test_gsm8k_completions_end_at_the_first_answer_line():
    """A model that repeats "#### 18" until max_new_tokens cuts the last one mid-number: generation stops
    each row at its first complete answer line, and the completion is cut there."""
    from lora_one.eval.generation import PatternMatched
    from lora_one.eval.gsm8k import ANSWER_LINE

    assert truncate_at_stop("9 * 2 = 18\n#### 18\n#### 18\n#### 1", (), ANSWER_LINE) == "9 * 2 = 18\n#### 18\n"
    assert truncate_at_stop("#### 1", (), ANSWER_LINE) == "#### 1"  # not ended yet: nothing to cut
    _, tokenizer = tiny_model()
    prompt = tokenizer("Q: 9 * 2?\nA:")["input_ids"]
    rows = [prompt + tokenizer(text, add_special_tokens=False)["input_ids"]
            for text in ("#### 18\n#", "#### 1", "18\n")]
    width = max(map(len, rows))
    batch = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])  # a finished row is padded
    stopped = PatternMatched(ANSWER_LINE, tokenizer, len(prompt))(batch, None)
    assert stopped.tolist() == [True, False, False]


def test_eval_group_lists_compose():
    cfg = compose_config(["eval=[gsm8k,humaneval]", "eval.gsm8k.limit=5"])
    assert list(cfg.eval) == ["gsm8k", "humaneval"] and cfg.eval.gsm8k.limit == 5 and cfg.eval.humaneval.limit is None
    assert cfg.eval.gsm8k.seed == cfg.seed
    assert dict(compose_config([]).eval) == {} and dict(compose_config(["eval=none"]).eval) == {}


def test_run_exp_evaluates_the_trained_model(shared_data, tmp_path):
    overrides = TINY + ["model.max_steps=2", "eval=[gsm8k,commonsense]",
                        f"eval.gsm8k.path={shared_data / 'gsm8k' / 'test.jsonl'}", "eval.gsm8k.limit=3",
                        "eval.gsm8k.max_new_tokens=6", f"eval.commonsense.data_dir={shared_data / 'commonsense'}",
                        "eval.commonsense.tasks=[boolq,piqa]", "eval.commonsense.limit=2",
                        "eval.commonsense.max_new_tokens=4"]
    run_experiment(overrides, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["eval"]["gsm8k"]["n"] == 3
    assert set(results["eval"]["commonsense"]) >= {"boolq", "piqa", "mean_accuracy"}
    gsm8k_rows = [json.loads(line) for line in open(tmp_path / "gsm8k_predictions.jsonl")]
    assert [r["idx"] for r in gsm8k_rows] == [0, 1, 2]
    assert all({"prompt", "completion", "extracted", "gold", "correct"} <= set(r) for r in gsm8k_rows)
    assert len(open(tmp_path / "commonsense_predictions.jsonl").readlines()) == 4


@pytest.mark.slow
def test_two_processes_give_the_predictions_of_one(shared_data, tmp_path):
    def run_cli(launcher, out):
        args = ["--model", "tiny_llama", "--path", str(shared_data / "gsm8k" / "test.jsonl"), "--limit", "7",
                "--max_new_tokens", "6", "--batch_size", "2", "--output_dir", str(out)]
        done = subprocess.run(launcher + [str(ROOT / "eval" / "gsm8k.py")] + args, capture_output=True, text=True,
                              cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        return (out / "gsm8k_predictions.jsonl").read_text()

    one = run_cli([sys.executable], tmp_path / "one")
    # torchrun, not `accelerate launch --cpu --num_processes 2`, which starts a single process on CPU
    two = run_cli(["torchrun", "--standalone", "--nproc_per_node", "2"], tmp_path / "two")
    assert json.loads((tmp_path / "two" / "gsm8k_results.json").read_text())["num_processes"] == 2
    assert two == one and len(one.splitlines()) == 7
