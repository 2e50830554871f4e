"""Every gradient estimator in ESTIMATORS, through the one entry point `gradient_spectra`, against the SVD of
a plain autograd gradient on tiny_llama, where G's rank is below the sketch size: the estimators that form G
must recover its top-r triplets to float precision, `sketch` its subspaces within its stated tolerance."""
import pytest
import torch
from accelerate import Accelerator
from omegaconf import OmegaConf
from test_sketch import SKETCH, short_batches

from conftest import TINY, alignment, autograd_reference, build, compose_config
from lora_one import ConfigError
from lora_one.init import init_method
from lora_one.init.estimators import ESTIMATORS
from lora_one.init.estimators.streaming import svd_owners
from lora_one.init.gradient_init import gradient_spectra
from lora_one.models import lora_layers

RANK = 4
# The least mean cosine of the principal angles to G's top-r subspaces an estimator must reach, and whether it
# returns G itself (and its exact ‖G‖²_F). A new estimator must state its own.
EXPECTED = {"streaming": {"alignment": 0.9999, "forms_G": True},
            "exact": {"alignment": 0.9999, "forms_G": True},
            "sketch": {"alignment": 0.99, "forms_G": False}}


@pytest.fixture(scope="module")
def setting():
    """tiny_llama, two short micro-batches (rank G ≤ 10 < r + oversampling) and G per layer by autograd."""
    cfg, model, base, batches = build(SKETCH)
    batches = short_batches(batches)
    base.eval()
    return cfg, model, batches, autograd_reference(base, batches, list(lora_layers(model)))


def test_every_estimator_states_what_it_must_reach():
    assert set(EXPECTED) == set(ESTIMATORS)


@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
def test_estimator_recovers_the_top_r_triplets_of_the_autograd_gradient(setting, estimator):
    cfg, model, batches, reference = setting
    init_cfg = OmegaConf.merge(cfg.init, {"estimator": estimator, "save_artifacts": True})
    needed = {name: RANK for name in reference}
    grads, spectra = gradient_spectra(model, init_cfg, batches, Accelerator(cpu=True), needed, seq2seq=False)
    expected = EXPECTED[estimator]
    assert (grads is not None) == expected["forms_G"]
    assert spectra.keys() == reference.keys()
    for name, G in reference.items():
        U_ref, S_ref, Vh_ref = torch.linalg.svd(G.double(), full_matrices=False)
        U, S, Vh, frobenius_sq = spectra[name]
        assert U.shape == (G.shape[0], RANK) and S.shape == (RANK,) and Vh.shape == (RANK, G.shape[1]), name
        assert alignment(U_ref[:, :RANK], U) >= expected["alignment"], name
        assert alignment(Vh_ref[:RANK].T, Vh.T) >= expected["alignment"], name
        torch.testing.assert_close(S.double(), S_ref[:RANK], rtol=1e-3, atol=0)
        if expected["forms_G"]:
            torch.testing.assert_close(grads[name], G, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(S.double(), S_ref[:RANK], rtol=1e-5, atol=0)
            assert frobenius_sq == pytest.approx(G.double().square().sum().item(), rel=1e-5), name


def test_an_unknown_estimator_names_the_known_ones():
    cfg = compose_config(TINY + ["init.estimator=guess"])
    with pytest.raises(ConfigError) as refused:
        init_method(cfg.init).check_config(cfg.init)
    assert str(refused.value) == "init.estimator 'guess' is unknown; use one of ('streaming', 'exact', 'sketch')"


def test_svd_owners_divide_the_factorisations_by_their_cost():
    """By hand, 2 processes, costs m·n·min(m, n): a 64 → process 0; b 32 → 1; c 27 → 1 (loads 64, 59); d 8 → 1 (59 <
    64); one process owns everything."""
    shapes = {"d": (2, 2), "c": (3, 3), "b": (2, 8), "a": (4, 4)}
    assert svd_owners(shapes, 2) == {"a": 0, "b": 1, "c": 1, "d": 1}
    assert set(svd_owners(shapes, 1).values()) == {0}
