"""The composed run config: composing it outside a Hydra app (tests, benchmarks, the eval CLIs), and
the checks Hydra cannot do, run before any work (one ConfigError each)."""
import difflib

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lora_one import ConfigError
from lora_one.config_schema import OPTIONS, RunConfig
from lora_one.eval.runner import check_eval_config
from lora_one.init import init_method
from lora_one.models.full_finetune import check_full_finetuning_config, is_full_finetuning
from lora_one.project import conf_dir
from lora_one.schema import REAL, NumberType, check_settings, number_type_at
from lora_one.tracking import check_tracking_config
from lora_one.train.checkpointing import check_checkpoint_config
from lora_one.train.optim import optimizer_option

ANY_NUMBER = NumberType(REAL, nullable=False, words=())


def compose_config(overrides: list[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The config `python run_exp.py <overrides>` would run with (inside a Hydra app: with its config)."""
    if GlobalHydra.instance().is_initialized():  # the app's search path, and its --config-name
        name = HydraConfig.get().job.config_name if HydraConfig.initialized() else "config"
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def validate_config(cfg: DictConfig) -> None:
    """Every check of a run config, each group's once: the numbers against the schema first (the other checks
    compare numbers), then what each group's module says of its settings."""
    check_settings(RunConfig, cfg, OPTIONS)
    if is_full_finetuning(cfg.peft):  # a LoRA-only init or optimizer: said so before its own settings are checked
        check_full_finetuning_config(cfg)
    init_method(cfg.init).check_config(cfg.init)
    optimizer_option(cfg.optim)
    check_eval_config(cfg.eval)
    check_tracking_config(cfg.wandb)
    check_checkpoint_config(cfg)
    model = cfg.model
    if model.per_device_batch_size < 1 or model.real_batch_size < model.per_device_batch_size:
        raise ConfigError(
            f"model.real_batch_size ({model.real_batch_size}) must be ≥ model.per_device_batch_size "
            f"({model.per_device_batch_size}) ≥ 1"
        )


def accumulation_steps(model_cfg: DictConfig, num_processes: int) -> int:
    """Micro-batches per optimizer step so that per_device × processes × steps = real_batch_size."""
    per_step = model_cfg.per_device_batch_size * num_processes
    if model_cfg.real_batch_size % per_step:
        raise ConfigError(
            f"model.real_batch_size={model_cfg.real_batch_size} is not a multiple of per_device_batch_size × "
            f"processes = {model_cfg.per_device_batch_size} × {num_processes}"
        )
    return model_cfg.real_batch_size // per_step


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of a resolved config container (lists are leaves)."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_config_keys(cfg: DictConfig, overrides: list[str]) -> None:
    """The key check Hydra leaves out: `++key=value` (and `+key=value`) adds a key the selected group
    options do not define without a word, so a typo (`++init.directon=LoRA-GA`) would run the default
    silently. The keys defined are those of the config composed from the group choices alone (`model=…`,
    `experiment=…`); every key of `cfg` must be one (else one ConfigError naming the nearest), and a key
    whose default is a number must still hold one (its type and range: validate_config)."""
    group_choices = [o for o in overrides if (conf_dir() / o.lstrip("+").split("=", 1)[0]).is_dir()]
    if len(group_choices) == len(overrides):
        return  # nothing but group choices: cfg holds only the keys they define
    defaults = dict(leaves(OmegaConf.to_container(compose_config(group_choices), resolve=True)))
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        if key not in defaults:
            nearest = difflib.get_close_matches(key, defaults, n=1, cutoff=0.6)
            hint = f"did you mean {nearest[0]}?" if nearest else "the selected config options do not define it"
            raise ConfigError(f"{key} is not a config key ({hint})")
        default, settable = defaults[key], settable_number(cfg, key)
        if ANY_NUMBER.admits(default) and not settable.admits(value):
            raise ConfigError(f"{key} must be a number{settable.or_words} like its default {default} (got {value!r})")


def settable_number(cfg: DictConfig, key: str) -> NumberType:
    """What the command line may set a numeric `key` to before validate_config checks its type and range: any
    number, null, or the word its schema allows (init.stable_gamma=auto)."""
    declared = number_type_at(RunConfig, cfg, key, OPTIONS)
    return NumberType(REAL, nullable=True, words=declared.words if declared else ())
