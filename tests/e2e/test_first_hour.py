"""What a new user meets first: `run_exp.py --help` (every config group and option, the README's first
commands, where results go) and a sweep's run dirs, named without what a shell must quote."""
import json
import re
import shlex

from conftest import ROOT, TINY, compose_config, run_cli

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
