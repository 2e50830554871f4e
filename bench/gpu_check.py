"""GPU check (issue 18): one command, nothing from the hub. A randomly initialised model with Llama-2-7B's shapes
(bf16, SDPA attention) gets LoRA on every linear layer (peft=all, r=8) and the project's own code is timed side by
side in one process, on batch × seq random tokens (default 8 × 1024):

    init       one LoRA training step (run_exp's loop, AdamW) vs the streaming init (init.estimator=streaming,
               init.svd=lowrank) on the same tokens as `batch` micro-batches of one sequence: time and peak memory
    train      training tokens/s of run_exp's loop, without and with activation checkpointing (transformers'
               non-reentrant gradient checkpointing of the decoder layers: the loop has no switch of its own)
    optim      a training step with scaled_adamw (preconditioned) and lora_pro over adamw, and optimizer.step alone;
               checkpointing on, so that LoRA-Pro's two m×n fp32 moments per layer (≈52 GB at 7B) fit beside it
    generate   greedy batched generation tokens/s through the evaluators' `generate` (toy_math prompts, the
               built-in tokenizer), counted as rows × decoding forwards
    init_full  the streaming init with init.svd=full. Last: 224 full SVDs of 4096×4096 and 4096×11008 may take
               minutes; skipped when the full SVDs alone, timed once per weight shape on a random G, would not
               end within the time budget

Times: after a warm-up, the median of --repeats (init_full: one run). Memory: torch.cuda.max_memory_allocated, reset
before each measurement (lora_one.profiling.measure); on CPU "n/a (CPU)": one process's resident set keeps every
earlier peak (bench/init_memory.py needs a process per method for that). A section is skipped, with a note, once
--time-budget-s has passed, so one device call always ends with the results; they are rewritten after each section
to DIR/gpu_check.json and DIR/gpu_check.md. Running it on the device machine: bench/README.md.

    python bench/gpu_check.py [--config llama2_7b|tiny] [--sections init train ...] [--out DIR] [--time-budget-s 420]
"""
import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub: a stray download fails at once

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from bench_optimizers import OPTIMIZERS, TARGETS, state_mb
from omegaconf import DictConfig, OmegaConf
from peft import PeftModel
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerBase

from common import INIT_VARIANTS, RESULTS, machine, run_init
from lora_one.config import compose_config
from lora_one.data.templates import build_prompt
from lora_one.data.toy_math import generate_toy_math
from lora_one.eval.generation import Decoding, generate
from lora_one.init import init_method
from lora_one.init.spectral import top_singular_triplets
from lora_one.models import add_lora_adapters, lora_layers
from lora_one.models.loading import DTYPES
from lora_one.models.tiny_tokenizer import build_tiny_tokenizer
from lora_one.profiling import measure
from lora_one.progress import configure_console
from lora_one.train import build_optimizer, build_scheduler, train

SECTIONS = ("init", "train", "optim", "generate", "init_full")
NOT_MEASURED = "n/a (CPU)"


@dataclass(frozen=True)
class Shape:
    architecture: dict  # LlamaConfig settings
    run_settings: str  # the conf/model option whose learning rate and schedule the optimizers get
    batch: int
    seq: int
    gen_batch: int
    gen_new_tokens: int


# llama2_7b generates as the GSM8K evaluator does: 16 prompts a batch, at most 256 new tokens (conf/eval/gsm8k.yaml)
SHAPES = {
    "llama2_7b": Shape(dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5),
                       "llama2_7b", batch=8, seq=1024, gen_batch=16, gen_new_tokens=256),
    # conf/model/tiny_llama.yaml's shapes; a vocabulary above the built-in tokenizer's 829 tokens
    "tiny": Shape(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=1024, max_position_embeddings=512),
                  "tiny_llama", batch=2, seq=64, gen_batch=4, gen_new_tokens=8),
}


@dataclass
class Measured:
    seconds: float
    peak_mib: float | None  # None on CPU
    repeats: int


