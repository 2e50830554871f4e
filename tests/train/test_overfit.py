"""debug=overfit's verdict: passed when the mean training loss of the last steps is at most a fraction
of the first step's; on known curves, and on the preset's own run of the tiny model."""
import pytest

from conftest import compose_config, run_experiment
from lora_one.train.overfit import overfit_verdict, report_overfit

TINY_CURVE = [6.713, 6.48, 6.26, 6.09, 5.98, 5.9, 5.84, 5.8, 5.75, 5.72, 5.71, 5.70, 5.69, 5.70]  # measured, LoRA


@pytest.mark.parametrize("losses, passed", [
    (TINY_CURVE, True),                                    # last 5: 5.704 ≤ 0.9 × 6.713 = 6.042
    ([1.45, 0.9, 0.4, 0.1, 0.05, 0.04, 0.03], True),       # a pretrained model memorising
    ([6.7] * 12, False),                                   # nothing learns (lr 0, frozen adapters)
    ([2.0, 2.1, 2.3, 2.6, 3.0, 3.5], False),               # the update has the wrong sign
    ([6.0, 6.0, 6.0, 6.0, 6.0, 6.0, 5.0], False),          # one lucky step (5.0 ≤ 5.4), but the last 5 average 5.8
])
def test_the_verdict_on_known_curves(losses, passed):
    assert overfit_verdict(losses, max_ratio=0.9, last_steps=5)[0] is passed


def test_the_verdict_is_one_line_with_the_losses_and_the_criterion():
    assert overfit_verdict([2.0, 1.0, 0.5], max_ratio=0.9, last_steps=5)[1] == (
        "overfit check: passed (loss 2.0000 → 1.1667, the mean of the last 3 steps; passing needs ≤ 0.9 × the "
        "first step's)")
    assert overfit_verdict([], max_ratio=0.9, last_steps=5) == (False,
                                                                "overfit check: FAILED (no training step was taken)")


@pytest.mark.slow
def test_the_preset_overfits_the_tiny_model(tmp_path, caplog):
    caplog.set_level("INFO")
    cfg = compose_config(["model=tiny_llama", "debug=overfit"])
    results = run_experiment(["model=tiny_llama", "debug=overfit"], tmp_path)
    assert report_overfit(results["train_loss_curve"], cfg.overfit_check)
    assert "overfit check: passed" in caplog.text
