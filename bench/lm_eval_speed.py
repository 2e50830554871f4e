"""lm-evaluation-harness's batching against the project's own batched scoring, side by side in one run:
the same model object, the same first SST-2 dev rows, the same batch size.

    OMP_NUM_THREADS=1 python bench/lm_eval_speed.py [--model smollm2_135m] [--rows 96] [--batch_size 16]
                                                     [--threads 1] [--repeats 3] [--arc_rows 96]

- project: `eval=glue` (`BENCHMARKS["glue"].evaluate`): the training prompt read once per row, every label
  word (and eos) continued from its KV cache, the vocabulary head only where a probability is read;
- harness: `eval=lm_eval` with `tasks=[sst2]` (`BENCHMARKS["lm_eval"].evaluate`: HFLM on the model object,
  `simple_evaluate` with per-sample logs, as a run calls it): the harness's own prompt, one (context, choice)
  request per label, batched by its length sorting, the head at every position (requests with one context
  and one-token continuations, as SST-2's, are computed once);
- harness arc_easy (`--arc_rows`, 0 skips it): a log-likelihood multiple-choice task with several multi-token
  choices a row, harness only, for its rows/s.

Each path runs once untimed (warm-up; it also gives the token counts, the accuracies and the check that both
read the same rows), then `--repeats` timed rounds, the paths' order reversed every other round so that
neither always runs first on a shared CPU; each path's median counts. The prompts differ (the project scores
its training prompt `sst2 sentence: …` and each label's training target, the harness `…\\nQuestion: Is this
sentence positive or negative?\\nAnswer:` and ` negative`/` positive`), so tokens per row differ too:
tokens/s counts each row's prompt once plus every choice's continuation, as each path tokenizes them (the
project: `encode_example`; the harness: its own `_encode_pair`), and is the fairer ratio. Timings include
everything `evaluate` does (the harness: building its task and requests, logging samples, its metrics).
Runs on the GPU when torch sees one (the model moved there; both paths return host floats, so each timing
ends with the device's work done)."""
import argparse
import os
import statistics
import time

import torch
from accelerate import Accelerator
from lm_eval.models.huggingface import HFLM

from common import ROOT, report
from lora_one.config import compose_config
from lora_one.data.encoding import encode_example
from lora_one.eval import BENCHMARKS, glue
from lora_one.eval.scoring import is_encoder_decoder
from lora_one.models import load_model, load_tokenizer

SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"


def compose(model: str, rows: int, batch_size: int, arc_rows: int):
    """(SST-2 config with eval.glue and eval.lm_eval, arc_easy config): zero-shot, the first rows, one batch size."""
    overrides = [f"model={model}", "dataset=sst2", f"dataset.path={SST2}", "eval=[glue,lm_eval]",
                 f"eval.glue.limit={rows}", f"eval.glue.batch_size={batch_size}", "eval.lm_eval.num_fewshot=0",
                 f"eval.lm_eval.batch_size={batch_size}"]
    sst2 = compose_config([*overrides, "eval.lm_eval.tasks=[sst2]", f"eval.lm_eval.limit={rows}"])
    arc = compose_config([*overrides, "eval.lm_eval.tasks=[arc_easy]", f"eval.lm_eval.limit={arc_rows}"])
    return sst2, arc


def project_tokens(tokenizer, model, cfg, items: list[dict]) -> int:
    """Each row's prompt once plus every label's target (the word and eos), as `eval=glue` encodes them."""
    seq2seq = is_encoder_decoder(model)
    total = 0
    for item in items:
        split = [glue.prompt_and_target(encode_example(tokenizer, item["prompt"], word, glue.NO_TRUNCATION, seq2seq),
                                        seq2seq) for word in cfg.dataset.label_names]
        total += len(split[0][0]) + sum(len(target) for _, target in split)
    return total


def harness_tokens(lm: HFLM, records: list[dict]) -> int:
    """Each row's context once plus every choice's continuation, split as the harness splits them."""
    total = 0
    for record in records:
        pairs = [lm._encode_pair(context, continuation) for context, continuation in record["arguments"]]
        total += len(pairs[0][0]) + sum(len(continuation) for _, continuation in pairs)
    return total


