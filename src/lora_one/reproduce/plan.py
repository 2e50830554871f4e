"""The CPU study as data: tasks × methods × (a learning-rate grid per method family at two tuning
seeds, then five seeds at the chosen rate). A cell is one run: its Hydra overrides and its path, so
the plan and the committed records alone decide what is finished.

Why this size (`cpu_study`; `Study.sizing` says it in REPRODUCTION.md): 100 steps, the issue's
estimate of what lets LoRA's held-out loss flatten (the seed runs' curves will show it); 5 seeds,
paired, resolve held-out-loss differences of a few per cent; tuning on 128 held-out rows at 2 seeds
keeps the choice off the seed noise; the issue asks for the whole dev sets.
Its cost, measured on one core: a SmolLM2 LoRA step of 4 x 64 tokens takes 0.85 s on a quiet machine,
a held-out pass over 128 rows about 9 s, and scoring a dev row about 0.35 s quiet (estimated: one pass
over a chat prompt of about 70 tokens at 40 GFLOP/s; measured 0.6 s per row under load, where the
first init-only cells took 11-12 min, 8.5 of them scoring 872 rows). So a tuning cell costs about
2.2 min and a trained seed cell about 8 min: the 152 cells come to about 12 worker-hours, 6 h in two
workers on a quiet machine, over the issue's 150 min. A study therefore spans sittings: each finished
cell's record is committed, and the same command resumes on any machine (more cores: `--workers N`).
"""
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
    learning_rates: tuple[float, ...] = ()  # the method family's first grid (empty: the study's)


@dataclass(frozen=True)
class Study:
    common: tuple[str, ...]              # every run
    gradient_init: tuple[str, ...]       # runs of a gradient init (LoRA-One, LoRA-GA)
    tasks: tuple[Task, ...]
    methods: tuple[Method, ...]
    learning_rates: tuple[float, ...]    # the first grid of a method that names none
    seeds: tuple[int, ...]
    tuning_seeds: tuple[int, ...]        # a rate's held-out loss is the mean over these seeds
    curve_every: int = 0                 # seed runs: the held-out loss every N steps (0: after the init and at the end)
    grid_extensions: int = 0             # a rate chosen at the grid's edge adds the next one beyond it, this many times
    threads: int = 1                     # torch threads of every cell (the numbers depend on it)
    sizing: dict = field(default_factory=dict)  # in words, for REPRODUCTION.md

    def task(self, name: str) -> Task:
        return next(t for t in self.tasks if t.name == name)

    def first_grid(self, method: Method) -> tuple[float, ...]:
        return method.learning_rates or self.learning_rates


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


def tuning_cells(study: Study, task: Task, grids: dict[str, tuple[float, ...]] | None = None) -> list[Cell]:
    """Every trained method at every rate of its grid (`grids`, default its first grid), at each tuning
    seed, scoring only held-out train rows."""
    grids = grids or {}
    return [make_cell(study, task, method, TUNE, rate, seed)
            for method in study.methods if method.trains
            for rate in grids.get(method.name, study.first_grid(method)) for seed in study.tuning_seeds]


def extended_grid(grid: tuple[float, ...], best: float | None, extensions_left: int) -> tuple[float, ...]:
    """The grid with one more rate beyond its edge when `best` lies on that edge (the step is the ratio
    of the grid's last two rates, on a log scale); unchanged when `best` is interior, unknown (None:
    a run failed) or no extension is left."""
    rates = sorted(grid)
    if best is None or extensions_left <= 0 or len(rates) < 2 or rates[0] < best < rates[-1]:
        return grid
    ratio = rates[-1] / rates[-2]
    beyond = rates[0] / ratio if best == rates[0] else rates[-1] * ratio
    return tuple(sorted((*grid, float(f"{beyond:.3g}"))))


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
    """Cells of the whole study before any grid extension (finals counted whatever rate is chosen)."""
    tuning = sum(len(study.first_grid(m)) for m in study.methods if m.trains) * len(study.tuning_seeds)
    return (tuning + len(study.methods) * len(study.seeds)) * len(study.tasks)


def glue_task(name: str, folder: str, max_length: int, train_rows: int, held_out: int, steps: int,
              dev_rows: int) -> Task:
    """A GLUE task of the study: trained on a subset of train.tsv in the chat template, selected on rows
    held out of it, scored on the whole dev set."""
    return Task(name, (f"dataset={name}", f"dataset.path=${{paths.data_dir}}/glue/{folder}",
                       "dataset.chat_template=true", f"dataset.max_train_samples={train_rows}",
                       f"dataset.eval_size={held_out}", f"model.max_length={max_length}", f"model.max_steps={steps}"),
                "glue", ("eval=glue", "eval.glue.split=dev"), f"the whole dev set ({dev_rows} rows)")


