"""Per-GPU peak memory of the init and of a LoRA training step (issue 18 §2): an analytic model from config
shapes only, for Llama-2-7B, Llama-2-13B and Llama-3-70B on 1 GPU, DDP ×8, FSDP ×8 and FSDP ×16 (2 nodes),
for this project's streaming init and for the official code's approach (every layer's gradient sent to host
RAM, then factorised), with every term printed; and its validation against CPU peaks measured at small scale.

    python bench/memory_model.py                      # the tables (no model is built)
    OMP_NUM_THREADS=1 python bench/memory_model.py --validate [--models smollm2 wide_llama] [--processes 1 2]

Shapes (public config.json of each model): Llama-2-7B hidden 4096, intermediate 11008, 32 layers, 32 heads,
32 KV heads, vocabulary 32000; Llama-2-13B 5120, 13824, 40, 40, 40, 32000; Llama-3-70B 8192, 28672, 80, 64,
8 KV heads, 128256; none ties its embeddings. LoRA `peft=all` (q, k, v, o, gate, up, down), r = 8.

What is held, and why (`init_terms`, `train_terms`, `official_init_terms`):
- weights in `weight_bytes` each; FSDP: 1/world of them plus one gathered decoder block;
- LoRA parameters in fp32 (PEFT upcasts adapters of a bf16 model), in training also their gradients and
  AdamW's two moments (16 bytes a parameter); FSDP shards them; DDP adds a bucket copy of the gradients;
- activations saved for the backward, per token of a decoder block: `weight_bytes` × (4h + 2·kv + 4I) plus
  the two RMSNorm inputs in fp32 (4h each: the norm upcasts and saves its input) — counted from what autograd
  saves in transformers' LlamaDecoderLayer with SDPA attention (KV heads not repeated);
- checkpointed runs (the streaming init; training with checkpointing) keep one hidden state per block
  boundary and recompute one block at a time: that block's saved tensors, plus its backward's gradient
  temporaries, `weight_bytes` × (h + I) a token;
- the loss head: fp32 log-softmax output, the loss's gradient and the logits' gradient, 3 × 4 × V bytes a
  token (plus the logits themselves in `weight_bytes` below fp32), for the labelled positions only
  (`causal_lm_loss`), in the streaming init one micro-batch at a time;
- the streaming init's layer G in fp32 (m·n·4, plus its `weight_bytes` gradient below fp32) while it is
  factorised, and the full SVD's workspace, measured on CPU (torch.linalg.svd, gesdd): ≈ 4 × (3·m·n + 3.5·k²)
  bytes, k = min(m, n) (2048×2048: 6.5 m·n·4; 1024×2816: 4.2 m·n·4) — a GPU solver's differs;
- the official approach: no checkpointing, one micro-batch at a time, each layer's gradient (in
  `weight_bytes`) on the GPU until it is moved to host, where every target layer's G is summed in fp32
  (Σ m·n·4 per process); then each G back on the GPU for svd_lowrank(q=512, niter=16), whose workspace
  measured on CPU is ≈ 4.3 × 4·q·(m + n) bytes.
A phase's peak is what it holds throughout plus the largest of its transients, which do not coexist: the
head's backward comes before the first block's; the official factorisation after the whole backward.
"""
import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

GB = 1e9
GPU_MEMORY = 80 * GB
# Full SVD (torch.linalg.svd, full_matrices=False) on CPU: workspace ≈ 4 × (3·m·n + 3.5·min(m, n)²) bytes,
# from its measured peak at 576×1536, 1024×2816, 2816×1024 and 2048×2048 (bench/README.md).
SVD_MN, SVD_K2 = 3.0, 3.5
LOWRANK_Q, LOWRANK_FACTOR = 512, 4.3  # official svd_lowrank(q=512): ≈ 4.3 × 4q(m+n) bytes, measured at 2048×5504
HEAD_FP32_COPIES = 3  # log-softmax output, the loss's gradient, the logits' gradient
# A block backward's gradient temporaries, in hidden and intermediate widths: at its first weight gradient (down_proj,
# the largest G) the gradient flowing in and down_proj's input gradient exist besides the block's saved tensors.
BACKWARD_H, BACKWARD_I = 1, 1