@dataclass
class Bench:
    """The model, data and settings every section shares, and the clock of the time budget."""
    args: argparse.Namespace
    cfg: DictConfig  # the composed run config (peft, init, optim, model's run settings)
    accelerator: Accelerator
    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    micro_batches: list[dict]  # the init's: one sequence each, on the CPU as run_exp hands them over
    batch: dict  # the same tokens as one training batch, on the device
    deadline: float
    lora_step_measured: Measured | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def over_budget(self) -> bool:
        return time.perf_counter() > self.deadline

    def repeat(self, work) -> list:
        """work() --repeats times, fewer (at least once) when the time budget runs out."""
        results = []
        for _ in range(self.args.repeats):
            if results and self.over_budget():
                break
            results.append(work())
        return results

    def time_and_peak(self, work) -> tuple[float, float | None]:
        """(seconds, peak MiB allocated by torch; None on CPU) of work()."""
        with measure(self.device) as usage:
            work()
        return usage.seconds, usage.peak_mem_mb if self.device.type == "cuda" else None

    def optim_cfg(self, name: str):
        return compose_config([f"optim={name}"]).optim

    def train_steps(self, optimizer, scheduler, steps: int):
        """`steps` optimizer steps of run_exp's training loop on the batch; its TrainState."""
        return train(self.model, optimizer, scheduler, [self.batch] * steps, self.accelerator, steps,
                     self.cfg.optim.max_grad_norm, torch.Generator())

    def lora_step(self) -> None:
        """One LoRA training step as a run's first: a fresh AdamW whose state the step allocates."""
        optimizer = build_optimizer(self.model, self.cfg.optim, self.cfg.model)
        self.train_steps(optimizer, build_scheduler(optimizer, self.cfg.model, 1), 1)

    def lora_step_reference(self) -> Measured:
        """The LoRA step the inits are compared with, measured once per process (after one warm-up step)."""
        if self.lora_step_measured is None:
            self.lora_step()
            runs = self.repeat(lambda: self.time_and_peak(self.lora_step))
            self.lora_step_measured = summarise(runs)
        return self.lora_step_measured


def summarise(runs: list[tuple[float, float | None]]) -> Measured:
    """Median seconds and the largest peak of (seconds, peak) runs."""
    peaks = [peak for _, peak in runs if peak is not None]
    return Measured(statistics.median(s for s, _ in runs), max(peaks) if peaks else None, len(runs))


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value / reference


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_bench(args: argparse.Namespace, shape: Shape, deadline: float) -> Bench:
    accelerator = Accelerator(cpu=args.device == "cpu")
    set_seed(0)
    tokenizer = build_tiny_tokenizer()
    cfg = compose_config([f"model={shape.run_settings}", "peft=all", f"peft.lora_r={args.rank}", "init=gradient",
                          "init.bsz=1", f"init.iters={args.batch}", f"init.max_length={args.seq}", "optim=adamw"])
    config = LlamaConfig(**shape.architecture, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    with torch.device(accelerator.device):  # drawn where it runs: 7B random weights on a CPU take minutes
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[args.dtype], attn_implementation="sdpa")
        model = add_lora_adapters(model, cfg.peft, "causal", init_method(cfg.init), cfg.init)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    micro_batches = [{"input_ids": row[None], "attention_mask": torch.ones_like(row[None]), "labels": row[None]}
                     for row in tokens]
    batch = {key: torch.cat([m[key] for m in micro_batches]).to(accelerator.device) for key in micro_batches[0]}
    return Bench(args, cfg, accelerator, model, tokenizer, micro_batches, batch, deadline)


@contextlib.contextmanager
def activation_checkpointing(model, enabled: bool):
    """transformers' gradient checkpointing of the decoder layers (non-reentrant, as the HF Trainer's default)."""
    if not enabled:
        yield
        return
    base = model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        base.gradient_checkpointing_disable()


def init_row(name: str, run: Measured, step: Measured) -> list:
    return [name, run.seconds, run.seconds / step.seconds, run.peak_mib, ratio(run.peak_mib, step.peak_mib),
            run.repeats]


INIT_COLUMNS = ["run", "seconds (median)", "× LoRA step (time)", "peak MiB", "× LoRA step (peak)", "repeats"]