def same_rows(items: list[dict], records: list[dict], label_words: list[str]) -> int:
    """How many rows both paths read alike: the harness's doc at the same position has the project's sentence
    (inside its prompt) and gold label."""
    docs = [r["doc"] for r in sorted(records, key=lambda r: r["doc_id"])]
    return sum(doc["sentence"] in item["prompt"] and label_words[doc["label"]] == item["gold"]
               for item, doc in zip(items, docs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m", help="a conf/model option (tiny_llama: a quick run)")
    parser.add_argument("--rows", type=int, default=96, help="the first SST-2 dev rows")
    parser.add_argument("--batch_size", type=int, default=16, help="eval.glue.batch_size and eval.lm_eval.batch_size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up; medians count")
    parser.add_argument("--arc_rows", type=int, default=96, help="arc_easy rows through the harness; 0: not run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cfg, arc_cfg = compose(args.model, args.rows, args.batch_size, args.arc_rows)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir).to(accelerator.device).eval()

    glue_bench, harness = BENCHMARKS["glue"], BENCHMARKS["lm_eval"]
    glue_items = glue_bench.load_items(cfg.eval.glue)
    harness_items = harness.load_items(cfg.eval.lm_eval)
    paths = {  # name → (task, prompt, the call timed)
        "project eval=glue": ("sst2", "training prompt", lambda: glue_bench.evaluate(
            cfg.eval.glue, glue_items, model, tokenizer, accelerator)),
        "harness eval=lm_eval": ("sst2", "harness prompt", lambda: harness.evaluate(
            cfg.eval.lm_eval, harness_items, model, tokenizer, accelerator)),
    }
    if args.arc_rows:
        arc_items = harness.load_items(arc_cfg.eval.lm_eval)
        paths["harness arc_easy"] = ("arc_easy", "harness prompt", lambda: harness.evaluate(
            arc_cfg.eval.lm_eval, arc_items, model, tokenizer, accelerator))

    warm = {name: run() for name, (_, _, run) in paths.items()}  # untimed: caches, lazy imports, first allocations
    count = {name: len(records) for name, (_, records) in warm.items()}  # one record a row
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size)  # the harness's tokenization only
    tokens = {name: harness_tokens(lm, records) for name, (_, records) in warm.items() if name.startswith("harness")}
    tokens["project eval=glue"] = project_tokens(tokenizer, model, cfg, glue_items)

    seconds = {name: [] for name in paths}
    for round_number in range(args.repeats):
        order = list(paths) if round_number % 2 == 0 else list(reversed(paths))
        for name in order:
            start = time.perf_counter()
            paths[name][2]()
            seconds[name].append(time.perf_counter() - start)

    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows_per_s = {name: count[name] / median[name] for name in paths}
    tokens_per_s = {name: tokens[name] / median[name] for name in paths}
    rows = [[name, task, prompt, count[name], tokens[name] / count[name], median[name], rows_per_s[name],
             tokens_per_s[name], [round(t, 3) for t in seconds[name]]] for name, (task, prompt, _) in paths.items()]
    project, harness_sst2 = "project eval=glue", "harness eval=lm_eval"
    # each round's two SST-2 timings ran one after the other, under much the same load
    round_ratios = [h / p for p, h in zip(seconds[project], seconds[harness_sst2])]
    label_words = list(cfg.dataset.label_names)
    summary = {
        "model": args.model, "device": str(accelerator.device), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "repeats": args.repeats,
        "project ÷ harness, rows/s (sst2, of the medians)": rows_per_s[project] / rows_per_s[harness_sst2],
        "project ÷ harness, tokens/s (sst2, of the medians)": tokens_per_s[project] / tokens_per_s[harness_sst2],
        "project ÷ harness, rows/s (sst2, median of the rounds' ratios)":
            statistics.median(round_ratios) * count[project] / count[harness_sst2],
        "project ÷ harness, tokens/s (sst2, median of the rounds' ratios)":
            statistics.median(round_ratios) * tokens[project] / tokens[harness_sst2],
        "same rows": f"{same_rows(glue_items, warm[harness_sst2][1], label_words)}/{len(glue_items)}",
        "accuracy sst2, project": warm[project][0]["accuracy"],
        "accuracy sst2, harness (acc,none)": warm[harness_sst2][0]["results"]["sst2"]["acc,none"],
        "load average (1, 5, 15 min) before": " ".join(f"{v:.2f}" for v in load_before),
        "load average (1, 5, 15 min) after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    if args.arc_rows:
        arc_results = warm["harness arc_easy"][0]["results"]["arc_easy"]
        summary["accuracy arc_easy, harness (acc, acc_norm)"] = f"{arc_results['acc,none']:.4f}, " \
                                                                 f"{arc_results['acc_norm,none']:.4f}"
    report(f"lm_eval_speed_{args.model}", ["path", "task", "prompt", "rows", "tokens/row", "median s", "rows/s",
                                           "tokens/s", "all repeats s"], rows, summary)


if __name__ == "__main__":
    main()
