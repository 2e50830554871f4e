"""Init methods as objects: what every method must provide, that what it declares is what it does,
the streaming estimator against the exact one (and autograd), EVA against a hand-made PCA, and an
unknown direction refused with the known ones."""
import copy

import pytest
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf

from conftest import ROOT, TINY, alignment, autograd_reference, build, compose_config
from lora_one import ConfigError
from lora_one.init import METHODS, InitMethod, InitReport, init_method
from lora_one.init.estimators.streaming import streaming_spectra
from lora_one.models import lora_layers
from lora_one.models.adapters import ADAPTER

# What a method must provide, and the conf/init option that selects it.
REQUIRED = {"name": str, "moves_base": bool, "needs_batches": bool}
OPTION_OF = {"LoRA": ["init=default"], "gaussian": ["init=gaussian"], "PiSSA": ["init=pissa"], "EVA": ["init=eva"],
             "LoRA-One": ["init=gradient", "init.direction=LoRA-One"],
             "LoRA-GA": ["init=gradient", "init.direction=LoRA-GA"]}


def test_every_method_provides_what_a_run_asks_and_has_a_config():
    assert set(METHODS) == set(OPTION_OF), "a new method needs its conf/init option listed here"
    for name, method in METHODS.items():
        assert isinstance(method, InitMethod)
        for attribute, kind in REQUIRED.items():
            assert isinstance(getattr(method, attribute), kind), (name, attribute)
        cfg = compose_config(TINY + OPTION_OF[name])
        assert init_method(cfg.init) is method and method.name == name == cfg.init.method
        method.check_config(cfg.init)  # the shipped defaults are valid
        assert "init_lora_weights" in method.lora_config_kwargs(cfg.init)
        assert method.singular_directions(8) in (0, 8, 16)
        assert callable(method.initialise)
    init_files = {p.stem for p in (ROOT / "conf" / "init").glob("*.yaml")}
    assert init_files == {"default", "gaussian", "pissa", "eva", "gradient"}


def test_unknown_method_names_the_key_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"init.direction 'LoRA-Two' is unknown; use one of \(.*'LoRA-One'"):
        init_method(compose_config(TINY + ["init.direction=LoRA-Two"]).init)


@pytest.mark.parametrize("name", sorted(OPTION_OF))
def test_a_method_does_what_it_declares(name):
    """moves_base ⇔ the base weights change; an init that moves the base keeps the model's output
    (W_res + s·B₀A₀ = W); every init leaves only the adapters trainable and no weight .grad behind."""
    cfg, model, base, batches = build(OPTION_OF[name] + ["peft=qv", "peft.lora_r=4"])
    method = init_method(cfg.init)
    report = method.initialise(model, cfg.init, batches if method.needs_batches else None, Accelerator(cpu=True), False)
    assert isinstance(report, InitReport)
    weights = dict(base.named_parameters())
    moved = [n for n, layer in lora_layers(model).items() if not torch.equal(layer.get_base_layer().weight, weights[n])]
    assert bool(moved) == method.moves_base
    if method.moves_base:
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(**batches[0]).logits, base.eval()(**batches[0]).logits,
                                       rtol=1e-4, atol=1e-4)
    for param_name, p in model.named_parameters():
        assert p.grad is None and p.requires_grad == ("lora_" in param_name), param_name


# --- streaming = exact -------------------------------------------------------------------------

def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def compare_estimators(overrides: list[str], seq2seq: bool = False):
    """[(G, adapters) of `exact`, of `streaming`], each from the same fresh model and batches."""
    cfg, pristine, _, batches = build(overrides + ["init.save_artifacts=true"])
    results = []
    for estimator in ("exact", "streaming"):
        model = copy.deepcopy(pristine)  # LoRA-GA moves the base: each estimator starts from W₀
        init_cfg = OmegaConf.merge(cfg.init, {"estimator": estimator})
        report = init_method(init_cfg).initialise(model, init_cfg, batches, Accelerator(cpu=True), seq2seq)
        adapters = {n: (l.lora_B[ADAPTER].weight.detach().clone(), l.lora_A[ADAPTER].weight.detach().clone())
                    for n, l in lora_layers(model).items()}
        results.append((report.gradients, adapters))
    return results


