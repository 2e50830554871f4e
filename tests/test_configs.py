"""Every option of every config group composes and resolves; unknown options fail with Hydra's error;
the paper's experiment files set only real keys, each with its source."""

import re

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import ROOT, compose_config

GROUPS = ["model", "dataset", "peft", "init", "optim", "eval", "paths", "experiment", "debug"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves(group, option):
    cfg = compose_config([f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if group not in ("experiment", "debug"):
        assert resolved[group] is not None


def test_group_defaults():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.dataset.name, cfg.peft.name, cfg.init.name, cfg.init.direction) == (
        "smollm2_135m", "toy_math", "all", "gradient", "LoRA-One")


def test_debug_presets_override_everything_else():
    cfg = compose_config(["debug=default", "experiment=gsm8k_smollm2"], return_hydra_config=True)
    assert cfg.model.name == "tiny_llama" and cfg.model.max_steps == 2 and cfg.wandb.mode == "disabled"
    assert cfg.hydra.run.dir.startswith("outputs/debug/")
    limited = compose_config(["debug=limit", "experiment=llama2_metamath"])
    assert limited.model.name == "llama2_7b" and limited.model.max_steps == 3 and limited.dataset.max_train_samples == 64


def test_the_data_root_is_written_once(monkeypatch):
    monkeypatch.setenv("LORA_ONE_DATA", "/data/bench")
    cfg = compose_config(["eval=[gsm8k,commonsense]"])
    assert cfg.paths.data_dir == "/data/bench"
    assert cfg.eval.gsm8k.path.startswith("/data/bench/") and cfg.eval.commonsense.data_dir.startswith("/data/bench/")


def test_peft_targets_follow_the_model():
    assert list(compose_config(["model=t5_base", "peft=qv"]).peft.target_modules) == ["q", "v"]
    assert list(compose_config(["model=llama2_7b", "peft=attn"]).peft.target_modules) == [
        "q_proj", "k_proj", "v_proj", "o_proj"]


def test_sweep_overrides_apply():
    cfg = compose_config(["++init.direction=LoRA-GA", "seed=3"])
    assert cfg.init.direction == "LoRA-GA" and cfg.seed == 3


@pytest.mark.parametrize("override", ["dataset=no_such_data", "model=no_such_model", "peft=no_such_peft"])
def test_unknown_group_option_names_it(override):
    with pytest.raises(MissingConfigException, match=override.split("=")[1]):
        compose_config([override])


PAPER_EXPERIMENTS = [o for o in options("experiment") if o != "gsm8k_smollm2"]  # gsm8k_smollm2: a CPU study, no paper setting


def leaf_paths(node, prefix=""):
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from leaf_paths(value, path + ".")
        else:
            yield path


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_experiment_files_set_existing_keys_each_with_its_source(experiment):
    """Every key an experiment file sets exists in the groups it selects (a typo would add a silent new
    key), and every line that sets a value says where the value comes from."""
    path = ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    cfg = compose_config([f"experiment={experiment}"])
    plain = compose_config([f"model={cfg.model.name}", f"dataset={cfg.dataset.name}", f"peft={cfg.peft.name}",
                            f"init={cfg.init.name}", f"eval=[{','.join(cfg.eval)}]"])
    body = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(path)).items() if k != "defaults"}
    for key in leaf_paths(body):
        assert OmegaConf.select(plain, key, default="<absent>") != "<absent>", f"{path.name}: {key} is no config key"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"\s*[\w/]+:\s*\S", line) and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}: line {number} sets a value without its source: {line.strip()}"
