"""The CPU study as data: tasks × methods × (learning-rate grid at one tuning seed, then seeds at the
chosen rate). A cell is one run: its Hydra overrides and its run directory, so the plan alone decides
what exists on disk and a finished cell is recognised by its results.json.

Sizing (`cpu_study`, in `Study.sizing` for REPRODUCTION.md): SmolLM2-135M, LoRA r=8 on q_proj and
v_proj, batch 4, max_length 64 (MRPC and GSM8K 128), 16 optimizer steps (GSM8K 8: its rows are 4×
longer), the one-step gradient from 4 examples with a randomized SVD (q=24, 4 power iterations; PiSSA
the same through PEFT's `pissa_niter_4`). Tuning runs score nothing but the held-out loss of rows
kept out of train.tsv / train.jsonl (`dataset.eval_size`), so the learning rate is never chosen on
dev or test; the seed runs also measure that loss every `curve_every` steps (the loss curves) and
score a fixed dev (GLUE) or test (GSM8K) subset.

Why this size: one core runs a SmolLM2 forward at ≈40 GFLOP/s, so a held-out pass over 16 short GLUE
rows takes ≈3 s, a training step ≈2-3 s and scoring one dev row (both label words) ≈0.4 s; with two
single-threaded workers the 132 cells come near the 90-minute budget only with these subsets (a full
GLUE dev pass, 2 323 rows over three tasks, would alone take ≈15 min per method and seed)."""
from dataclasses import dataclass, field

TUNE, FINAL = "tune", "final"


@dataclass(frozen=True)
class Task:
    name: str              # the dataset's name
    train: tuple[str, ...]  # dataset and length overrides of every run of the task
    benchmark: str         # the evaluator the seed runs use (its key in results["eval"]): glue, gsm8k
    evaluation: tuple[str, ...]  # its overrides: the dev / test subset the seed runs score
    evaluated_on: str      # in words, for the table header


@dataclass(frozen=True)
class Method:
    name: str
    overrides: tuple[str, ...]
    trains: bool = True          # False: the init alone (no step, so no learning rate to tune)
    gradient_init: bool = False  # takes the study's one-step-gradient settings


@dataclass(frozen=True)
class Study:
    common: tuple[str, ...]              # every run
    gradient_init: tuple[str, ...]       # runs of a gradient init (LoRA-One, LoRA-GA)
    tasks: tuple[Task, ...]
    methods: tuple[Method, ...]
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]
    tuning_seed: int
    curve_every: int = 0                 # seed runs: the held-out loss every N steps (0: after the init and at the end)
    sizing: dict = field(default_factory=dict)  # in words, for REPRODUCTION.md

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    stage: str                 # TUNE | FINAL
    learning_rate: float | None
    seed: int
    overrides: tuple[str, ...]

    @property
    def path(self) -> str:
        """The run directory under the study's root: <task>/<stage>/<method>/lr=<lr>,seed=<seed>."""
        rate = "none" if self.learning_rate is None else f"{self.learning_rate:g}"
        return f"{self.task}/{self.stage}/{slug(self.method)}/lr={rate},seed={self.seed}"

    @property
    def name(self) -> str:
        rate = "" if self.learning_rate is None else f" lr={self.learning_rate:g}"
        return f"{self.task} {self.stage} {self.method}{rate} seed={self.seed}"


def slug(text: str) -> str:
    """A directory name for a method: `LoRA-One + scaled_adamw` → `LoRA-One_plus_scaled_adamw`, `LoRA+` → `LoRAplus`."""
    kept = "".join(c if c.isalnum() or c in "-." else "_" for c in text.replace("+", "plus"))
    return "_".join(part for part in kept.split("_") if part)


def method_overrides(study: Study, method: Method) -> tuple[str, ...]:
    return method.overrides + (study.gradient_init if method.gradient_init else ())


def make_cell(study: Study, task: Task, method: Method, stage: str, rate: float | None, seed: int) -> Cell:
    evaluation = ("eval=none",) if stage == TUNE else (*task.evaluation, f"eval_loss_every={study.curve_every}")
    rate_override = () if rate is None else (f"model.learning_rate={rate:g}",)
    overrides = (*study.common, *task.train, *method_overrides(study, method), *rate_override, *evaluation,
                 f"seed={seed}")
    return Cell(task.name, method.name, stage, rate, seed, overrides)


def tuning_cells(study: Study, task: Task) -> list[Cell]:
    """Every trained method at every grid rate, at the tuning seed, scoring only held-out train rows."""
    return [make_cell(study, task, method, TUNE, rate, study.tuning_seed)
            for method in study.methods if method.trains for rate in study.learning_rates]


def final_cells(study: Study, task: Task, chosen: dict[str, float | None]) -> list[Cell]:
    """Each method at its chosen rate (methods without one, e.g. no tuning run finished, are left
    out), every seed, scoring the task's benchmark."""
    cells = []
    for method in study.methods:
        if method.trains and chosen.get(method.name) is None:
            continue
        rate = chosen[method.name] if method.trains else None
        cells += [make_cell(study, task, method, FINAL, rate, seed) for seed in study.seeds]
    return cells


