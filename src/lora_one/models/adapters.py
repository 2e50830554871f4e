"""Wrap a base model with PEFT LoRA adapters, after checking the targets make sense."""
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn
from transformers import PreTrainedModel

from lora_one import ConfigError

ADAPTER = "default"
TASK_TYPES = {"causal": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def matched_linear_layers(model: PreTrainedModel, target_modules) -> dict[str, nn.Linear]:
    """The linear layers a LoRA config with these `target_modules` will adapt. "all-linear" means
    every nn.Linear but the output head, as in PEFT."""
    if target_modules == "all-linear":
        head = model.get_output_embeddings()
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not head}
    probe = LoraConfig(target_modules=target_modules)
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and check_target_module_exists(probe, n)}


def tied_weights(model: nn.Module, layers: dict[str, nn.Linear]) -> dict[str, str]:
    """Each of `layers` whose weight tensor another module shares (an output head tied to the input
    embeddings) → that other parameter's name."""
    owners: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(parameter), []).append(name)
    return {name: next(o for o in owners[id(layer.weight)] if not o.startswith(f"{name}."))
            for name, layer in layers.items() if len(owners.get(id(layer.weight), [])) > 1}


def untie_adapted_weights(model: PeftModel) -> None:
    """Before a merge: each adapted layer whose weight is tied (an output head sharing the input
    embeddings) gets its own copy, and the config no tie. Merging ΔW into the shared tensor would add
    it to the embeddings too, in the model evaluated after the merge and in the one saved."""
    layers = {name: module.get_base_layer() for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    tied = tied_weights(model, layers)
    for name in tied:
        layers[name].weight = nn.Parameter(layers[name].weight.detach().clone(), requires_grad=False)
    if tied:
        model.get_base_model().config.tie_word_embeddings = False


def add_lora_adapters(model: PreTrainedModel, peft_cfg: DictConfig, model_type: str, method, init_cfg: DictConfig,
                      rank_pattern: dict | None = None) -> PeftModel:
    """Validate `peft_cfg` against the model, then `get_peft_model` with the init `method`'s LoraConfig
    settings (lora_one.init.InitMethod). `rank_pattern` restores per-layer ranks an init chose (EVA
    with rho > 1) when a run is resumed. Each problem is one ConfigError."""
    targets = peft_cfg.target_modules
    targets = targets if isinstance(targets, str) else list(OmegaConf.to_container(targets))
    layers = matched_linear_layers(model, targets)
    if not layers:
        raise ConfigError(f"peft.target_modules={targets} matches no linear layer of the model")
    if method.moves_base and (tied := tied_weights(model, layers)):
        name, other = next(iter(tied.items()))
        raise ConfigError(f"{method.name} moves the base weight of {name} at init (W ← W − s·B₀A₀), but that weight "
                          f"is tied to {other} (tie_word_embeddings), which would move too and no adapter could "
                          f"export the result: leave {name} out of peft.target_modules, or use an init that keeps "
                          "the base (LoRA-One, LoRA)")
    rank = int(peft_cfg.lora_r)
    needed = max(rank, method.singular_directions(rank))  # LoRA-GA takes singular vectors r..2r of G
    for name, layer in layers.items():
        if needed > min(layer.in_features, layer.out_features):
            raise ConfigError(
                f"peft.lora_r={rank} is too large for {name} ({layer.out_features}×{layer.in_features})"
                + (f" : {method.name} needs {needed} ≤ the smaller side" if needed != rank else "")
            )
    config = LoraConfig(
        r=rank,
        lora_alpha=peft_cfg.lora_alpha,
        lora_dropout=peft_cfg.lora_dropout,
        use_rslora=peft_cfg.use_rslora,
        use_dora=peft_cfg.use_dora,
        target_modules=targets,
        task_type=TASK_TYPES[model_type],
        rank_pattern=rank_pattern or {},
        **method.lora_config_kwargs(init_cfg),
    )
    return get_peft_model(model, config)


def lora_layers(model: PeftModel) -> dict[str, LoraLayer]:
    """LoRA layers keyed by the base model's weight name (e.g. `model.layers.0.self_attn.q_proj.weight`),
    the name the gradient artifacts and statistics use."""
    prefix = "base_model.model."
    return {
        name.removeprefix(prefix) + ".weight": module
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A
    }
