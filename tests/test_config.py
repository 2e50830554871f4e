"""Settings are checked before any work: every numeric setting against its range, every `++key` against the
schema, with one line on the command line as in a process of its own."""
import pytest

from conftest import QUICK, TINY, assert_error, cli_process, compose_config, run_cli, run_experiment
from lora_one import ConfigError
from lora_one.config import check_config_keys


@pytest.mark.parametrize("override,message", [
    ("optim.max_grad_norm=-1", r"optim.max_grad_norm must be ≥ 0 \(got -1\): 0 or null turns clipping off"),
    ("peft.lora_dropout=1.0", r"peft.lora_dropout must be in \[0, 1\) \(got 1.0\)"),
    ("model.learning_rate=0", r"model.learning_rate must be > 0 \(got 0\)"),
    ("model.max_steps=ten", r"model.max_steps must be a number like its default 10 \(got 'ten'\)"),
    ("model.learning_rate=1e-3x", r"model.learning_rate must be a number like its default 0.001 \(got '1e-3x'\)"),
    ("dataset.eval_size=-8", r"dataset.eval_size must be ≥ 1 \(got -8\): the rows held out for the eval loss"),
    ("dataset.num_generated=9", r"dataset 'toy_math' from toy_math\(n=9, seed=42\): 9 rows leave no held-out row "
                                r"for the eval loss \(dataset.eval_size=4, at most a tenth of the rows is held out\)"),
    ("++init.directon=LoRA-GA", r"init.directon is not a config key \(did you mean init.direction\?\)"),
])
def test_cli_refuses_a_bad_setting_before_any_work(tmp_path, override, message):
    proc = run_cli(QUICK + [override], tmp_path)
    assert_error(proc, "^error: " + message + "$")
    assert "held-out loss" not in (tmp_path / "run_exp.log").read_text()  # no model ran: no init, no training


def test_the_in_process_cli_answers_as_a_process_of_its_own(tmp_path):
    """run_cli (this interpreter) stands for `python run_exp.py`: same exit status, same one stderr line."""
    args = QUICK + ["model.max_steps=ten"]
    alone, here = cli_process(args, tmp_path / "alone"), run_cli(args, tmp_path / "here")
    assert (alone.returncode, alone.stderr) == (here.returncode, here.stderr) == (
        1, "error: model.max_steps must be a number like its default 10 (got 'ten')\n")


@pytest.mark.parametrize("override,message", [
    ("model.max_steps=2.5", "model.max_steps must be an integer (got 2.5)"),
    ("model.learning_rate=-1e-4", "model.learning_rate must be > 0 (got -0.0001)"),
    ("peft.lora_dropout=-0.1", "peft.lora_dropout must be in [0, 1) (got -0.1)"),
    ("model.warmup=1.5", "model.warmup must be in [0, 1] (got 1.5): a fraction of the steps"),
    ("model.weight_decay=-0.1", "model.weight_decay must be ≥ 0 (got -0.1)"),
    ("optim.betas=[0.9,1.0]", "optim.betas.1 must be in [0, 1) (got 1.0)"),
    ("optim.eps=-1e-8", "optim.eps must be ≥ 0 (got -1e-08)"),
    ("peft.lora_alpha=0", "peft.lora_alpha must be > 0 (got 0)"),
    ("dataset.max_train_samples=0", "dataset.max_train_samples must be ≥ 1 (got 0): null takes all rows"),
    ("seed=1.5", "seed must be an integer (got 1.5)"),
    ("init.svd_niter=-1", "init.svd_niter must be ≥ 0 (got -1)"),
    ("init.bsz=0", "init.bsz must be ≥ 1 (got 0)"),
    ("init.iters=0", "init.iters must be ≥ 1 (got 0)"),
    ("init.oversampling=-1", "init.oversampling must be ≥ 0 (got -1)"),
    ("init=eva init.rho=0.5", "init.rho must be ≥ 1 (got 0.5)"),
    ("init=eva init.tau=0", "init.tau must be in (0, 1] (got 0)"),
    ("init=pissa init.niter=-1", "init.niter must be ≥ 0 (got -1)"),
    ("checkpoint.every_n_steps=-1", "checkpoint.every_n_steps must be ≥ 0 (got -1)"),
    ("checkpoint.keep=0", "checkpoint.keep must be ≥ 1 (got 0)"),
    ("log_every=-1", "log_every must be ≥ 0 (got -1): 0 logs no training-loss lines"),
    ("eval_loss_every=-2",
     "eval_loss_every must be ≥ 0 (got -2): 0 measures the held-out loss after the init and at the end only"),
    ("optim=scaled_adamw optim.prec_reg=tiny", "optim.prec_reg must be a number (got 'tiny')"),
    ("init.stable_gamma=big", "init.stable_gamma must be a number or auto (got 'big')"),
    ("optim=loraplus optim.lr_ratio=0", "optim.lr_ratio must be > 0 (got 0)"),
    ("wandb.init_timeout_s=0", "wandb.init_timeout_s must be > 0 (got 0)"),
])
def test_numeric_settings_are_checked_in_process(tmp_path, override, message):
    with pytest.raises(ConfigError) as caught:
        run_experiment(TINY + override.split(), tmp_path)
    assert str(caught.value) == message
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("overrides", [["++init.direction=LoRA-GA", "seed=3"], ["++model.learning_rate=0.01"],
                                       ["experiment=t5_glue", "dataset=cola", "++peft.lora_r=4"],
                                       ["model.max_steps=2", "dataset.max_train_samples=64"],
                                       ["optim.max_grad_norm=null"], ["init.stable_gamma=auto"]])
def test_keys_the_groups_define_pass_the_schema_check(overrides):
    check_config_keys(compose_config(overrides), overrides)


@pytest.mark.parametrize("overrides,message", [
    (["init=pissa", "++init.direction=LoRA-GA"], r"^init.direction is not a config key"),  # a key of another option
    (["+model.learnig_rate=0.1"], r"^model.learnig_rate is not a config key \(did you mean model.learning_rate\?\)$"),
    (["eval=mmlu", "eval.mmlu.shots=five"], r"^eval.mmlu.shots must be a number like its default 5 \(got 'five'\)$"),
])
def test_the_schema_check_refuses(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config_keys(compose_config(overrides), overrides)
