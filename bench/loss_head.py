"""One SmolLM2 training step (forward + backward, peft=all LoRA, MRPC train rows): the model's own loss
(the vocabulary head at every position) vs `causal_lm_loss` (the head only where some row's next token is
labelled), same batches, rounds alternating; the loss and gradients of both compared first.

    OMP_NUM_THREADS=1 python bench/loss_head.py [batch size, 4] [rounds, 2]
"""
import sys
import time

import torch  # noqa: E402

from common import ROOT
from lora_one.config import compose_config  # noqa: E402
from lora_one.data import encode_rows, load_splits, make_collator  # noqa: E402
from lora_one.init import init_method  # noqa: E402
from lora_one.models import add_lora_adapters, load_model, load_tokenizer  # noqa: E402
from lora_one.train.loop import causal_lm_loss  # noqa: E402


def full_loss(model, batch):
    return model(**batch).loss


cfg = compose_config(["model=smollm2_135m", "dataset=mrpc", f"dataset.path={ROOT.parent}/shared/data/glue/MRPC",
                      "peft=all", "dataset.max_train_samples=64"])
torch.manual_seed(0)
tok = load_tokenizer(cfg.model, cfg.cache_dir)
train, _ = load_splits(cfg.dataset, cfg.seed)
enc = encode_rows(tok, train, cfg.model.max_length, False)
collate = make_collator(tok)
bs = int(sys.argv[1]) if len(sys.argv) > 1 else 4
batches = [dict(collate(enc[i:i + bs])) for i in range(0, 6 * bs, bs)]
print("batch", bs, "tokens per batch", [tuple(b["input_ids"].shape) for b in batches],
      "labelled", [int((b["labels"] != -100).sum()) for b in batches])
model = load_model(cfg.model, tok, cfg.cache_dir)
model = add_lora_adapters(model, cfg.peft, "causal", init_method(cfg.init), cfg.init)
for n, p in model.named_parameters():
    if "lora_B" in n: torch.nn.init.normal_(p, std=0.02)
model.train()
params = [p for p in model.parameters() if p.requires_grad]

def step(fn, batch):
    model.zero_grad(set_to_none=True)
    loss = fn(model, batch); loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]

# equality
worst_loss, worst_grad = 0.0, 0.0
for b in batches[:2]:
    l1, g1 = step(full_loss, b); l2, g2 = step(causal_lm_loss, b)
    worst_loss = max(worst_loss, abs(l1 - l2).item() / abs(l1).item())
    worst_grad = max(worst_grad, max(((a - c).norm() / a.norm()).item() for a, c in zip(g1, g2)))
print(f"rel |Δloss| {worst_loss:.2e}, worst rel ‖Δgrad‖ per tensor {worst_grad:.2e}")
times = {"full": [], "labelled": []}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2):
    for name, fn in (("full", full_loss), ("labelled", causal_lm_loss)):
        start = time.perf_counter()
        for b in batches: step(fn, b)
        times[name].append(time.perf_counter() - start)
print({k: [round(x, 2) for x in v] for k, v in times.items()})
f, l = min(times["full"]), min(times["labelled"])
print(f"best: full {f:.2f} s, labelled {l:.2f} s for {len(batches)} steps; "
      f"labelled/full {l / f:.3f}, speed-up {f / l - 1:.1%}")
