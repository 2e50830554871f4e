"""The `optim` group: each optimizer's steps against a float64 NumPy reference written from the papers'
equations (random B, A and full gradients g on one tiny LoRA layer), LoRA-Pro's closed forms, bad configs,
and a tiny_llama run with each optimizer; the learning-rate warm-up never trains a step at lr 0: step i of
w warm-up steps uses lr·(i+1)/(w+1), then the schedule proper, from its peak (closed forms written out
here, not transformers' code)."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from torch import nn

from conftest import ROOT, TINY, compose_config, run_experiment, run_torchrun
from lora_one import ConfigError
from lora_one.config import validate_config
from lora_one.train import build_optimizer, build_scheduler
from lora_one.train.lora_pairs import find_lora_pairs
from lora_one.train.lora_pro import lora_pro_gradients
from lora_one.train.optim import OPTIMIZERS
from lora_one.train.scaled import scaled_gradients

M, N, R, ALPHA = 12, 10, 3, 6  # out, in, rank; s = α/r = 2
S = ALPHA / R
LR = 1e-2


# ---------------------------------------------------------------- float64 references, from the equations
def inv(x):
    return np.linalg.inv(x)


def ref_scaled(A, B, grad_A, grad_B, reg):
    """(BᵀB + δI)⁻¹∇_A, ∇_B(AAᵀ + δI)⁻¹."""
    eye = np.eye(A.shape[0])
    return inv(B.T @ B + reg * eye) @ grad_A, grad_B @ inv(A @ A.T + reg * eye)


def ref_sylvester(P, Q, C):
    """P X + X Q = C as one r²×r² system: (I ⊗ P + Qᵀ ⊗ I) vec(X) = vec(C), column-major vec."""
    r = P.shape[0]
    K = np.kron(np.eye(r), P) + np.kron(Q.T, np.eye(r))
    return np.linalg.solve(K, C.flatten(order="F")).reshape((r, r), order="F")


def ref_lora_pro(A, B, grad_A, grad_B, s, reg):
    """LoRA-Pro Thm 2.1 with X from Thm 2.2, the m×m projector formed explicitly."""
    eye = np.eye(A.shape[0])
    gram_B_inv, gram_A_inv = inv(B.T @ B + reg * eye), inv(A @ A.T + reg * eye)
    X = ref_sylvester(B.T @ B + reg * eye, A @ A.T + reg * eye, -gram_B_inv @ grad_A @ A.T / s**2)
    g_A = gram_B_inv @ grad_A / s**2 + X @ A
    g_B = (np.eye(B.shape[0]) - B @ gram_B_inv @ B.T) @ grad_B @ gram_A_inv / s**2 - B @ X
    return g_A, g_B, X


class RefAdam:
    """Bias-corrected Adam direction m̂/(√v̂ + ε) of a sequence of gradients."""

    def __init__(self, betas=(0.9, 0.999), eps=1e-8):
        (self.beta1, self.beta2), self.eps, self.t, self.m, self.v = betas, eps, 0, 0.0, 0.0

    def __call__(self, g):
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * g**2
        return (self.m / (1 - self.beta1**self.t)) / (np.sqrt(self.v / (1 - self.beta2**self.t)) + self.eps)


def ref_trajectory(name, A, B, gs, reg, lr=LR, s=S, lr_ratio=16):
    """(A, B) after each step on the full gradients gs; ∇_A = s·Bᵀg, ∇_B = s·g·Aᵀ at the current point."""
    adam_A, adam_B, adam_full = RefAdam(), RefAdam(), RefAdam()
    out = []
    for g in gs:
        grad_A, grad_B = s * B.T @ g, s * g @ A.T
        if name == "scaled_sgd":
            d_A, d_B = ref_scaled(A, B, grad_A, grad_B, reg)
        elif name == "scaled_adamw":
            scaled_A, scaled_B = ref_scaled(A, B, grad_A, grad_B, reg)
            d_A, d_B = adam_A(scaled_A), adam_B(scaled_B)
        elif name == "lora_pro":
            g_A, g_B, _ = ref_lora_pro(A, B, grad_A, grad_B, s, reg)
            G = adam_full(s * (B @ g_A + g_B @ A))
            d_A, d_B, _ = ref_lora_pro(A, B, s * B.T @ G, s * G @ A.T, s, reg)
        elif name == "loraplus":
            d_A, d_B = adam_A(grad_A), lr_ratio * adam_B(grad_B)
        A, B = A - lr * d_A, B - lr * d_B
        out.append((A, B))
    return out


# ---------------------------------------------------------------- one tiny LoRA layer
def random_factors(seed, m=M, n=N, r=R):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((r, n)) / np.sqrt(n), rng.standard_normal((m, r)) / np.sqrt(r), rng


def tiny_lora_layer(A, B, dtype=torch.float32):
    model = get_peft_model(nn.Sequential(nn.Linear(N, M)), LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["0"]))
    model.to(dtype)
    [pair] = find_lora_pairs(model)
    with torch.no_grad():
        pair.A.copy_(torch.from_numpy(A))
        pair.B.copy_(torch.from_numpy(B))
    return model, pair


def make_optimizer(model, name, *overrides, lr=LR):
    cfg = compose_config([f"optim={name}", *overrides])
    return build_optimizer(model, cfg.optim, OmegaConf.create({"learning_rate": lr, "weight_decay": 0.0}))


def run_steps(name, A, B, gs, *overrides):
    """The optimizer built from conf/optim/<name>.yaml, stepped with the LoRA gradients of each g."""
    model, pair = tiny_lora_layer(A, B)
    optimizer = make_optimizer(model, name, *overrides)
    out = []
    for g in gs:
        g = torch.from_numpy(g).float()
        pair.A.grad, pair.B.grad = S * pair.B.detach().T @ g, S * g @ pair.A.detach().T
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append((pair.A.detach().double().numpy(), pair.B.detach().double().numpy()))
    return out


@pytest.mark.parametrize("name", ["scaled_sgd", "scaled_adamw", "lora_pro", "loraplus"])
def test_steps_match_float64_reference(name):
    A, B, rng = random_factors(0)
    gs = [rng.standard_normal((M, N)) for _ in range(3)]
    reg = compose_config([f"optim={name}"]).optim.get("prec_reg", 0.0)
    for (A_t, B_t), (A_ref, B_ref) in zip(run_steps(name, A, B, gs), ref_trajectory(name, A, B, gs, reg)):
        np.testing.assert_allclose(A_t, A_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(B_t, B_ref, rtol=1e-4, atol=1e-5)
    assert not np.allclose(A_t, A) and not np.allclose(B_t, B)


@pytest.mark.parametrize("name", ["scaled_sgd", "scaled_adamw", "lora_pro"])
def test_damping_delta_enters_as_in_the_equations(name):
    """With B nearly rank-deficient, δ = 0.05 vs δ = 0 changes the step, each as its reference says."""
    A, B, rng = random_factors(1)
    B[:, 0] *= 1e-2  # BᵀB has an eigenvalue ~1e-4 ≪ δ
    gs = [rng.standard_normal((M, N)) for _ in range(2)]
    steps = {}
    for reg in (0.0, 0.05):
        [*_, (A_t, B_t)] = run_steps(name, A, B, gs, f"optim.prec_reg={reg}")
        [*_, (A_ref, B_ref)] = ref_trajectory(name, A, B, gs, reg)
        np.testing.assert_allclose(A_t, A_ref, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(B_t, B_ref, rtol=1e-3, atol=1e-5)
        steps[reg] = A_t - A
    assert np.linalg.norm(steps[0.0] - steps[0.05]) > 0.1 * np.linalg.norm(steps[0.0])


def test_loraplus_puts_b_at_ratio_times_a_learning_rate():
    model, _ = tiny_lora_layer(*random_factors(2)[:2])
    groups = make_optimizer(model, "loraplus", "optim.lr_ratio=4").param_groups
    lrs = {tuple(param.shape): group["lr"] for group in groups for param in group["params"]}
    assert lrs == {(R, N): LR, (M, R): 4 * LR}


def test_sylvester_solution_and_its_residual():
    """X solves BᵀB·X + X·AAᵀ = −(1/s²)(BᵀB)⁻¹∇_A Aᵀ (fp32, δ = 0) and equals the Kronecker solution."""
    A, B, rng = random_factors(3)
    g = rng.standard_normal((M, N))
    grad_A, grad_B = S * B.T @ g, S * g @ A.T
    to32 = lambda x: torch.from_numpy(x).float()  # noqa: E731
    g_A, g_B, X = (t.double().numpy() for t in lora_pro_gradients(*map(to32, (A, B, grad_A, grad_B)), S, 0.0))
    rhs = -inv(B.T @ B) @ grad_A @ A.T / S**2
    residual = B.T @ B @ X + X @ A @ A.T - rhs
    assert np.linalg.norm(residual) < 1e-5 * np.linalg.norm(rhs)
    X_ref = ref_lora_pro(A, B, grad_A, grad_B, S, 0.0)[2]
    np.testing.assert_allclose(X, X_ref, rtol=1e-4, atol=1e-6)
    # Thm 2.2: X minimises ‖g^A − ∇_A‖² + ‖g^B − ∇_B‖² over the family g^A + Y·A, g^B − B·Y
    distance = lambda Y: np.sum((g_A + Y @ A - grad_A) ** 2) + np.sum((g_B - B @ Y - grad_B) ** 2)  # noqa: E731
    for _ in range(5):
        assert distance(np.zeros((R, R))) < distance(1e-2 * rng.standard_normal((R, R)))


@pytest.mark.parametrize("seed,shape", [(4, (12, 10, 3)), (5, (30, 20, 4)), (6, (16, 40, 8))])
def test_lora_pro_equivalent_gradient_is_closer_to_g_than_lora(seed, shape):
    """s(B·g^A + g^B·A) is g's projection P_B·g + (I − P_B)·g·P_A, hence closer to g (Frobenius) than plain
    LoRA's equivalent gradient s(B·∇_A + ∇_B·A) even at its best rescaling c."""
    m, n, r = shape
    A, B, rng = random_factors(seed, m, n, r)
    g = rng.standard_normal((m, n))
    grad_A, grad_B = S * B.T @ g, S * g @ A.T
    g_A, g_B, _ = (t.double().numpy() for t in lora_pro_gradients(
        *(torch.from_numpy(x).float() for x in (A, B, grad_A, grad_B)), S, 0.0))
    pro = S * (B @ g_A + g_B @ A)
    P_B, P_A = B @ inv(B.T @ B) @ B.T, A.T @ inv(A @ A.T) @ A
    np.testing.assert_allclose(pro, P_B @ g + (np.eye(m) - P_B) @ g @ P_A, rtol=1e-4, atol=1e-5)
    lora = S * (B @ grad_A + grad_B @ A)
    best_c = np.sum(lora * g) / np.sum(lora * lora)
    assert np.linalg.norm(pro - g) < np.linalg.norm(best_c * lora - g) < np.linalg.norm(g)


