"""run_exp end to end on tiny models: artifacts, determinism, saving, and one clear error per bad input."""
import json

import pytest
import torch
from accelerate.utils import set_seed
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import TINY, compose_config, run_cli, run_experiment
from lora_one import ConfigError
from lora_one.data import encode_rows, load_splits
from lora_one.data.encoding import IGNORE_INDEX
from lora_one.data.toy_math import generate_toy_math
from lora_one.models import load_model, load_tokenizer

SHORT = TINY + ["model.max_steps=3"]


def test_run_writes_results_and_init_artifacts(tmp_path):
    results = run_experiment(SHORT + ["init.save_artifacts=true"], tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["config_digest"] == results["config_digest"]
    assert on_disk["steps"] == 3 and len(on_disk["train_loss_curve"]) == 3
    assert on_disk["trainable_params"] > 0 and on_disk["init_time_s"] > 0 and on_disk["init_peak_mem_mb"] > 0
    assert on_disk["eval_loss_after_init"] < on_disk["eval_loss_base"]  # one useful gradient step
    grads = load_file(tmp_path / "init" / "gradients.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in grads
    batches = torch.load(tmp_path / "init" / "batches.pt")
    cfg = compose_config(SHORT)
    assert len(batches) == cfg.init.iters and batches[0]["input_ids"].shape[0] == cfg.init.bsz
    assert (tmp_path / "init" / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_same_seed_same_init_and_loss_curve(tmp_path):
    first = run_experiment(SHORT + ["init.save_artifacts=true"], tmp_path / "a")
    second = run_experiment(SHORT + ["init.save_artifacts=true"], tmp_path / "b")
    other = run_experiment(SHORT + ["seed=7"], tmp_path / "c")
    assert first["train_loss_curve"] == second["train_loss_curve"]
    assert first["train_loss_curve"] != other["train_loss_curve"]
    a = load_file(tmp_path / "a" / "init" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "init" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("direction,targets", [("LoRA-One", "qv"), ("LoRA-GA", "qv"), ("LoRA-One", "head, tied"),
                                               ("LoRA-GA", "head, untied")])
def test_merged_model_and_exported_adapter_match_the_trained_model(tmp_path, direction, targets):
    """The merged checkpoint loads with AutoModelForCausalLM; the saved adapter applied to the
    *original* base (LoRA-GA moved the base weights at init) gives the same logits; with the output
    head adapted too, whether tied to the input embeddings (an init that keeps the base) or not."""
    head = {"qv": [], "head, tied": ["peft.target_modules=[q_proj,v_proj,lm_head]"],
            "head, untied": ["peft.target_modules=[q_proj,v_proj,lm_head]",
                             "model.architecture.tie_word_embeddings=false"]}
    overrides = SHORT + [f"init.direction={direction}", "model.saving=true", "peft=qv", "peft.lora_r=4", *head[targets]]
    run_experiment(overrides, tmp_path)
    cfg = compose_config(overrides)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    set_seed(cfg.seed)  # run_exp seeds before building the random tiny model: rebuild the same base
    base = load_model(cfg.model, tokenizer, cfg.cache_dir)
    ids = tokenizer(["Ava has 3 apples and gets 4 more."], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with_adapter = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(**ids).logits, merged(**ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("init", ["init.direction=LoRA-GA", "init=pissa"])
def test_an_init_that_moves_a_tied_weight_is_refused(tmp_path, init):
    """W ← W − s·B₀A₀ on an output head tied to the input embeddings moves the embeddings too, which no
    exported adapter reproduces (the reloaded adapter's eval loss differed: 6.7242 vs 6.7011)."""
    with pytest.raises(ConfigError,
                       match=r"moves the base weight of lm_head at init .* tied to model.embed_tokens.weight"):
        run_experiment(SHORT + [init, "peft.target_modules=[q_proj,lm_head]"], tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_seq2seq_path_trains(tmp_path):
    results = run_experiment(["model=tiny_t5", "peft=qv"], tmp_path)
    assert results["steps"] == 5 and all(torch.isfinite(torch.tensor(results["train_loss_curve"])))


def test_labels_mask_the_prompt():
    cfg = compose_config(TINY)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    example = {"prompt": "Question: 2+2?\n", "response": "4\n#### 4"}
    [encoded] = encode_rows(tokenizer, [example], 64, seq2seq=False)
    prompt_len = len(tokenizer(example["prompt"])["input_ids"])
    assert encoded["labels"][:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert encoded["labels"][prompt_len:] == encoded["input_ids"][prompt_len:]
    assert tokenizer.decode(encoded["input_ids"][prompt_len:-1]) == example["response"]
    assert encoded["input_ids"][-1] == tokenizer.eos_token_id


def test_a_response_glued_to_the_prompt_is_read_after_a_space():
    """`…journey .` + `positive` → the causal model reads `… . positive`; T5's target is the bare word;
    a prompt ending in whitespace gets nothing added."""
    cfg = compose_config(TINY)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    prompt = "sst2 sentence: a charming journey ."
    [causal] = encode_rows(tokenizer, [{"prompt": prompt, "response": "positive"}], 64, seq2seq=False)
    assert tokenizer.decode(causal["input_ids"][:-1]) == prompt + " positive"
    [seq2seq] = encode_rows(tokenizer, [{"prompt": prompt, "response": "positive"}], 64, seq2seq=True)
    assert tokenizer.decode(seq2seq["labels"][:-1]) == "positive"
    [spaced] = encode_rows(tokenizer, [{"prompt": prompt + "\n", "response": "positive"}], 64, seq2seq=False)
    assert tokenizer.decode(spaced["input_ids"][:-1]) == prompt + "\npositive"


def test_held_out_loss_curve_every_n_steps(tmp_path):
    """eval_loss_every=2 over 5 steps: the held-out loss after the init, at steps 2 and 4, and at the end,
    each equal to a held-out pass of the same run's state; measuring does not change training."""
    plain = run_experiment(TINY + ["model.max_steps=5"], tmp_path / "plain")
    curve = run_experiment(TINY + ["model.max_steps=5", "eval_loss_every=2"], tmp_path / "curve")
    assert [step for step, _ in curve["eval_loss_curve"]] == [0, 2, 4, 5]
    assert curve["eval_loss_curve"][0][1] == curve["eval_loss_after_init"]
    assert curve["eval_loss_curve"][-1][1] == curve["eval_loss"]
    assert curve["train_loss_curve"] == plain["train_loss_curve"] and curve["eval_loss"] == plain["eval_loss"]
    assert [step for step, _ in plain["eval_loss_curve"]] == [0, 5]
    shorter = run_experiment(TINY + ["model.max_steps=2"], tmp_path / "shorter")  # same two steps (constant lr)
    assert curve["eval_loss_curve"][1][1] == pytest.approx(shorter["eval_loss"], abs=1e-6)


def test_toy_math_is_deterministic_and_gsm8k_formatted():
    rows = generate_toy_math(50, seed=3)
    assert rows == generate_toy_math(50, seed=3) and rows != generate_toy_math(50, seed=4)
    for row in rows:
        reasoning, answer = row["answer"].split("\n#### ")
        expression = reasoning.split("<<")[1].split("=")[0]
        assert eval(expression) == int(answer)  # the worked arithmetic is right


def test_local_gsm8k_file_loads(shared_data):
    cfg = compose_config(TINY + ["dataset=gsm8k", f"dataset.path={shared_data}/gsm8k/train.jsonl"])
    train, held_out = load_splits(cfg.dataset, cfg.seed)
    assert len(train) + len(held_out) == 7473
    assert all("#### " in ex["response"] and "### Instruction:" in ex["prompt"] for ex in train[:50])


def bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "1+1?", "answer": "#### 2"}\n' * 5 + '{"question": "2+2?"}\n')
    return f"dataset.path={path}"


@pytest.mark.parametrize("overrides,message", [
    (["init.direction=LoRA-Three"], "init.direction 'LoRA-Three'"),
    (["init.stable_gamma=0"], "init.stable_gamma must be > 0"),
    (["init.stable_gamma=-4"], "init.stable_gamma must be > 0"),
    (["optim=scaled_adamw", "optim.prec_reg=-1"], "optim.prec_reg must be ≥ 0"),
    (["peft.lora_r=100"], r"peft.lora_r=100 is too large for model.layers.0"),
    (["init.direction=LoRA-GA", "peft.lora_r=40"], "LoRA-GA needs 80"),
    (["peft.target_modules=[no_such_proj]"], r"matches no linear layer"),
    (["model.path=/no/such/model"], "model.path '/no/such/model' does not exist"),
    (["dataset=gsm8k", "dataset.path=/no/such.jsonl"], "dataset.path '/no/such.jsonl' does not exist"),
    (["dataset=gsm8k", "BAD_FILE"], r"bad.jsonl: line 6 has no field 'answer'"),
    (["eval=humaneval"], r"eval.humaneval.confirm_run_unsafe_code=true is required"),  # before training, not after
    (["eval=glue"], r"eval.glue.task 'toy_math' is not a GLUE task"),
])
def test_bad_input_stops_with_one_clear_error(tmp_path, overrides, message):
    overrides = [bad_jsonl(tmp_path) if o == "BAD_FILE" else o for o in overrides]
    with pytest.raises(ConfigError, match=message):
        run_experiment(TINY + overrides, tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()


def test_cli_error_is_one_line(tmp_path):
    proc = run_cli([*TINY, "init.stable_gamma=0"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "error: init.stable_gamma must be > 0 or auto (got 0)"
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_smollm2_lora_one_init_lowers_gsm8k_loss(tmp_path, shared_data):
    """The real 135M model on the real GSM8K file: the init alone (no training step) lowers the loss."""
    results = run_experiment(["model=smollm2_135m", "dataset=gsm8k", f"dataset.path={shared_data}/gsm8k/train.jsonl",
                              "dataset.eval_size=32", "model.max_steps=0", "model.max_length=192"], tmp_path)
    assert results["steps"] == 0
    assert results["eval_loss_after_init"] < results["eval_loss_base"] - 0.05


@pytest.mark.parametrize("init", ["default", "gaussian", "pissa"])
def test_peft_inits_preserve_the_model_at_init(tmp_path, init):
    """PEFT's default and gaussian inits have B = 0; PiSSA moves the top-r SVD of W into the adapter.
    Either way the model is unchanged before the first step, and training then moves it."""
    results = run_experiment(SHORT + [f"init={init}", "peft=qv", "peft.lora_r=4"], tmp_path)
    assert results["eval_loss_after_init"] == pytest.approx(results["eval_loss_base"], abs=1e-4)
    assert results["eval_loss"] != pytest.approx(results["eval_loss_base"], abs=1e-4)
    assert results["init_time_s"] > 0 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