@dataclasses.dataclass(frozen=True)
class Shapes:
    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    def target_shapes(self) -> list[tuple[int, int]]:
        """(out, in) of one block's LoRA targets with `peft=all`: q, k, v, o, gate, up, down."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]

    @property
    def block_params(self) -> int:
        return sum(m * n for m, n in self.target_shapes()) + 2 * self.hidden  # + the two RMSNorm weights

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.block_params + self.hidden  # + the final norm

    def lora_params(self, rank: int) -> int:
        return self.layers * sum(rank * (m + n) for m, n in self.target_shapes())


LLAMA_2_7B = Shapes("Llama-2-7B", 4096, 11008, 32, 32, 32, 32000, False)
LLAMA_2_13B = Shapes("Llama-2-13B", 5120, 13824, 40, 40, 40, 32000, False)
LLAMA_3_70B = Shapes("Llama-3-70B", 8192, 28672, 80, 64, 8, 128256, False)


@dataclasses.dataclass(frozen=True)
class Parallel:
    name: str
    world: int = 1
    sharded: bool = False  # FSDP: parameters, gradients and optimizer state split over the world


CONFIGURATIONS = [Parallel("1 GPU"), Parallel("DDP ×8", 8), Parallel("FSDP ×8", 8, True),
                  Parallel("FSDP ×16", 16, True)]


@dataclasses.dataclass(frozen=True)
class Workload:
    """Per rank: the init's tokens (all its micro-batches, backpropagated together) and one micro-batch's
    (the head is evaluated one at a time), and one training micro-batch's tokens; all tokens labelled."""
    init_tokens: int
    init_micro_batch_tokens: int
    train_tokens: int
    weight_bytes: int = 2
    rank: int = 8


def block_saved_bytes_per_token(s: Shapes, b: int) -> float:
    """Bytes autograd keeps for one decoder block's backward, per token (module docstring)."""
    return b * (4 * s.hidden + 2 * s.kv_dim + 4 * s.intermediate) + 2 * 4 * s.hidden + 4 * (2 + s.heads)


def block_recompute_bytes_per_token(s: Shapes, b: int) -> float:
    """A checkpointed block's recompute and backward, per token: its saved tensors, less the block input the
    checkpoint already holds (in fp32 the first norm's upcast is that tensor), plus the gradient temporaries."""
    already_held = 4 * s.hidden if b == 4 else 0
    return block_saved_bytes_per_token(s, b) - already_held + b * (BACKWARD_H * s.hidden + BACKWARD_I * s.intermediate)


def head_bytes(s: Shapes, tokens: int, b: int) -> float:
    return tokens * s.vocab * (HEAD_FP32_COPIES * 4 + (b if b < 4 else 0))


def svd_workspace_bytes(m: int, n: int) -> float:
    return 4 * (SVD_MN * m * n + SVD_K2 * min(m, n) ** 2)


def weight_terms(s: Shapes, p: Parallel, b: int) -> dict[str, float]:
    return {"weights": b * s.params / (p.world if p.sharded else 1),
            "gathered block": b * s.block_params if p.sharded else 0.0}


def init_terms(s: Shapes, w: Workload, p: Parallel) -> dict[str, float]:
    """The streaming init's terms (bytes per rank); `peak` = the held terms + the largest transient."""
    b = w.weight_bytes
    largest_m, largest_n = max(s.target_shapes(), key=lambda mn: 4 * mn[0] * mn[1] + svd_workspace_bytes(*mn))
    held = {**weight_terms(s, p, b),
            "LoRA state": 4 * s.lora_params(w.rank) / (p.world if p.sharded else 1),
            # one hidden state per block boundary, plus the final norm's input and output
            "activations": (s.layers + 2) * w.init_tokens * s.hidden * b}
    transients = {"head": head_bytes(s, w.init_micro_batch_tokens, b),
                  "block recompute": w.init_tokens * block_recompute_bytes_per_token(s, b),
                  # the owner rank (FSDP) or every rank (DDP all-reduces it) holds the whole layer's G
                  "G": largest_m * largest_n * (4 + (b if b < 4 else 0)),
                  "SVD": svd_workspace_bytes(largest_m, largest_n)}
    transient = max(transients["head"], transients["block recompute"] + transients["G"] + transients["SVD"])
    return {**held, **transients, "peak": sum(held.values()) + transient}


