"""The `sketch` estimator against independent references: the SVD of a matrix built from token
outer products, the autograd gradient of the mean loss on tiny_llama (where G's rank is below the
sketch size, so the single-pass SVD must recover it), and the absence of any weight gradient."""
import types

import pytest
import torch
from accelerate import Accelerator

from conftest import TINY, alignment, autograd_reference, build, compose_config, gradient_init, rank_r, run_experiment
from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.init.estimators.sketch import GradientSketch, sketched_gradient
from lora_one.models import lora_layers
from lora_one.models.adapters import ADAPTER

TOKENS_PER_BATCH = 5  # two micro-batches → rank G ≤ 10 < k = r + oversampling = 12 ≤ every layer's smaller side
SKETCH = ["peft=all", "peft.lora_r=4", "init.estimator=sketch", "init.oversampling=8", "init.iters=2", "init.bsz=1"]


def short_batches(batches):
    """The first response tokens of each batch's first example, every one labelled: G = Σₜ δₜxₜᵀ then
    has rank ≤ the token count (the prompts share the template's first tokens, the responses differ)."""
    short = []
    for batch in batches:
        ids = batch["input_ids"][0][batch["labels"][0] != -100][None, :TOKENS_PER_BATCH]
        short.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return short


def test_single_pass_svd_recovers_a_low_rank_sum_of_token_outer_products():
    torch.manual_seed(0)
    m, n = 40, 30
    sketch = GradientSketch(m, n, rank=3, oversampling=5, generator=torch.Generator().manual_seed(1), device="cpu")
    assert sketch.range.shape == (m, 8) and sketch.corange.shape == (17, n)  # k = 3 + 5, l = 2k + 1
    X, D = torch.randn(2, 3, n), torch.randn(2, 3, m)  # two micro-batches of 3 tokens: (inputs, output grads)
    for x, dy in zip(X, D):
        sketch.add(x, dy)
    G = sum(dy.T @ x for x, dy in zip(X, D))  # rank 6 ≤ k: recovered exactly
    U, S, Vh = sketch.top_singular_triplets(6)
    torch.testing.assert_close((U * S) @ Vh, G, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S, torch.linalg.svdvals(G)[:6], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(U.T @ U, torch.eye(6), rtol=1e-4, atol=1e-5)


def test_frobenius_estimate_is_unbiased():
    torch.manual_seed(0)
    x, dy = torch.randn(20, 12), torch.randn(20, 9)
    truth = (dy.T @ x).square().sum().item()
    estimates = []
    for seed in range(300):
        sketch = GradientSketch(9, 12, rank=2, oversampling=2, generator=torch.Generator().manual_seed(seed),
                                device="cpu")
        sketch.add(x, dy)
        estimates.append(sketch.frobenius_sq())
    assert sum(estimates) / len(estimates) == pytest.approx(truth, rel=0.05)


@pytest.fixture(scope="module")
def sketch_run():
    """LoRA-One with the sketch estimator on tiny_llama, checking during every backward step that no
    parameter has a `.grad` and no base weight requires grad."""
    cfg, model, base, batches = build(SKETCH)
    batches = short_batches(batches)
    seen = []
    original_add = GradientSketch.add

    def checked_add(self, x, dy):
        seen.append([(name, p.grad is not None or (p.requires_grad and "lora_" not in name))
                     for name, p in model.named_parameters()])
        original_add(self, x, dy)

    GradientSketch.add = checked_add
    try:
        grads, stats = gradient_init(model, cfg.init, batches, Accelerator(cpu=True))
    finally:
        GradientSketch.add = original_add
    return cfg, model, base, batches, grads, stats, seen


def test_sketch_never_allocates_a_weight_gradient(sketch_run):
    _, model, _, _, grads, _, seen = sketch_run
    assert grads is None
    assert len(seen) == 2 * 2 * 7  # micro-batches × layers × (q,k,v,o,gate,up,down): every fold was checked
    assert not [name for step in seen for name, offending in step if offending]
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == ("lora_" in name), name


def test_sketch_subspaces_and_adapter_match_the_autograd_gradient(sketch_run):
    cfg, model, base, batches, _, stats, _ = sketch_run
    base.eval()
    layers = lora_layers(model)
    reference = autograd_reference(base, batches, list(layers))
    gamma = cfg.init.stable_gamma
    for name, layer in layers.items():
        G = reference[name]
        assert torch.linalg.matrix_rank(G) <= 2 * TOKENS_PER_BATCH < cfg.init.oversampling + layer.r[ADAPTER]
        s, r = layer.scaling[ADAPTER], layer.r[ADAPTER]
        B, A = layer.lora_B[ADAPTER].weight.double(), layer.lora_A[ADAPTER].weight.double()
        U, S, Vh = torch.linalg.svd(G.double(), full_matrices=False)
        # B₀ = −U_r S_r^{1/2}/√(γσ₁), A₀ = S_r^{1/2} V_rᵀ/√(γσ₁): their column/row spaces are G's top-r ones
        assert alignment(U[:, :r], torch.linalg.qr(B).Q) >= 0.99, name
        assert alignment(Vh[:r].T, torch.linalg.qr(A.T).Q) >= 0.99, name
        expected = -(s / (gamma * S[0])) * rank_r(G, r)
        torch.testing.assert_close(s * B @ A, expected, rtol=1e-3, atol=1e-3 * expected.abs().max().item())
        assert stats[name]["sigma1"] == pytest.approx(S[0].item(), rel=1e-3)


def test_sketch_sums_over_processes_to_the_single_process_sketch():
    """Each process sketches its share of the micro-batches with the same test matrices, so the
    sum over processes (what accelerator.reduce computes) is the one-process sketch."""
    cfg, model, _, batches = build(SKETCH + ["init.iters=3"])
    ranks = {name: 4 for name in lora_layers(model)}
    whole = sketched_gradient(model, batches, Accelerator(cpu=True), ranks, 8, seed=0)
    shares = []
    for rank in range(2):
        process = types.SimpleNamespace(process_index=rank, num_processes=2, is_main_process=rank == 0,
                                        device=torch.device("cpu"), reduce=lambda tensors, reduction: tensors)
        shares.append(sketched_gradient(model, batches, process, ranks, 8, seed=0))
    for name, sketch in whole.items():
        torch.testing.assert_close(shares[0][name].range + shares[1][name].range, sketch.range, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(shares[0][name].corange + shares[1][name].corange, sketch.corange, rtol=1e-4,
                                   atol=1e-6)


def test_sketch_run_saves_adapter_and_batches_but_no_gradient(tmp_path):
    results = run_experiment(TINY + ["init.estimator=sketch", "init.save_artifacts=true", "model.max_steps=1"],
                             tmp_path)
    assert (tmp_path / "init" / "adapter" / "adapter_config.json").exists()
    assert (tmp_path / "init" / "batches.pt").exists()
    assert not (tmp_path / "init" / "gradients.safetensors").exists()
    assert all(0 < layer["top_r_energy"] <= 1 for layer in results["init_layers"].values())


def test_negative_oversampling_is_a_config_error():
    cfg = compose_config(TINY + ["init.oversampling=-1"])
    with pytest.raises(ConfigError, match="init.oversampling"):
        validate_config(cfg)