def test_bf16_factors_are_solved_in_fp32():
    """bf16 factors/gradients: the math runs in fp32 and matches the fp64 reference of the same (rounded)
    inputs to fp32 accuracy, far tighter than bf16 arithmetic could."""
    A, B, rng = random_factors(7)
    g = rng.standard_normal((M, N))
    bf16 = [torch.from_numpy(x).bfloat16() for x in (A, B, S * B.T @ g, S * g @ A.T)]
    A, B, grad_A, grad_B = (t.double().numpy() for t in bf16)
    for ours, ref in ((scaled_gradients(*bf16, 1e-6), ref_scaled(A, B, grad_A, grad_B, 1e-6)),
                      (lora_pro_gradients(*bf16, S, 1e-6)[:2], ref_lora_pro(A, B, grad_A, grad_B, S, 1e-6)[:2])):
        for t, r in zip(ours, ref):
            assert t.dtype == torch.float32
            np.testing.assert_allclose(t.double().numpy(), r, rtol=1e-4, atol=1e-5)
    model, pair = tiny_lora_layer(*random_factors(7)[:2], dtype=torch.bfloat16)
    before = pair.A.detach().clone()
    pair.A.grad, pair.B.grad = bf16[2], bf16[3]
    make_optimizer(model, "lora_pro").step()
    assert pair.A.dtype == torch.bfloat16 and torch.isfinite(pair.A).all() and not torch.equal(pair.A, before)