def section_init(bench: Bench) -> dict:
    step = bench.lora_step_reference()
    init_cfg = OmegaConf.merge(bench.cfg.init, INIT_VARIANTS["streaming lowrank"])

    def streaming_lowrank():
        run_init(bench.model, init_cfg, bench.micro_batches, bench.accelerator)

    streaming_lowrank()  # warm-up: checkpointed blocks, chunked loss at the head, the lowrank SVD's kernels
    lowrank = summarise(bench.repeat(lambda: bench.time_and_peak(streaming_lowrank)))
    return {"columns": INIT_COLUMNS,
            "rows": [init_row("one LoRA step (run_exp's loop, AdamW)", step, step),
                     init_row("streaming init, svd=lowrank (q = 4r, niter = 4)", lowrank, step)],
            "summary": {"tokens": bench.args.batch * bench.args.seq,
                        "streaming_lowrank_over_lora_step_time": lowrank.seconds / step.seconds,
                        "streaming_lowrank_over_lora_step_peak": ratio(lowrank.peak_mib, step.peak_mib)}}


def full_svd_seconds(bench: Bench) -> dict[str, float]:
    """Seconds of one full SVD (top r triplets, as the init takes them) of a random G of each adapted weight's
    shape, after one warm-up SVD of the smallest shape (the solver's handle and first workspace)."""
    shapes = sorted({tuple(layer.get_base_layer().weight.shape) for layer in lora_layers(bench.model).values()})
    top_singular_triplets(torch.randn(*min(shapes, key=lambda s: s[0] * s[1]), device=bench.device), bench.args.rank)
    seconds = {}
    for rows, cols in shapes:
        G = torch.randn(rows, cols, device=bench.device)
        synchronize(bench.device)
        start = time.perf_counter()
        top_singular_triplets(G, bench.args.rank, "full")
        synchronize(bench.device)
        seconds[f"{rows}x{cols}"] = time.perf_counter() - start
    return seconds


def section_init_full(bench: Bench) -> dict:
    step = bench.lora_step_reference()
    svd_seconds = full_svd_seconds(bench)
    layer_shapes = [tuple(layer.get_base_layer().weight.shape) for layer in lora_layers(bench.model).values()]
    svd_total = sum(svd_seconds[f"{rows}x{cols}"] for rows, cols in layer_shapes)
    summary = {"full_svd_seconds_per_shape": svd_seconds, "full_svds_alone_seconds": svd_total,
               "layers": len(layer_shapes)}
    left = bench.deadline - time.perf_counter()
    if svd_total > left:
        return {"skipped": f"its {len(layer_shapes)} full SVDs alone take ≈ {svd_total:.0f} s, more than the "
                           f"{max(left, 0):.0f} s left of the time budget", "summary": summary}
    init_cfg = OmegaConf.merge(bench.cfg.init, INIT_VARIANTS["streaming"])
    full = summarise([bench.time_and_peak(
        lambda: run_init(bench.model, init_cfg, bench.micro_batches, bench.accelerator))])
    summary |= {"streaming_full_over_lora_step_time": full.seconds / step.seconds,
                "streaming_full_over_lora_step_peak": ratio(full.peak_mib, step.peak_mib)}
    return {"columns": INIT_COLUMNS,
            "rows": [init_row("one LoRA step (run_exp's loop, AdamW)", step, step),
                     init_row("streaming init, svd=full", full, step)],
            "summary": summary}


def section_train(bench: Bench) -> dict:
    steps, rows, tokens_per_s = bench.args.steps, [], {}
    for checkpointing in (False, True):
        with activation_checkpointing(bench.model, checkpointing):
            optimizer = build_optimizer(bench.model, bench.cfg.optim, bench.cfg.model)
            scheduler = build_scheduler(optimizer, bench.cfg.model, 1 + bench.args.repeats * steps)
            bench.train_steps(optimizer, scheduler, 1)  # warm-up

            def timed_steps():
                with measure(bench.device) as usage:
                    state = bench.train_steps(optimizer, scheduler, steps)
                peak = usage.peak_mem_mb if bench.device.type == "cuda" else None
                return state.tokens / usage.seconds, usage.seconds / steps, peak

            runs = bench.repeat(timed_steps)
        name = "on" if checkpointing else "off"
        tokens_per_s[name] = statistics.median(r[0] for r in runs)
        peaks = [r[2] for r in runs if r[2] is not None]
        rows.append([name, tokens_per_s[name], statistics.median(r[1] for r in runs), max(peaks) if peaks else None,
                     len(runs)])
    return {"columns": ["activation checkpointing", "tokens/s (median)", "step seconds", "peak MiB", "repeats"],
            "rows": rows,
            "summary": {"steps_per_repeat": steps, "tokens_per_step": bench.args.batch * bench.args.seq,
                        "checkpointing_on_over_off_tokens_per_s": tokens_per_s["on"] / tokens_per_s["off"]}}


