"""Convergence, in the style of Liger-Kernel's test/convergence: the same seeded 30-step training run
of the embedded model (PETAL preset, ``petal.train.train_model`` on the synthetic data) with
``PETAL_BACKEND=reference`` or ``cpu`` and the Q-Former fast paths on or off gives the same loss at every
step and the same trained adapter as the plain-PyTorch run (reference backend, fast paths off).

Tolerances, measured on this run with data seeds 0, 1 and 2 (90 steps per configuration):

* float rounding between the configurations: the loss differs by at most 2.9e-7 relative, a trained
  adapter parameter by at most 7.5e-7;
* a 0.1 % error in the fast attention's scaling: the loss moves by 9.4e-5 relative, a parameter by 7.6e-4
  (ignoring the attention mask instead: 2.7e-2 and 2.2e-2).

``LOSS_RTOL`` and ``PARAM_ATOL`` sit between the two: 35x and 13x above the rounding, 9x and 76x below
the smallest error tried. Dropout is off (the embedded model's rates are 0): the fast paths draw their
masks differently from ``nn.Dropout``, so with dropout the curves would differ by sampling noise;
tests/test_qformer_fast.py checks that dropout falls at the same places with the same rates.
"""

from __future__ import annotations

import pytest
import torch

import petal
import petal_kernels as pk
from petal.data.collate import WordCollator
from petal.data.synthetic import SyntheticShapes
from petal.embedded import build_embedded_model
from petal.train import TrainSettings, train_model

STEPS = 30
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5
BASELINE = ("reference", False)
CONFIGURATIONS = [("reference", "auto"), ("cpu", False), ("cpu", "auto")]  # ("cpu", "auto"): the default


@pytest.fixture(scope="module")
def data():
    return SyntheticShapes("train", num_scenes=48, seed=0, image_size=32)


def train(data, backend: str, fast_paths) -> tuple[torch.Tensor, dict]:
    """The loss at every step and the trained adapter of one run."""
    if backend not in pk.available_backends("cpu"):
        pytest.skip(f"the {backend!r} backend is not built here")
    model, tokenizer = build_embedded_model(seed=0)
    petal.patch(model, petal.PetalConfig.from_preset("petal"), fast_paths=fast_paths)
    collate = WordCollator(tokenizer, model.config.num_query_tokens, data.image_size)
    settings = TrainSettings(max_steps=STEPS, batch_size=8, lr=1e-3, warmup_steps=3, seed=0, progress=False)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PETAL_BACKEND", backend)
        assert pk.backend_name(torch.device("cpu")) == backend
        result = train_model(model, data, collate, settings, log=lambda message: None)
    losses = torch.tensor([loss for _, loss in result.losses], dtype=torch.float64)
    adapter = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, adapter


@pytest.fixture(scope="module")
def baseline(data):
    return train(data, *BASELINE)


def test_the_baseline_run_learns(baseline):
    losses, _ = baseline
    assert losses.shape == (STEPS,) and bool(torch.isfinite(losses).all())
    assert losses[-5:].mean() < losses[:5].mean() - 0.2  # 5.16 -> 4.62 when measured


@pytest.mark.parametrize(("backend", "fast_paths"), CONFIGURATIONS)
def test_loss_curves_and_trained_adapters_agree(data, baseline, backend, fast_paths):
    losses, adapter = train(data, backend, fast_paths)
    ref_losses, ref_adapter = baseline
    torch.testing.assert_close(losses, ref_losses, rtol=LOSS_RTOL, atol=0)
    assert adapter.keys() == ref_adapter.keys()
    for name, value in adapter.items():
        torch.testing.assert_close(value, ref_adapter[name], rtol=0, atol=PARAM_ATOL, msg=name)