def test_non_lora_parameters_fall_back_to_adamw():
    """A trainable non-LoRA parameter moves by AdamW's first step, −lr·sign(grad), under scaled_sgd."""
    model, pair = tiny_lora_layer(*random_factors(8)[:2])
    bias = model.base_model.model[0].base_layer.bias
    bias.requires_grad_(True)
    optimizer = make_optimizer(model, "scaled_sgd")
    before, grad = bias.detach().clone(), torch.randn_like(bias)
    bias.grad = grad.clone()
    pair.A.grad, pair.B.grad = torch.randn_like(pair.A), torch.randn_like(pair.B)
    optimizer.step()
    torch.testing.assert_close(bias.detach(), before - LR * grad.sign(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("optim.name=adafactor",
     "optim 'adafactor' is unknown; use one of ('adamw', 'scaled_adamw', 'scaled_sgd', 'lora_pro', 'loraplus')"),
    ("optim.prec_reg=-1", "optim.prec_reg must be ≥ 0 (got -1)"),
])
def test_bad_optim_config_names_the_culprit(override, message):
    with pytest.raises(ConfigError) as refused:
        validate_config(compose_config(["model=tiny_llama", "optim=scaled_adamw", override]))
    assert str(refused.value) == message


def test_building_an_unknown_optimizer_names_it_too():
    model, _ = tiny_lora_layer(*random_factors(9)[:2])
    with pytest.raises(ConfigError, match="^optim 'adafactor' is unknown"):
        make_optimizer(model, "scaled_adamw", "optim.name=adafactor")


