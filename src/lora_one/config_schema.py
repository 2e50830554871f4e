"""The schema of the run config (lora_one.schema): one dataclass per config group, a subclass per kind of option
whose keys differ (conf/<group>/<option>.yaml ↔ OPTIONS), found by the option's `name`. Every key an option
defines is a field here and every field a key of some option (tests/test_config_schema.py), so renaming a key in
a YAML file without its field, or the other way round, fails a test instead of dropping a check.

Checked after composition, not registered in Hydra's ConfigStore: a typed schema there turns a REAL field's
16 into 16.0 (another config, another results.json config_digest) and refuses a word where a number belongs
at composition, in Hydra's four lines, before run_exp.py can say the setting's name and range in one. The
ranges of settings that depend on each other (γ search, batch sizes) stay with the code that owns them."""
from dataclasses import dataclass
from typing import Literal

from lora_one.schema import Interval, above, at_least, number
from lora_one.train.optim import OPTIMIZERS, AdamWSettings


@dataclass
class Model:
    name: str
    path: str | None
    hub_id: str | None  # named by saved adapters as their base
    gguf_package: str | None
    gguf_file: str | None
    tokenizer_path: str | None
    builtin_tokenizer: bool
    type: str  # causal | seq2seq
    dtype: str
    max_length: int = number(at_least(2))
    lora_targets: dict[str, list[str]]  # what peft=qv and peft=attn adapt
    epochs: int = number(at_least(1))
    max_steps: int = number(at_least(-1), "-1 trains model.epochs epochs, 0 only initialises")
    per_device_batch_size: int = number(at_least(1))
    real_batch_size: int = number(at_least(1))
    learning_rate: float = number(above(0))
    weight_decay: float = number(at_least(0))
    warmup: float = number(Interval(0, 1), "a fraction of the steps")
    scheduler: str  # any transformers schedule name
    saving: bool


@dataclass
class RandomModel(Model):
    """tiny_llama, tiny_t5: random weights of this transformers config."""

    architecture: dict


@dataclass
class Dataset:
    name: str
    hub_id: str | None
    hub_config: str | None
    split: str
    path: str | None
    template: str
    chat_template: bool
    columns: dict[str, str]
    label_names: list[str] | None
    max_train_samples: int | None = number(at_least(1), "null takes all rows")
    eval_size: int = number(at_least(1), "the rows held out for the eval loss")


@dataclass
class GeneratedDataset(Dataset):
    num_generated: int = number(at_least(1))


@dataclass
class GlueDataset(Dataset):
    dev_split: str  # the hub split eval=glue scores
    dev_file: str  # the same in a dataset.path folder


@dataclass
class Peft:
    """peft=none: full fine-tuning, no adapters."""

    name: str


@dataclass
class Lora(Peft):
    target_modules: str | list[str]
    lora_r: int = number(at_least(1))
    lora_alpha: float = number(above(0))
    lora_dropout: float = number(Interval(0, 1, open_high=True))
    use_rslora: bool
    use_dora: bool


@dataclass
class Init:
    """default, gaussian: PEFT's own inits."""

    name: str
    method: str
    save_artifacts: bool


@dataclass
class BatchInit(Init):
    """An init that reads bsz × iters training examples of max_length tokens."""

    bsz: int = number(at_least(1))
    iters: int = number(at_least(1))
    max_length: int = number(at_least(2))


@dataclass
class GammaSearch:
    batches: int = number()  # its ranges: lora_one.init.gamma_search
    points: int = number()
    min: float = number()
    max: float = number()


@dataclass
class GradientInit(BatchInit):
    direction: str
    scale: str
    stable_gamma: float | Literal["auto"] = number(above(0))
    estimator: str
    checkpointing: bool | Literal["auto"]
    oversampling: int = number(at_least(0))
    sketch_seed: int = number()
    svd: str
    svd_q: int | None = number(at_least(1), "null takes 4 × the singular directions needed")
    svd_niter: int = number(at_least(0))
    gamma_search: GammaSearch


@dataclass
class EvaInit(BatchInit):
    rho: float = number(at_least(1))
    tau: float = number(Interval(0, 1, open_low=True))


