"""Every option of every config group composes and resolves to what it says; each matches its schema key for key;
unknown options fail with Hydra's error; paths never depend on the launch directory; the debug presets start
from their base; the paper's experiment files set only real keys, each with its source."""

import os
import re
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass

import pytest
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import ROOT, compose_config
from lora_one.config_schema import OPTIONS, RunConfig
from lora_one.schema import option_schema

GROUPS = ["model", "dataset", "peft", "init", "optim", "eval", "paths", "experiment", "debug"]
NAMED_GROUPS = ["model", "dataset", "peft", "init", "optim"]  # each option's `name` is the option's


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def option_body(group: str, option: str) -> dict:
    """What an option file sets itself (its own keys, not those of the files it starts from)."""
    body = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{option}.yaml"))
    return {key: value for key, value in body.items() if key != "defaults"}


def leaf_values(node, prefix=""):
    """(dotted key, value) of every leaf (lists are leaves)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaf_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def unresolved(cfg, key: str):
    node = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_resolves_to_what_it_says(group, option):
    resolved = OmegaConf.to_container(compose_config([f"{group}={option}"]), resolve=True)  # every one resolves
    if group in NAMED_GROUPS:
        assert resolved[group]["name"] == option
    elif group == "eval":  # each benchmark fills eval.<task>; none: no benchmark
        assert list(resolved["eval"]) == ([] if option == "none" else [option])
    elif group == "paths":
        assert all(os.path.isabs(path) for path in resolved["paths"].values())
    else:  # experiment, debug: applied last, every value its file sets is the composed one
        cfg = compose_config([f"{group}={option}"], return_hydra_config=True)  # debug sets hydra.* too
        for key, value in leaf_values(option_body(group, option)):
            assert unresolved(cfg, key) == value, f"{group}={option}: {key}"


def assert_matches_schema(schema: type, node, where: str) -> None:
    keys, declared = set(node), {setting.name for setting in fields(schema)}
    assert keys == declared, f"{where}: keys without a field {keys - declared}, fields without a key {declared - keys}"
    for name, annotation in typing.get_type_hints(schema).items():
        if is_dataclass(annotation):
            assert_matches_schema(option_schema(annotation, node[name], OPTIONS), node[name], f"{where}.{name}")


EVERY_BENCHMARK = "eval=[gsm8k,humaneval,commonsense,mmlu,glue,lm_eval]"


@pytest.mark.parametrize("group,option", [(g, o) for g in NAMED_GROUPS for o in options(g)])
def test_each_option_defines_exactly_the_keys_of_its_schema(group, option):
    """A key renamed in a YAML file but not in lora_one/config_schema.py (or the other way round) fails here,
    instead of dropping its check."""
    node = compose_config([f"{group}={option}"])[group]
    assert_matches_schema(option_schema(typing.get_type_hints(RunConfig)[group], node, OPTIONS), node, group)


def test_the_run_config_defines_exactly_the_keys_of_its_schema():
    """Every top-level key, every benchmark's and debug=overfit's own (the only options adding a key)."""
    assert_matches_schema(RunConfig, compose_config([EVERY_BENCHMARK, "debug=overfit"]), "config")


def test_group_defaults():
    cfg = compose_config([])
    assert (cfg.model.name, cfg.dataset.name, cfg.peft.name, cfg.init.name, cfg.init.direction) == (
        "smollm2_135m", "toy_math", "all", "gradient", "LoRA-One")


def test_debug_presets_override_everything_else():
    cfg = compose_config(["debug=default", "experiment=gsm8k_smollm2"], return_hydra_config=True)
    assert cfg.model.name == "tiny_llama" and cfg.model.max_steps == 2 and cfg.wandb.mode == "disabled"
    assert cfg.hydra.run.dir.startswith(f"{ROOT}/outputs/debug/")
    limited = compose_config(["debug=limit", "experiment=llama2_metamath"])
    assert limited.model.name == "llama2_7b" and limited.model.max_steps == 3
    assert limited.dataset.max_train_samples == 64


@pytest.mark.parametrize("preset", [o for o in options("debug") if o != "base"])
def test_every_debug_preset_starts_from_the_base(preset):
    cfg = compose_config([f"debug={preset}"], return_hydra_config=True)
    own = dict(leaf_values(option_body("debug", preset)))
    for key, value in leaf_values(option_body("debug", "base")):
        assert key in own or unresolved(cfg, key) == value, f"debug={preset}: {key}"


def test_paths_do_not_depend_on_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("LORA_ONE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path))
    paths = compose_config([]).paths
    assert (paths.root_dir, paths.data_dir) == (str(ROOT), f"{ROOT}/../shared/data")
    assert (paths.output_dir, paths.sweep_dir) == (f"{ROOT}/outputs", f"{ROOT}/multirun")


def test_the_cli_resolves_the_paths_from_any_directory(tmp_path):
    """`run_exp.py --cfg job --resolve` imports none of lora_one's config code: Hydra's plugin scan registers
    the root's resolver (src/hydra_plugins)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PWD": str(tmp_path)}
    env.pop("LORA_ONE_DATA", None)
    done = subprocess.run([sys.executable, str(ROOT / "run_exp.py"), "--cfg", "job", "--resolve", "eval=gsm8k"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = OmegaConf.create(done.stdout)
    assert printed.paths.root_dir == str(ROOT) and printed.eval.gsm8k.path == f"{ROOT}/../shared/data/gsm8k/test.jsonl"


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


# gsm8k_smollm2: a CPU study, no paper setting
PAPER_EXPERIMENTS = [o for o in options("experiment") if o != "gsm8k_smollm2"]


@pytest.mark.parametrize("experiment", PAPER_EXPERIMENTS)
def test_experiment_files_set_existing_keys_each_with_its_source(experiment):
    """Every key an experiment file sets exists in the groups it selects (a typo would add a silent new
    key), and every line that sets a value says where the value comes from."""
    path = ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    cfg = compose_config([f"experiment={experiment}"])
    plain = compose_config([f"model={cfg.model.name}", f"dataset={cfg.dataset.name}", f"peft={cfg.peft.name}",
                            f"init={cfg.init.name}", f"eval=[{','.join(cfg.eval)}]"])
    for key, _ in leaf_values(option_body("experiment", experiment)):
        assert OmegaConf.select(plain, key, default="<absent>") != "<absent>", f"{path.name}: {key} is no config key"
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"\s*[\w/]+:\s*\S", line) and not line.lstrip().startswith("#"):
            assert "#" in line, f"{path.name}: line {number} sets a value without its source: {line.strip()}"
