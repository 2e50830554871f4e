"""The names of a sweep's run dirs: `0_init.direction-LoRA-One_seed-1` for the overrides
`++init.direction=LoRA-One seed=1`, where Hydra's `${hydra.job.override_dirname}` would give
`++init.direction=LoRA-One,seed=1`: no `+`, `=`, `,`, brackets, quotes or `/` (which made nested dirs), so a
shell takes the name unquoted. Keys and values are joined with Hydra's own `override_dirname` settings
(conf/config.yaml: kv_sep `-`, item_sep `_`, exclude_keys); the overrides as given stay in each run's
`.hydra/overrides.yaml`, which is what make_table.py and the wandb groups read."""
import re

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

RESOLVER = "lora_one.sweep_dirname"  # called by hydra.sweep.subdir in conf/config.yaml
DELIMITERS = str.maketrans("", "", "[]{}()'\"")  # a list's or a quoted value's: dropped
UNQUOTED = re.compile(r"[^\w.-]+")  # what else a shell or a path would read more into: one `-` per run


def sweep_dirname(overrides: ListConfig, settings: DictConfig) -> str:
    """The run dir name of a sweep point from its Hydra overrides, sorted, `settings.exclude_keys` left out."""
    items = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.key_or_group in settings.exclude_keys:
            continue
        # the value as the override writes it; the key without the `+`, `++` or `~` that adds or deletes it
        value = "deleted" if override.is_delete() else override.input_line.partition("=")[2]
        items.append(f"{plain(override.key_or_group)}{settings.kv_sep}{plain(value)}")
    return settings.item_sep.join(sorted(items))


def plain(text: str) -> str:
    return UNQUOTED.sub("-", text.translate(DELIMITERS))


OmegaConf.register_new_resolver(RESOLVER, sweep_dirname, replace=True)


class SweepDirNames(Callback):
    """Listed in hydra.callbacks so that Hydra imports this module, and so registers the resolver,
    wherever it names run dirs: in the launching process and, unpickling its callbacks, in each
    submitit job's."""