@dataclass
class PissaInit(Init):
    niter: int = number(at_least(0))


@dataclass
class Benchmark:
    """What every benchmark of conf/eval has."""

    limit: int | None = number(at_least(1), "null scores every question")
    subset_seed: int | None = number()
    batch_size: int = number(at_least(1))


@dataclass
class GenerationBenchmark(Benchmark):
    max_new_tokens: int = number(at_least(1))
    temperature: float = number(at_least(0), "0 decodes greedily")
    top_p: float = number(Interval(0, 1, open_low=True))
    seed: int = number()


@dataclass
class Gsm8kEval(GenerationBenchmark):
    path: str | None


@dataclass
class CommonsenseEval(GenerationBenchmark):
    data_dir: str | None
    tasks: list[str]
    num_beams: int = number(at_least(1))


@dataclass
class HumanEvalEval(GenerationBenchmark):
    confirm_run_unsafe_code: bool
    path: str | None
    num_samples: int = number(at_least(1))
    timeout_s: float = number(above(0))
    memory_mb: int = number(at_least(1))


@dataclass
class MmluEval(Benchmark):
    data_dir: str | None
    subjects: list[str] | None
    shots: int = number(at_least(0))


@dataclass
class GlueEval(Benchmark):
    task: str
    path: str | None
    split: str
    dataset: dict  # the run's dataset
    seed: int = number()


@dataclass
class LmEvalEval:
    """lm-evaluation-harness: the harness chooses its questions (the first `limit` of each task)."""

    tasks: list[str]
    data_dir: str | None
    hub: bool
    num_fewshot: int | None = number(at_least(0), "null: each task's own default (gsm8k: 5)")
    limit: int | None = number(at_least(1), "null scores every question")
    batch_size: int = number(at_least(1))
    bootstrap_iters: int = number(at_least(0), "0 skips the bootstrapped standard errors")


@dataclass
class Eval:
    """One key per benchmark chosen (eval=[gsm8k,humaneval]); eval=none: none."""

    gsm8k: Gsm8kEval
    humaneval: HumanEvalEval
    commonsense: CommonsenseEval
    mmlu: MmluEval
    glue: GlueEval
    lm_eval: LmEvalEval


@dataclass
class Paths:
    root_dir: str
    data_dir: str
    output_dir: str
    sweep_dir: str


@dataclass
class Checkpoint:
    every_n_steps: int = number(at_least(0))
    keep: int = number(at_least(1))
    keep_final: bool


@dataclass
class Diagnostics:
    alignment_every: int = number()
    bsz: int = number()
    iters: int = number()


@dataclass
class Wandb:
    mode: str  # its words: lora_one.tracking
    project: str
    entity: str | None
    init_timeout_s: float = number(above(0))


@dataclass
class OverfitCheck:
    max_ratio: float = number()
    last_steps: int = number()


@dataclass
class RunConfig:
    """conf/config.yaml with one option per group; fields in the order their checks run."""

    seed: int = number()
    model: Model
    dataset: Dataset
    peft: Lora
    optim: AdamWSettings
    init: Init
    checkpoint: Checkpoint
    eval_loss_every: int = number(at_least(0), "0 measures the held-out loss after the init and at the end only")
    log_every: int = number(at_least(0), "0 logs no training-loss lines")
    wandb: Wandb
    eval: Eval
    paths: Paths
    diagnostics: Diagnostics
    verbose: bool
    cache_dir: str
    resume: str  # auto | never | a checkpoint or run dir
    overfit_check: OverfitCheck  # debug=overfit only


GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "sst2")
OPTIONS = {
    Model: {"tiny_llama": RandomModel, "tiny_t5": RandomModel},
    Dataset: {"toy_math": GeneratedDataset, **dict.fromkeys(GLUE_TASKS, GlueDataset)},
    Lora: {"none": Peft},
    Init: {"gradient": GradientInit, "eva": EvaInit, "pissa": PissaInit},
    AdamWSettings: {name: option.settings for name, option in OPTIMIZERS.items()},
}