def test_every_optim_option_has_its_optimizer():
    assert set(OPTIMIZERS) == {path.stem for path in (ROOT / "conf" / "optim").glob("*.yaml")}


def test_pair_optimizer_without_lora_adapters_is_a_config_error():
    with pytest.raises(ConfigError, match="needs trainable LoRA adapters"):
        make_optimizer(nn.Linear(3, 2), "lora_pro")


@pytest.mark.parametrize("name", ["adamw", "scaled_adamw", "scaled_sgd", "lora_pro", "loraplus"])
def test_tiny_llama_run_lowers_the_loss(tmp_path, name):
    """LoRA-One init then 10 steps (2 accumulated micro-batches each, clipped) with each optimizer."""
    results = run_experiment(TINY + [f"optim={name}"], tmp_path)
    assert results["steps"] == 10
    assert results["eval_loss"] < results["eval_loss_after_init"] - 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["scaled_adamw", "lora_pro"])
def test_two_processes_take_the_same_steps_as_one(tmp_path, name):
    """DDP (torchrun, 2 CPU processes × 1 micro-batch) vs 1 process × 2 accumulated micro-batches: the same
    all-reduced gradients, hence the same pair steps and the same loss after them."""
    run = TINY + [f"optim={name}", "model.max_steps=3", "model.real_batch_size=8"]
    one = run_experiment(run, tmp_path / "one")
    two = run_torchrun(run, tmp_path / "two")
    assert two["num_processes"] == 2
    np.testing.assert_allclose(two["train_loss_curve"], one["train_loss_curve"], rtol=1e-4)


PEAK_LR = 2e-4


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return PEAK_LR * (step + 1) / (warmup + 1)
    return PEAK_LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def linear_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return PEAK_LR * (step + 1) / (warmup + 1)
    return PEAK_LR * (total - step) / (total - warmup)


def scheduled_lrs(scheduler: str, warmup: float, total: int) -> list[float]:
    """The lr of each of `total` optimizer steps, read as the training loop reads it."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=PEAK_LR)
    schedule = build_scheduler(optimizer, OmegaConf.create({"scheduler": scheduler, "warmup": warmup}), total)
    lrs = []
    for _ in range(total):
        lrs.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize("scheduler, closed_form", [("cosine", cosine_with_warmup), ("linear", linear_with_warmup)])
@pytest.mark.parametrize("warmup, total, warmup_steps", [(0.03, 20, 1), (0.25, 12, 3), (0.0, 6, 0)])
def test_the_warm_up_starts_above_zero_and_follows_the_closed_form(scheduler, closed_form, warmup, total, warmup_steps):
    lrs = scheduled_lrs(scheduler, warmup, total)
    assert lrs == pytest.approx([closed_form(i, warmup_steps, total) for i in range(total)], rel=1e-12, abs=1e-18)
    assert lrs[0] > 0 and (warmup_steps == 0 or lrs[warmup_steps] == pytest.approx(PEAK_LR))  # peak on step w


def test_a_constant_schedule_ignores_the_warm_up_as_before():
    assert scheduled_lrs("constant", 0.5, 4) == [PEAK_LR] * 4


def test_a_run_records_the_warmed_up_curve(tmp_path):
    """SmolLM2's recipe (cosine, 3 % warm-up) on the tiny model: the first step trains at lr/2."""
    results = run_experiment(TINY + ["model.max_steps=5", "model.scheduler=cosine", "model.warmup=0.03",
                                     f"model.learning_rate={PEAK_LR}", "checkpoint.every_n_steps=0"], tmp_path)
    assert results["lr_curve"] == pytest.approx([cosine_with_warmup(i, 1, 5) for i in range(5)], rel=1e-12)
    assert results["lr_curve"][0] == pytest.approx(PEAK_LR / 2)
