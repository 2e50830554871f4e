"""init.stable_gamma=auto: the line search picks the γ whose model has the lowest loss on batches G
never saw (checked against a brute-force init at every γ of the grid), beats a bad fixed γ on the
run's held-out set, and is refused where γ cannot change the initial loss (LoRA-GA)."""
import copy

import pytest
import torch
from accelerate import Accelerator

from conftest import TINY, autograd_reference, compose_config, run_experiment
from lora_one import ConfigError
from lora_one.config import check_config_keys, validate_config
from lora_one.data import encode_rows, load_splits, make_batches
from lora_one.init import init_method
from lora_one.init.gamma_search import gamma_grid
from lora_one.models import add_lora_adapters, load_model, load_tokenizer, lora_layers
from lora_one.models.adapters import ADAPTER

AUTO = ["peft=qv", "peft.lora_r=4", "init.stable_gamma=auto", "init.gamma_search.points=6", "init.gamma_search.min=0.5",
        "init.gamma_search.max=512", "init.gamma_search.batches=2", "init.save_artifacts=true"]


def setup(overrides):
    """Config, tokenizer, the init batches run_exp would make (G's, then the search's), a base-model
    factory (same weights each call) and the eval rows."""
    cfg = compose_config(TINY + overrides)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_dir)
    train_rows, eval_rows = load_splits(cfg.dataset, cfg.seed)
    encoded = encode_rows(tokenizer, train_rows, cfg.init.max_length, False)
    batches = make_batches(tokenizer, encoded, cfg.init.bsz, init_method(cfg.init).batch_count(cfg.init))

    def base():
        torch.manual_seed(0)
        return load_model(cfg.model, tokenizer, cfg.cache_dir)

    return cfg, tokenizer, batches, base, make_batches(tokenizer, encode_rows(tokenizer, eval_rows, 128, False), 8, 2)


def initialise(cfg, base, batches):
    model = add_lora_adapters(base, cfg.peft, "causal", init_method(cfg.init), cfg.init)
    report = init_method(cfg.init).initialise(model, cfg.init, batches, Accelerator(cpu=True), False)
    return model.eval(), report


@torch.no_grad()
def mean_loss(model, batches) -> float:
    return sum(model(**b).loss.item() for b in batches) / len(batches)


@pytest.fixture(scope="module")
def searched():
    cfg, tokenizer, batches, base, eval_batches = setup(AUTO)
    model, report = initialise(cfg, base(), batches)
    return cfg, batches, base, eval_batches, model, report


def test_auto_picks_the_grid_point_with_the_lowest_held_out_loss(searched):
    """Brute force: a full fixed-γ init at every γ of the grid, its loss on the search batches by hand."""
    cfg, batches, base, _, model, report = searched
    search = report.extra["gamma_search"]
    assert search["gamma_grid"] == pytest.approx([0.5, 0.5 * 4.0, 0.5 * 16, 0.5 * 64, 0.5 * 256, 512])  # ×4 steps
    assert search["search_batches"] == 2 and len(batches) == cfg.init.iters + 2
    held_out = batches[cfg.init.iters:]
    brute = []
    for gamma in search["gamma_grid"]:
        fixed_cfg = copy.deepcopy(cfg)
        fixed_cfg.init.stable_gamma = float(gamma)
        fixed, _ = initialise(fixed_cfg, base(), batches[: cfg.init.iters])
        brute.append(mean_loss(fixed, held_out))
        if gamma == search["chosen_gamma"]:  # the written adapter is the fixed-γ init at the chosen γ
            for name, layer in lora_layers(model).items():
                same = lora_layers(fixed)[name]
                torch.testing.assert_close(layer.lora_B[ADAPTER].weight, same.lora_B[ADAPTER].weight)
                torch.testing.assert_close(layer.lora_A[ADAPTER].weight, same.lora_A[ADAPTER].weight)
    assert search["held_out_loss"] == pytest.approx(brute, rel=1e-5)
    assert search["chosen_gamma"] == search["gamma_grid"][brute.index(min(brute))]
    assert max(brute) - min(brute) > 1e-3  # γ does matter here, so the choice is a real one
    s = cfg.peft.lora_alpha / cfg.peft.lora_r
    assert search["chosen_eta"] == pytest.approx(s / search["chosen_gamma"])


def test_auto_beats_a_bad_fixed_gamma_on_the_runs_held_out_set(searched):
    """On the eval rows (neither G's nor the search's), auto is better than a step 64× too long or
    too short than its choice."""
    cfg, batches, base, eval_batches, model, report = searched
    chosen = report.extra["gamma_search"]["chosen_gamma"]
    auto_loss = mean_loss(model, eval_batches)
    for bad in (chosen / 64, chosen * 64):
        fixed_cfg = copy.deepcopy(cfg)
        fixed_cfg.init.stable_gamma = bad
        fixed, _ = initialise(fixed_cfg, base(), batches[: cfg.init.iters])
        assert auto_loss < mean_loss(fixed, eval_batches), bad


def test_the_search_batches_are_disjoint_from_gs(searched):
    """G is the gradient of the first `iters` micro-batches only (autograd on them alone), and the
    search batches hold other examples."""
    cfg, batches, base, _, _, report = searched
    fit, held_out = batches[: cfg.init.iters], batches[cfg.init.iters:]
    reference = autograd_reference(base().eval(), fit, list(report.gradients))
    for name, G in report.gradients.items():
        torch.testing.assert_close(G, reference[name], rtol=1e-4, atol=1e-6)
    rows = {tuple(r[m.bool()].tolist()) for b in fit for r, m in zip(b["input_ids"], b["attention_mask"])}
    assert not any(tuple(r[m.bool()].tolist()) in rows
                   for b in held_out for r, m in zip(b["input_ids"], b["attention_mask"]))


def test_auto_is_refused_where_gamma_cannot_change_the_initial_loss():
    for overrides, culprit in ((["init.direction=LoRA-GA"], "LoRA-GA"), (["init.scale=gd"], "scale=gd")):
        cfg = compose_config(TINY + ["init.stable_gamma=auto", *overrides])
        with pytest.raises(ConfigError, match=f"init.stable_gamma=auto needs .*{culprit}"):
            validate_config(cfg)
    check_config_keys(compose_config(TINY + ["init.stable_gamma=auto"]), TINY + ["init.stable_gamma=auto"])  # its word
    with pytest.raises(ConfigError, match="init.stable_gamma must be a number"):
        validate_config(compose_config(TINY + ["init.stable_gamma=big"]))
    with pytest.raises(ConfigError, match="init.gamma_search needs 0 < min < max"):
        validate_config(compose_config(TINY + ["init.stable_gamma=auto", "init.gamma_search.min=8",
                                               "init.gamma_search.max=4"]))
    assert gamma_grid(compose_config(TINY).init.gamma_search)[-1] == pytest.approx(4096)


@pytest.mark.slow
def test_results_json_records_the_search(tmp_path):
    results = run_experiment(TINY + AUTO + ["model.max_steps=0", "wandb.mode=disabled"], tmp_path)
    search = results["gamma_search"]
    assert len(search["gamma_grid"]) == len(search["held_out_loss"]) == 6
    assert search["chosen_gamma"] in search["gamma_grid"]