def train_terms(s: Shapes, w: Workload, p: Parallel, checkpointing: bool = False) -> dict[str, float]:
    """One LoRA training step's terms (bytes per rank): forward, backward, AdamW step."""
    b, tokens = w.weight_bytes, w.train_tokens
    lora = s.lora_params(w.rank)
    ddp_buckets = 4 * lora if p.world > 1 and not p.sharded else 0
    final_norm = tokens * 4 * s.hidden  # the final RMSNorm keeps its fp32 input
    if checkpointing:
        activations = (s.layers + 1) * tokens * s.hidden * b + final_norm
        block = tokens * block_recompute_bytes_per_token(s, b)
    else:
        activations = s.layers * tokens * block_saved_bytes_per_token(s, b) + final_norm
        block = tokens * b * (BACKWARD_H * s.hidden + BACKWARD_I * s.intermediate)
    held = {**weight_terms(s, p, b), "LoRA state": 16 * lora / (p.world if p.sharded else 1) + ddp_buckets,
            "activations": activations}
    transients = {"head": head_bytes(s, tokens, b), "block recompute": block, "G": 0.0, "SVD": 0.0}
    return {**held, **transients, "peak": sum(held.values()) + max(transients["head"], block)}


def official_init_terms(s: Shapes, w: Workload, p: Parallel) -> dict[str, float]:
    """The official approach (bytes per rank): plain forward and backward per micro-batch, each layer's gradient
    moved to host RAM as it completes, then every G factorised on the GPU by svd_lowrank(q=512)."""
    b, tokens = w.weight_bytes, w.init_micro_batch_tokens
    shapes = s.target_shapes()
    m, n = max(shapes, key=lambda mn: mn[0] * mn[1])
    held = {**weight_terms(s, p, b), "LoRA state": 4 * s.lora_params(w.rank) / (p.world if p.sharded else 1)}
    activations = s.layers * tokens * block_saved_bytes_per_token(s, b) + tokens * 4 * s.hidden
    transients = {"activations": activations, "head": head_bytes(s, tokens, b),
                  "block recompute": tokens * b * (BACKWARD_H * s.hidden + BACKWARD_I * s.intermediate),
                  "G": 4 * m * n, "SVD": max(LOWRANK_FACTOR * 4 * LOWRANK_Q * (mm + nn) for mm, nn in shapes)}
    backward = activations + max(transients["head"], transients["block recompute"] + b * m * n)
    factorisation = transients["G"] + transients["SVD"]
    host = 4 * s.layers * sum(mm * nn for mm, nn in shapes)
    return {**held, **transients, "peak": sum(held.values()) + max(backward, factorisation), "host": host}


TERMS = ["weights", "gathered block", "LoRA state", "activations", "head", "block recompute", "G", "SVD"]
PHASES = {"init (streaming)": init_terms, "init (official)": official_init_terms, "train step": train_terms,
          "train step (ckpt)": lambda s, w, p: train_terms(s, w, p, checkpointing=True)}


def model_table(s: Shapes, w: Workload) -> list[list]:
    rows = []
    for p in CONFIGURATIONS:
        for phase, terms_of in PHASES.items():
            terms = terms_of(s, w, p)
            host = terms.get("host")
            rows.append([p.name, phase, *(round(terms.get(t, 0.0) / GB, 2) for t in TERMS),
                         round(terms["peak"] / GB, 1), "yes" if terms["peak"] <= GPU_MEMORY else "NO",
                         "–" if host is None else f"{host / GB:.0f} ({host * min(p.world, 8) / GB:.0f}/node)"])
    return rows