def cell_count(study: Study) -> int:
    """Cells of the whole study (finals counted whatever rate is chosen)."""
    trained = sum(m.trains for m in study.methods)
    per_task = trained * len(study.learning_rates) + len(study.methods) * len(study.seeds)
    return per_task * len(study.tasks)


def glue_task(name: str, folder: str, max_length: int, dev_rows: int, train_rows: int, held_out: int, steps: int) -> Task:
    return Task(name, (f"dataset={name}", f"dataset.path=${{paths.data_dir}}/glue/{folder}",
                       f"dataset.max_train_samples={train_rows}", f"dataset.eval_size={held_out}",
                       f"model.max_length={max_length}", f"model.max_steps={steps}"),
                "glue", ("eval=glue", "eval.glue.split=dev", f"eval.glue.limit={dev_rows}", "eval.glue.subset_seed=0"),
                f"dev, a fixed sample of {dev_rows} rows (seed 0)")


def study_methods() -> tuple[Method, ...]:
    lora_one = ("init=gradient", "init.direction=LoRA-One")
    return (Method("LoRA", ("init=default",)),
            Method("LoRA-GA", ("init=gradient", "init.direction=LoRA-GA"), gradient_init=True),
            Method("PiSSA", ("init=pissa", "init.niter=4")),
            Method("LoRA-One", lora_one, gradient_init=True),
            Method("LoRA-One + scaled_adamw", (*lora_one, "optim=scaled_adamw"), gradient_init=True),
            Method("spectral init only", (*lora_one, "model.max_steps=0"), trains=False, gradient_init=True))


def cpu_study() -> Study:
    """The study `python scripts/reproduce.py cpu` runs (sizing in the module docstring)."""
    steps, gsm8k_steps, batch, train_rows, held_out, gsm8k_held_out, dev_rows, test_rows, curve_every = \
        16, 8, 4, 512, 16, 8, 96, 10, 4
    gsm8k = Task("gsm8k", ("dataset=gsm8k", "dataset.path=${paths.data_dir}/gsm8k/train.jsonl",
                           f"dataset.max_train_samples={train_rows}", f"dataset.eval_size={gsm8k_held_out}",
                           "model.max_length=128", f"model.max_steps={gsm8k_steps}"),
                 "gsm8k", ("eval=gsm8k", f"eval.gsm8k.limit={test_rows}", "eval.gsm8k.max_new_tokens=96"),
                 f"test, the first {test_rows} questions")
    return Study(
        common=("model=smollm2_135m", "peft=qv", f"model.per_device_batch_size={batch}",
                f"model.real_batch_size={batch}", "wandb.mode=disabled", "checkpoint.every_n_steps=0"),
        gradient_init=("init.bsz=4", "init.iters=1", "init.svd=lowrank", "init.svd_q=24", "init.svd_niter=4"),
        tasks=(glue_task("sst2", "SST-2", 64, dev_rows, train_rows, held_out, steps),
               glue_task("cola", "CoLA", 64, dev_rows, train_rows, held_out, steps),
               glue_task("mrpc", "MRPC", 128, dev_rows, train_rows, held_out, steps),
               gsm8k),
        methods=study_methods(),
        learning_rates=(5e-4, 2.5e-3, 1e-2),
        seeds=(1, 2, 3),
        tuning_seed=0,
        curve_every=curve_every,
        sizing={"model": "SmolLM2-135M-Instruct (the offline Q4_1 GGUF, de-quantised), fp32, CPU",
                "adapters": "LoRA r=8, alpha=16 on q_proj and v_proj (peft=qv)",
                "training": f"{steps} optimizer steps (GSM8K {gsm8k_steps}), batch {batch}, cosine schedule, "
                            f"3 % warm-up; a subset of {train_rows} training rows",
                "lengths": "max_length 64 (SST-2, CoLA), 128 (MRPC, GSM8K)",
                "gradient init": "G from 4 examples, randomized SVD (q=24, 4 power iterations); "
                                 "PiSSA: PEFT's pissa_niter_4",
                "learning-rate grid": "5e-4, 2.5e-3, 1e-2 for every trained method, at seed 0 (a first "
                                      "grid 1e-4, 5e-4, 2.5e-3 put every method on SST-2 at its top: 16 steps "
                                      "want large rates)",
                "selection": f"lowest held-out loss on {held_out} rows (GSM8K {gsm8k_held_out}) kept out of the training file "
                             "(dataset.eval_size; never dev or test)",
                "loss curves": f"seed runs: that held-out loss after the init and every {curve_every} steps",
                "time budget": "one core: ≈3 s per held-out pass, ≈3 s per training step (GLUE; GSM8K ≈5 s), "
                               "≈0.45 s per scored dev row, with two single-threaded workers side by side "
                               "(`--workers 2`); the 132 cells come near 90 min only at these sizes; the full "
                               "GLUE dev sets (2 323 rows) would add ≈15 min per method and seed",
                "seeds": "1, 2, 3 at the chosen rate",
                "benchmarks": f"GLUE dev: a fixed sample of {dev_rows} rows (seed 0) per task; "
                              f"GSM8K test: the first {test_rows} questions, greedy, ≤ 96 new tokens"})