def time_optimizer_steps(optimizer: torch.optim.Optimizer, device: torch.device) -> list[float]:
    """Make `optimizer.step` append its own seconds to the returned list. Install it after the scheduler, which
    wraps the bound method itself."""
    seconds, step = [], optimizer.step

    @functools.wraps(step)  # keeps the scheduler's mark on the step it wrapped: else it warns of a replaced step
    def timed_step(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        result = step(*args, **kwargs)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        return result

    optimizer.step = timed_step
    return seconds


def section_optim(bench: Bench) -> dict:
    with activation_checkpointing(bench.model, True):
        optimizers, schedulers, optimizer_seconds, first_peak = {}, {}, {}, {}
        for name in OPTIMIZERS:
            optimizers[name] = build_optimizer(bench.model, bench.optim_cfg(name), bench.cfg.model)
            schedulers[name] = build_scheduler(optimizers[name], bench.cfg.model, 1 + bench.args.repeats)
            optimizer_seconds[name] = time_optimizer_steps(optimizers[name], bench.device)
        for name in OPTIMIZERS:  # warm-up: each optimizer's first step allocates its state
            _, first_peak[name] = bench.time_and_peak(lambda: bench.train_steps(optimizers[name], schedulers[name], 1))
            optimizer_seconds[name].clear()

        def one_round():  # the optimizers take turns, so a change of machine load hits all alike
            return {name: bench.time_and_peak(lambda: bench.train_steps(optimizers[name], schedulers[name], 1))[0]
                    for name in OPTIMIZERS}

        rounds = bench.repeat(one_round)
    step = {name: statistics.median(r[name] for r in rounds) for name in OPTIMIZERS}
    rows = [[name, step[name], step[name] / step["adamw"], statistics.median(optimizer_seconds[name]),
             state_mb(optimizers[name]), first_peak[name], len(rounds)] for name in OPTIMIZERS]
    return {"columns": ["optim", "step seconds (median)", "step / adamw", "optimizer.step seconds", "state MiB",
                        "peak MiB (1st step)", "repeats"],
            "rows": rows,
            "summary": {"activation_checkpointing": True,
                        **{f"{name}_over_adamw": step[name] / step["adamw"] for name in TARGETS},
                        **{f"{name}_target": target for name, target in TARGETS.items()}}}


@contextlib.contextmanager
def counted_tokens(model):
    """Yields a list whose first item counts the rows the model's forward is called on: in generation each call
    decodes one new token per row (finished rows too, padded, which cost the same)."""
    count = [0]

    def add_rows(module, args, kwargs):
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        count[0] += inputs.shape[0]

    hook = model.get_base_model().register_forward_pre_hook(add_rows, with_kwargs=True)
    try:
        yield count
    finally:
        hook.remove()


def section_generate(bench: Bench) -> dict:
    size, new_tokens = bench.args.gen_batch, bench.args.gen_new_tokens
    prompts = [build_prompt("alpaca", {"instruction": row["question"]}) for row in generate_toy_math(size, seed=0)]
    prompt_tokens = statistics.mean(len(ids) for ids in bench.tokenizer(prompts)["input_ids"])

    def run(decoding: Decoding):
        generate(bench.model, bench.tokenizer, prompts, decoding, size, bench.accelerator, desc="generate")

    run(Decoding(max_new_tokens=2))  # warm-up: prefill and decoding kernels, the KV cache's first allocation

    def timed_generation():
        with counted_tokens(bench.model) as count:
            seconds, peak = bench.time_and_peak(lambda: run(Decoding(max_new_tokens=new_tokens)))
        return count[0] / seconds, count[0], seconds, peak

    runs = bench.repeat(timed_generation)
    peaks = [r[3] for r in runs if r[3] is not None]
    decoded = statistics.median(r[1] for r in runs)
    rows = [[size, prompt_tokens, new_tokens, decoded, statistics.median(r[2] for r in runs),
             statistics.median(r[0] for r in runs), max(peaks) if peaks else None, len(runs)]]
    summary = {"decoding": "greedy, KV cache, left padding (lora_one.eval.generation.generate)"}
    if decoded < size * new_tokens:
        summary["note"] = "fewer tokens than rows × max_new_tokens: every row reached the end-of-text token"
    return {"columns": ["batch", "prompt tokens (mean)", "max new tokens", "tokens decoded", "seconds (median)",
                        "tokens/s (median)", "peak MiB", "repeats"],
            "rows": rows, "summary": summary}


RUNS = {"init": section_init, "train": section_train, "optim": section_optim, "generate": section_generate,
        "init_full": section_init_full}


def free_memory(bench: Bench) -> None:
    """Gradients and cached blocks of a finished (or failed) section go, so the next starts from the model alone."""
    bench.model.zero_grad(set_to_none=True)
    gc.collect()
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()


def fmt(value, column: str) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {fmt(item, column)}" for key, item in value.items())
    if value is None:
        return NOT_MEASURED if ("MiB" in column or "peak" in column) else "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(report: dict) -> str:
    settings = report["settings"]
    lines = [f"# GPU check ({report['date']})", "", f"Machine: {report['machine']}.",
             f"Model: {settings['config']} shapes, random weights, {settings['dtype']}, SDPA; LoRA peft=all, "
             f"r={settings['rank']}; batch {settings['batch']} × {settings['seq']} tokens. "
             f"{report['seconds']:.0f} s in all (budget {settings['time_budget_s']:.0f} s).", ""]
    for name, result in report["sections"].items():
        lines += [f"## {name} ({result['seconds']:.0f} s)" if "seconds" in result else f"## {name}", ""]
        if "skipped" in result:
            lines += [f"Skipped: {result['skipped']}.", ""]
        if "rows" in result:
            columns = result["columns"]
            lines += ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
            lines += ["| " + " | ".join(fmt(v, c) for v, c in zip(row, columns)) + " |" for row in result["rows"]]
            lines.append("")
        lines += [f"- {key}: {fmt(value, key)}" for key, value in result.get("summary", {}).items()] + [""]
    return "\n".join(lines)


def write(report: dict, out: Path, started: float) -> None:
    report["seconds"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=list(SHAPES), default="llama2_7b",
                        help="llama2_7b: Llama-2-7B's shapes; tiny: a 2-layer model for CPU tests")
    parser.add_argument("--batch", type=int, help="sequences per batch (llama2_7b: 8, tiny: 2)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (llama2_7b: 1024, tiny: 64)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where gpu_check.json and gpu_check.md go")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="the sections to run (always in the order above)")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="no section starts once this many seconds have passed since the imports (the device "
                             "call's limit must also cover the imports and the last section)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement, after a warm-up")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed run in `train`")
    parser.add_argument("--gen-batch", type=int, help="prompts per generation batch (llama2_7b: 16, tiny: 4)")
    parser.add_argument("--gen-new-tokens", type=int, help="max new tokens per prompt (llama2_7b: 256, tiny: 8)")
    args = parser.parse_args(argv)
    shape = SHAPES[args.config]
    for key in ("batch", "seq", "gen_batch", "gen_new_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(shape, key))
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> None:
    started = time.perf_counter()
    args = parse_args(argv)
    configure_console(verbose=False)
    bench = build_bench(args, SHAPES[args.config], started + args.time_budget_s)
    report = {"benchmark": "gpu_check", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": machine(),
              "settings": {**vars(args), "out": str(args.out),
                           "memory": "torch.cuda.max_memory_allocated" if bench.device.type == "cuda" else
                           f"{NOT_MEASURED}: one process's resident set keeps every earlier peak",
                           "parameters": sum(p.numel() for p in bench.model.parameters()),
                           "trainable_parameters": sum(p.numel() for p in bench.model.parameters() if p.requires_grad),
                           "threads": torch.get_num_threads()},
              "sections": {}}
    write(report, args.out, started)
    for name in (s for s in SECTIONS if s in args.sections):
        if bench.over_budget():
            report["sections"][name] = {"skipped": f"the time budget of {args.time_budget_s:.0f} s was spent "
                                                   f"before it started"}
        else:
            section_start = time.perf_counter()
            try:
                report["sections"][name] = RUNS[name](bench)
            except torch.cuda.OutOfMemoryError as err:
                report["sections"][name] = {"skipped": f"out of GPU memory ({str(err).splitlines()[0]})"}
            free_memory(bench)
            report["sections"][name]["seconds"] = time.perf_counter() - section_start
        write(report, args.out, started)
        print(f"{name}: ended at {time.perf_counter() - started:.0f} s", flush=True)
    print(markdown(report))
    print(f"written to {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