TABLE_COLUMNS = ["configuration", "phase", *(f"{t} GB" for t in TERMS), "peak GB/GPU", "fits 80 GB",
                 "host RAM GB/process (per node)"]


def print_table(columns: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


# ---- validation at small scale, on CPU: predicted vs measured RSS increment above the loaded model ----

VALIDATION_MODELS = {
    "smollm2": ["model=smollm2_135m"],
    # a random Llama wider than SmolLM2 (the tiny test model's built-in ~830-token vocabulary)
    "wide_llama": ["model=tiny_llama", "model.architecture.hidden_size=1024",
                   "model.architecture.intermediate_size=2816", "model.architecture.num_hidden_layers=4",
                   "model.architecture.num_attention_heads=16", "model.architecture.num_key_value_heads=16"],
}
# validation workload, all processes together: the init's micro-batches of one example, the train batch's examples
INIT_MICRO_BATCHES, TRAIN_EXAMPLES, TOKENS = 4, 4, 256


def shapes_of(config) -> Shapes:
    return Shapes(config.name_or_path or config.model_type, config.hidden_size, config.intermediate_size,
                  config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.vocab_size,
                  config.tie_word_embeddings)


def validation_workload(processes: int) -> Workload:
    return Workload(init_tokens=INIT_MICRO_BATCHES // processes * TOKENS, init_micro_batch_tokens=TOKENS,
                    train_tokens=TRAIN_EXAMPLES // processes * TOKENS, weight_bytes=4)


def measure_worker(model_name: str, phase: str) -> None:
    """Build the model (fp32, peft=all, r=8), page its weights in, then run `phase` under the RSS sampler; prints
    this process's figures as JSON. Under torchrun each process takes its share of the batch (as run_exp)."""
    import psutil
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from omegaconf import OmegaConf

    from common import INIT_VARIANTS, run_init
    from lora_one.config import compose_config
    from lora_one.init import init_method
    from lora_one.models import add_lora_adapters, load_model, load_tokenizer
    from lora_one.profiling import measure
    from lora_one.train import build_optimizer
    from lora_one.train.loop import causal_lm_loss

    cfg = compose_config([*VALIDATION_MODELS[model_name], "peft=all", "peft.lora_r=8", "init.bsz=1",
                          f"init.iters={INIT_MICRO_BATCHES}"])
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    model = load_model(cfg.model, tokenizer, cfg.cache_dir)
    shapes = shapes_of(model.config)
    model = add_lora_adapters(model, cfg.peft, cfg.model.type, init_method(cfg.init), cfg.init)
    accelerator = Accelerator(cpu=True)
    random_tokens = torch.randint(0, shapes.vocab, (max(INIT_MICRO_BATCHES, TRAIN_EXAMPLES), TOKENS))
    if phase == "train":
        optimizer = build_optimizer(model, cfg.optim, cfg.model)
        model, optimizer = accelerator.prepare(model, optimizer)
        rows = random_tokens[accelerator.process_index : TRAIN_EXAMPLES : accelerator.num_processes]
        batch = {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": rows.clone()}
        model.train()
    else:
        batches = [{"input_ids": row[None], "attention_mask": torch.ones_like(row[None]), "labels": row[None].clone()}
                   for row in random_tokens[:INIT_MICRO_BATCHES]]
    with torch.no_grad():  # page in memory-mapped weights, so that the increment leaves them out
        for param in model.parameters():
            param.sum()
    process = psutil.Process()
    before = process.memory_info().rss
    with measure(torch.device("cpu")) as usage:
        if phase == "train":
            causal_lm_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            run_init(model, OmegaConf.merge(cfg.init, INIT_VARIANTS["streaming"]), batches, accelerator)
    print(json.dumps({"rank": accelerator.process_index, "increment_mb": usage.peak_mem_mb - before / 2**20,
                      "seconds": usage.seconds, "shapes": dataclasses.asdict(shapes)}))


def measure_increment(model_name: str, phase: str, processes: int) -> tuple[float, Shapes]:
    """(the largest per-process RSS increment in bytes, the model's shapes), measured in fresh processes."""
    bench = Path(__file__).resolve().parent
    # A fixed mmap threshold: glibc otherwise raises it as large tensors are freed, then keeps later freed ones in
    # its heap, and the resident set overstates the live tensors 2-2.5× (what a GPU's max_memory_allocated counts).
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MALLOC_MMAP_THRESHOLD_": "65536",
           "PYTHONPATH": f"{bench}:{bench.parent / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    launcher = [sys.executable] if processes == 1 else ["torchrun", "--standalone", "--nproc_per_node", str(processes)]
    done = subprocess.run([*launcher, __file__, "--measure", model_name, phase], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"error: measuring {model_name} {phase} × {processes} failed:\n{done.stderr[-3000:]}")
    figures = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')]
    shapes = Shapes(**figures[0]["shapes"])
    return max(f["increment_mb"] for f in figures) * 2**20, shapes


def predicted_increment(shapes: Shapes, phase: str, processes: int) -> float:
    """The model's peak less the weights (they are resident before the measurement starts)."""
    parallel = Parallel(f"DDP ×{processes}" if processes > 1 else "1 process", processes)
    terms = (init_terms if phase == "init" else train_terms)(shapes, validation_workload(processes), parallel)
    return terms["peak"] - terms["weights"]


def validate(model_names: list[str], process_counts: list[int]) -> list[list]:
    rows = []
    for model_name in model_names:
        for processes in process_counts:
            for phase in ("init", "train"):
                measured, shapes = measure_increment(model_name, phase, processes)
                predicted = predicted_increment(shapes, phase, processes)
                rows.append([model_name, f"{processes} process{'es' if processes > 1 else ''} (unsharded)",
                             "streaming init" if phase == "init" else "train step", round(predicted / 2**20),
                             round(measured / 2**20), f"{predicted / measured - 1:+.1%}"])
                print(*rows[-1], flush=True)
            rows.append([model_name, f"{processes} process{'es' if processes > 1 else ''} sharded (FSDP)", "both",
                         "–", "–", "not measurable yet (FSDP not implemented)"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", nargs=2, metavar=("MODEL", "PHASE"), help=argparse.SUPPRESS)
    parser.add_argument("--validate", action="store_true", help="measure CPU peaks at small scale instead")
    parser.add_argument("--models", nargs="+", default=list(VALIDATION_MODELS), choices=list(VALIDATION_MODELS))
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--init-micro-batches", type=int, default=8, help="per GPU, for the tables")
    parser.add_argument("--tokens", type=int, default=1024, help="per micro-batch example, for the tables")
    parser.add_argument("--train-batch", type=int, default=8, help="examples per GPU and training step")
    args = parser.parse_args()
    if args.measure:
        return measure_worker(*args.measure)
    if args.validate:
        columns = ["model", "processes", "phase", "predicted MiB", "measured MiB", "predicted / measured − 1"]
        rows = validate(args.models, args.processes)
        print_table(columns, rows)
        from common import report
        return report("memory_model_validation", columns, rows, {"tokens": TOKENS, "memory": "CPU RSS increment"})
    workload = Workload(init_tokens=args.init_micro_batches * args.tokens, init_micro_batch_tokens=args.tokens,
                        train_tokens=args.train_batch * args.tokens)
    print(f"per GPU: init {args.init_micro_batches} × {args.tokens} tokens, train step {args.train_batch} × "
          f"{args.tokens} tokens; bf16 weights, fp32 G and LoRA state, r = 8, peft=all. peak = held terms "
          "(weights, gathered block, LoRA state, activations) + max(head, block recompute + G + SVD)")
    for shapes in (LLAMA_2_7B, LLAMA_2_13B, LLAMA_3_70B):
        print(f"\n{shapes.name}: {shapes.params / 1e9:.2f} B parameters, {shapes.lora_params(8) / 1e6:.1f} M LoRA")
        print_table(TABLE_COLUMNS, model_table(shapes, workload))


if __name__ == "__main__":
    main()
