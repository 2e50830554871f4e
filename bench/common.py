"""What the benchmarks share: SmolLM2-135M with LoRA on real GSM8K micro-batches, built as run_exp
builds them, and the table/JSON report every benchmark ends with."""
import argparse
import datetime
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from accelerate.utils import set_seed

from lora_one.config import compose_config
from lora_one.data import encode_rows, load_splits, make_collator
from lora_one.init import init_method
from lora_one.models import add_lora_adapters, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]

GSM8K_TRAIN = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
RESULTS = ROOT / "bench" / "results"


def init_bench_parser(doc: str, oversampling_help: str | None = None) -> argparse.ArgumentParser:
    """The options the init benchmarks share: `--micro-batches`, and `--oversampling` values when given its help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if oversampling_help:
        parser.add_argument("--oversampling", type=int, nargs="*", default=None, help=oversampling_help)
    parser.add_argument("--micro-batches", type=int, default=8, help="init micro-batches of 256 tokens")
    return parser


def smollm2_lora(overrides: list[str] = (), micro_batches: int = 8, tokens: int = 256):
    """(cfg, tokenizer, PEFT model, init micro-batches, held-out batches) for SmolLM2-135M with peft=all,
    r=8 on GSM8K train. Each init micro-batch is one example of exactly `tokens` tokens (the examples
    truncated at that length), so the token count is the same for every method."""
    cfg = compose_config(["model=smollm2_135m", "dataset=gsm8k", f"dataset.path={GSM8K_TRAIN}",
                          "dataset.max_train_samples=1000", "dataset.eval_size=16", "peft=all", "peft.lora_r=8",
                          "init.bsz=1", f"init.iters={micro_batches}", f"init.max_length={tokens}", *overrides])
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train, held_out = load_splits(cfg.dataset, cfg.seed)
    collate = make_collator(tokenizer)
    full = [e for e in encode_rows(tokenizer, train, tokens, seq2seq=False) if len(e["input_ids"]) == tokens]
    batches = [dict(collate([e])) for e in full[:micro_batches]]
    eval_encoded = encode_rows(tokenizer, held_out, cfg.model.max_length, seq2seq=False)
    eval_batches = [dict(collate(eval_encoded[i : i + 4])) for i in range(0, len(eval_encoded), 4)]
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    model = add_lora_adapters(model, cfg.peft, cfg.model.type, init_method(cfg.init), cfg.init)
    return cfg, tokenizer, model, batches, eval_batches


# The init variants the benchmarks compare (overrides of conf/init/gradient.yaml).
INIT_VARIANTS = {
    "streaming": {"estimator": "streaming", "svd": "full"},
    "streaming lowrank": {"estimator": "streaming", "svd": "lowrank", "svd_q": None, "svd_niter": 4},  # q = 4k
    "exact": {"estimator": "exact", "svd": "full"},
    "official": {"estimator": "exact", "svd": "lowrank", "svd_q": 512, "svd_niter": 16},
    "sketch": {"estimator": "sketch"},
}


def run_init(model, init_cfg, batches, accelerator):
    """The configured gradient init on the wrapped model (as run_exp calls it); returns its InitReport."""
    return init_method(init_cfg).initialise(model, init_cfg, batches, accelerator, seq2seq=False)


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def report(name: str, columns: list[str], rows: list[list], summary: dict) -> None:
    """Print `rows` as a table and the summary, and write both to bench/results/<name>.json."""
    widths = [max(len(str(c)), *(len(_fmt(row[i])) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(row, widths)))
    for key, value in summary.items():
        print(f"{key}: {_fmt(value)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
               "columns": columns, "rows": rows, "summary": summary}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    print(f"written to {RESULTS / f'{name}.json'}")


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