def study_methods() -> tuple[Method, ...]:
    """The paper's roster. Each family starts on its own grid (three rates, ×4 apart; an edge choice
    extends it): the preconditioned optimizer takes larger steps' worth of rate, SVD-initialised
    adapters (PiSSA, LoRA-GA) and full fine-tuning smaller."""
    lora_one = ("init=gradient", "init.direction=LoRA-One")
    return (Method("LoRA", ("init=default",), learning_rates=(6.25e-4, 2.5e-3, 1e-2)),
            Method("LoRA-GA", ("init=gradient", "init.direction=LoRA-GA"), gradient_init=True,
                   learning_rates=(1.5625e-4, 6.25e-4, 2.5e-3)),
            Method("PiSSA", ("init=pissa", "init.niter=4"), learning_rates=(1.5625e-4, 6.25e-4, 2.5e-3)),
            Method("LoRA-One", lora_one, gradient_init=True, learning_rates=(6.25e-4, 2.5e-3, 1e-2)),
            Method("LoRA-One + scaled_adamw", (*lora_one, "optim=scaled_adamw"), gradient_init=True,
                   learning_rates=(2.5e-3, 1e-2, 4e-2)),
            Method("Full FT", ("peft=none", "init=default"), learning_rates=(9.765625e-6, 3.90625e-5, 1.5625e-4)),
            Method("spectral init only", (*lora_one, "model.max_steps=0"), trains=False, gradient_init=True),
            Method("base model", ("init=default", "model.max_steps=0"), trains=False))  # B = 0: the model as loaded


def cpu_study() -> Study:
    """The study `python scripts/reproduce.py cpu` runs (why this size: the module docstring)."""
    steps, batch, train_rows, held_out, curve_every = 100, 4, 2048, 128, 20
    return Study(
        common=("model=smollm2_135m", "peft=qv", f"model.per_device_batch_size={batch}",
                f"model.real_batch_size={batch}", "wandb.mode=disabled", "checkpoint.every_n_steps=0"),
        gradient_init=("init.bsz=4", "init.iters=2", "init.svd=lowrank", "init.svd_q=32", "init.svd_niter=4"),
        tasks=(glue_task("sst2", "SST-2", 64, train_rows, held_out, steps, 872),
               glue_task("cola", "CoLA", 64, train_rows, held_out, steps, 1043)),
        methods=study_methods(),
        learning_rates=(6.25e-4, 2.5e-3, 1e-2),
        seeds=(1, 2, 3, 4, 5),
        tuning_seeds=(11, 12),
        curve_every=curve_every,
        grid_extensions=2,
        threads=1,
        sizing={"model": "SmolLM2-135M-Instruct (the offline Q4_1 GGUF, de-quantised), fp32, CPU, "
                         "one torch thread per run",
                "prompts": "the tokenizer's chat template (dataset.chat_template=true): the sentence as the "
                           "user's turn, ending with the label words to answer with; the label word as the "
                           "assistant's turn",
                "adapters": "LoRA r=8, alpha=16 on q_proj and v_proj (peft=qv); Full FT trains every weight",
                "training": f"{steps} optimizer steps, batch {batch}, cosine schedule, 3 % warm-up, from a subset of "
                            f"{train_rows} training rows; max_length 64",
                "gradient init": "G from 2 × 4 examples, randomized SVD (q=32, 4 power iterations); "
                                 "PiSSA: PEFT's pissa_niter_4",
                "learning rates": "a grid per method family (three rates ×4 apart), extended by one rate beyond "
                                  "an edge choice, at most twice",
                "selection": f"lowest mean held-out loss over tuning seeds 11 and 12, on {held_out} rows kept out of "
                             "the training file (dataset.eval_size; never dev); the seed runs use other seeds",
                "loss curves": f"seed runs: the held-out loss after the init and every {curve_every} steps",
                "seeds": "1-5 at the chosen rate; a seed fixes the data order, the init batches and the held-out rows "
                         "for every method alike, so methods are compared seed by seed (paired)",
                "benchmarks": "GLUE dev, every row (SST-2 872, CoLA 1043), each label word scored from one shared "
                              "prompt pass (eval/glue.py)",
                "cost": "measured under load: 11-12 min per init-only SST-2 cell, 8.5 of them scoring the 872 dev "
                        "rows; estimated for the 152 cells: 12 worker-hours on a quiet machine (plan.py)",
                "not in this study": "MRPC (its rows are twice as long: twice the cost per step) and GSM8K (the base "
                                     "model solves 0 of 10 test questions, and a row is 4× longer); the paper-scale "
                                     "commands (`reproduce.py paper`) run both"})
