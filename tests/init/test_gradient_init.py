"""The one-step full-gradient init against independent references: a plain autograd gradient of the
mean loss, the closed-form rank-r truncation, and the model's unchanged output under LoRA-GA; a resumed
LoRA-GA run rebuilds its base from the initial adapter."""
import pytest
import torch
from accelerate import Accelerator

from conftest import TINY, autograd_reference, build, compose_config, gradient_init, rank_r
from lora_one.data import encode_rows, load_splits, make_batches
from lora_one.init import METHODS, init_method, redo_base_offset, save_initial_adapter
from lora_one.init.lora_ga import lora_ga_factors
from lora_one.init.lora_one import lora_one_factors
from lora_one.init.spectral import scale_factors, top_singular_triplets
from lora_one.models import add_lora_adapters, load_model, load_tokenizer, lora_layers
from lora_one.models.adapters import ADAPTER


@pytest.fixture(scope="module")
def lora_one_run():
    # the default streaming estimator, keeping a copy of each G as it is completed
    cfg, model, base, batches = build(["peft=all", "init.iters=3", "init.save_artifacts=true"])
    grads, stats = gradient_init(model, cfg.init, batches)
    return cfg, model, base, batches, grads, stats


def test_gradient_equals_autograd_of_mean_loss(lora_one_run):
    cfg, model, base, batches, grads, _ = lora_one_run
    base.eval()
    reference = autograd_reference(base, batches, list(grads))
    assert len(grads) == 2 * 7  # 2 layers × (q,k,v,o,gate,up,down)
    for name, G in grads.items():
        torch.testing.assert_close(G, reference[name], rtol=1e-4, atol=1e-6)


def test_no_weight_grad_left_and_only_adapters_trainable(lora_one_run):
    _, model, *_ = lora_one_run
    for name, p in model.named_parameters():
        assert p.grad is None, name
        assert p.requires_grad == ("lora_" in name), name


def test_lora_one_adapter_is_scaled_rank_r_gradient_step(lora_one_run):
    cfg, model, _, _, grads, stats = lora_one_run
    gamma = cfg.init.stable_gamma
    for name, layer in lora_layers(model).items():
        s, r = layer.scaling[ADAPTER], layer.r[ADAPTER]
        B, A = layer.lora_B[ADAPTER].weight.double(), layer.lora_A[ADAPTER].weight.double()
        sigma1 = torch.linalg.matrix_norm(grads[name].double(), ord=2)
        expected = -(s / (gamma * sigma1)) * rank_r(grads[name], r)
        torch.testing.assert_close(s * B @ A, expected, rtol=1e-3, atol=1e-5 * expected.abs().max().item())
        assert stats[name]["sigma1"] == pytest.approx(sigma1.item(), rel=1e-4)


def test_lora_one_keeps_base_weights(lora_one_run):
    _, model, base, *_ = lora_one_run
    weights = dict(base.named_parameters())
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.get_base_layer().weight, weights[name], rtol=0, atol=0)


def test_lora_ga_leaves_model_output_unchanged():
    cfg, model, base, batches = build(["peft=qv", "init.direction=LoRA-GA", "peft.lora_r=4"])
    with torch.no_grad():
        before = base.eval()(**batches[0]).logits
    gradient_init(model, cfg.init, batches)
    with torch.no_grad():
        after = model.eval()(**batches[0]).logits
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # ...while the adapter itself is far from zero: B₀ = U[:, r:2r]·m^{1/4}/√γ has orthogonal columns.
    layer = next(iter(lora_layers(model).values()))
    B = layer.lora_B[ADAPTER].weight
    m, gamma = B.shape[0], cfg.init.stable_gamma
    torch.testing.assert_close(B.T @ B, torch.eye(4) * m**0.5 / gamma, rtol=1e-4, atol=1e-5)


def test_factor_closed_forms_on_a_random_matrix():
    torch.manual_seed(0)
    G = torch.randn(12, 9)  # the init works in fp32
    r, s, gamma = 3, 2.0, 16.0
    U, S, Vh = top_singular_triplets(G, 2 * r)
    # LoRA-One, unit scale: B A = −[G]_r / σ₁; gd scale divides each factor by s.
    B, A = lora_one_factors(U, S, Vh, r)
    torch.testing.assert_close((B @ A).double(), -rank_r(G, r) / S[0].item(), rtol=1e-4, atol=1e-5)
    Bg, Ag = scale_factors(B, A, "gd", gamma**-0.5, s)
    torch.testing.assert_close((Bg @ Ag).double(), -rank_r(G, r) / (S[0].item() * s**2), rtol=1e-4, atol=1e-5)
    Bs, As = scale_factors(B, A, "stable", gamma**-0.5, s)
    torch.testing.assert_close((Bs @ As).double(), -rank_r(G, r) / (S[0].item() * gamma), rtol=1e-4, atol=1e-5)
    # LoRA-GA: A₀ spans the top-r right singular vectors, B₀ the left ones r..2r.
    B, A = lora_ga_factors(U, S, Vh, r)
    full_U, _, full_Vh = torch.linalg.svd(G)
    torch.testing.assert_close((A @ full_Vh[:r].T).abs(), torch.eye(r), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((full_U[:, r : 2 * r].T @ B).abs(), torch.eye(r), rtol=1e-4, atol=1e-5)
    # the lowrank path agrees with the full SVD on the subspace products
    Ul, Sl, Vhl = top_singular_triplets(G, r, "lowrank", q=9, niter=8)
    torch.testing.assert_close((Ul * Sl) @ Vhl, rank_r(G, r).float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["full", "lowrank"])
def test_singular_triplets_hold_no_more_memory_than_their_size(method):
    """The streaming init keeps (U_k, S_k, V_k) per layer: a view into the full factorisation would keep
    a G-sized Vh alive per layer, as much memory as holding every G."""
    G = torch.randn(60, 90)
    for factor in top_singular_triplets(G, 4, method, q=12, niter=2):
        assert factor.untyped_storage().nbytes() == factor.numel() * factor.element_size()


def test_lora_ga_base_offset_is_redone_from_the_initial_adapter(tmp_path):
    """A resumed LoRA-GA run rebuilds W₀ − s·B₀A₀ from the saved initial adapter, bit for bit."""
    cfg = compose_config(TINY + ["init.direction=LoRA-GA", "peft=qv", "peft.lora_r=4"])
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    examples, _ = load_splits(cfg.dataset, cfg.seed)
    batches = make_batches(tokenizer, encode_rows(tokenizer, examples[:16], 128, False), cfg.init.bsz, cfg.init.iters)

    def base():
        torch.manual_seed(0)
        return load_model(cfg.model, tokenizer, cfg.cache_dir)

    method = init_method(cfg.init)
    initialised = add_lora_adapters(base(), cfg.peft, "causal", method, cfg.init)
    method.initialise(initialised, cfg.init, batches, Accelerator(cpu=True), seq2seq=False)
    save_initial_adapter(initialised, str(tmp_path / "adapter"))
    rebuilt = add_lora_adapters(base(), cfg.peft, "causal", METHODS["LoRA"], cfg.init)
    redo_base_offset(rebuilt, str(tmp_path / "adapter"))
    expected, got = initialised.state_dict(), rebuilt.state_dict()
    moved = [k for k in expected if "q_proj.base_layer.weight" in k]
    base_name = moved[0].replace("base_model.model.", "").replace("base_layer.", "") if moved else None
    assert moved and not torch.equal(expected[moved[0]], base().state_dict()[base_name])
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