def assert_same_init(exact, streaming):
    (exact_grads, exact_adapters), (stream_grads, stream_adapters) = exact, streaming
    assert exact_grads.keys() == stream_grads.keys()
    for name, G in exact_grads.items():
        assert relative_error(stream_grads[name], G) <= 1e-5, name
        (B, A), (B_s, A_s) = exact_adapters[name], stream_adapters[name]
        assert alignment(torch.linalg.qr(B)[0], torch.linalg.qr(B_s)[0]) >= 0.999, name
        assert alignment(torch.linalg.qr(A.T)[0], torch.linalg.qr(A_s.T)[0]) >= 0.999, name


@pytest.mark.parametrize("direction", ["LoRA-One", "LoRA-GA"])
def test_streaming_init_equals_exact_on_tiny_llama(direction):
    assert_same_init(*compare_estimators(["peft=all", "init.iters=3", f"init.direction={direction}"]))


def test_streaming_init_equals_exact_on_tiny_t5():
    assert_same_init(*compare_estimators(["model=tiny_t5", "peft=all", "init.iters=2"], seq2seq=True))


def test_streaming_completes_each_gradient_once_with_one_block_of_gradients_alive():
    """One backward, layer-major: each weight's hook fires exactly once, with the complete G of the mean
    loss (autograd on an untouched copy), and when it fires no weight outside its block holds a .grad."""
    cfg, model, base, batches = build(["peft=all", "init.iters=3"])
    weights = {n: l.get_base_layer().weight for n, l in lora_layers(model).items()}
    calls, alive_elsewhere = {}, []

    def factorise(name, G):
        calls[name] = calls.get(name, 0) + 1
        block = name.split(".")[2]  # model.layers.<i>.…
        alive_elsewhere.extend(n for n, w in weights.items() if w.grad is not None and n.split(".")[2] != block)
        return G.clone()

    spectra = streaming_spectra(model, batches, Accelerator(cpu=True), factorise, seq2seq=False)
    assert calls == {n: 1 for n in weights}
    assert alive_elsewhere == []
    base.eval()
    reference = autograd_reference(base, batches, list(weights))
    for name, G in spectra.items():
        assert relative_error(G, reference[name]) <= 1e-5, name


@pytest.mark.slow
def test_streaming_init_equals_exact_on_smollm2(shared_data):
    overrides = ["model=smollm2_135m", "dataset=gsm8k", f"dataset.path={shared_data / 'gsm8k' / 'train.jsonl'}",
                 "dataset.max_train_samples=64", "peft=all", "init.bsz=2", "init.iters=2", "init.max_length=128"]
    assert_same_init(*compare_estimators(overrides))


# --- EVA ---------------------------------------------------------------------------------------

def test_eva_rows_of_A_are_the_principal_directions_of_the_layer_inputs():
    """EVA's A₀ spans the top-r principal subspace of each layer's inputs at the labelled tokens (a
    hand-made PCA of the inputs collected by forward hooks), and B₀ = 0 leaves the model unchanged.
    EVA's PCA is incremental and randomized, stopped once successive estimates agree to `tau`, so the
    match is close, not exact (a random 4-dim subspace of these 64-dim inputs would score ≈ 0.25)."""
    cfg, model, base, batches = build(["init=eva", "peft=qv", "peft.lora_r=4", "init.iters=4"])
    layers = lora_layers(model)
    inputs = {name: [] for name in layers}
    hooks = [layer.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].detach()))
             for name, layer in layers.items()]
    with torch.no_grad(), model.disable_adapter():
        for batch in batches:
            model(**batch)
    for hook in hooks:
        hook.remove()
    init_method(cfg.init).initialise(model, cfg.init, batches, Accelerator(cpu=True), False)
    for name, layer in layers.items():
        X = torch.cat([x[(b["attention_mask"].bool() & (b["labels"] != -100))] for x, b in zip(inputs[name], batches)])
        X = (X - X.mean(0)).double()
        top = torch.linalg.svd(X, full_matrices=False)[2][:4].T
        A = layer.lora_A[ADAPTER].weight.detach()
        assert alignment(top, torch.linalg.qr(A.T.double())[0]) >= 0.95, name
        assert torch.count_nonzero(layer.lora_B[ADAPTER].weight) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(**batches[0]).logits, base.eval()(**batches[0]).logits)


def test_an_unknown_direction_names_the_directions():
    with pytest.raises(ConfigError) as refused:
        init_method(compose_config(TINY + ["init.direction=LoRA-Two"]).init)
    assert str(refused.value) == "init.direction 'LoRA-Two' is unknown; use one of ('LoRA-GA', 'LoRA-One')"
    with pytest.raises(ConfigError, match=r"^init.direction 'PiSSA' is an init of its own, not a direction"):
        init_method(compose_config(TINY + ["init.direction=PiSSA"]).init)
