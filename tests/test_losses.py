import math

import pytest
import torch

import petal
from petal.config import PetalConfig, SIBConfig
from petal.losses import CLUB, MINE, SIBLoss, infonce, target_representation

from .petal_models import composite_inputs, tiny_instructblip


def test_infonce_is_high_for_aligned_pairs_and_low_for_shuffled():
    torch.manual_seed(0)
    a = torch.randn(16, 8)
    aligned = infonce(a, a * 2, temperature=0.05)
    assert aligned > math.log(16) - 0.05
    shuffled = infonce(a, a[torch.randperm(16)], temperature=0.05)
    assert shuffled < aligned - 1
    with pytest.raises(ValueError, match="same B"):
        infonce(a, a[:3])


def test_club_bound_and_fitting_loss_have_gradients():
    torch.manual_seed(0)
    club = CLUB(4)
    z = torch.randn(8, 4, requires_grad=True)
    bound, nll = club(z, z.detach() + 0.1 * torch.randn(8, 4))
    (bound + nll).backward()
    assert torch.isfinite(bound) and torch.isfinite(nll)
    assert z.grad.abs().sum() > 0 and club.mu.weight.grad.abs().sum() > 0


def test_mine_estimates_more_for_dependent_pairs_after_fitting():
    torch.manual_seed(0)
    mine = MINE(2)
    opt = torch.optim.Adam(mine.parameters(), lr=1e-2)
    z = torch.randn(64, 2)
    for _ in range(150):
        opt.zero_grad()
        (-mine(z, z + 0.05 * torch.randn_like(z))).backward()
        opt.step()
    with torch.no_grad():
        dependent = mine(z, z)
        independent = mine(z, torch.randn(64, 2))
    assert dependent > independent + 0.5


@pytest.mark.parametrize("estimator", ["infonce", "club", "mine"])
def test_sib_loss_is_minus_izy_plus_eta_izx(estimator):
    torch.manual_seed(0)
    head = SIBLoss(SIBConfig(estimator=estimator, eta=0.5, proj_dim=4), z_dim=6, x_dim=5)
    z, y, x = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 5)
    loss = head(z, y, x)
    ref = -(infonce(z, y, head.temperature) - 0.5 * head.mi_zx(z, x))
    torch.testing.assert_close(loss, ref)


def test_target_representation_ignores_padding_labels():
    emb = torch.nn.Embedding(10, 3)
    labels = torch.tensor([[1, 2, -100], [3, -100, -100]])
    rep = target_representation(emb, labels)
    torch.testing.assert_close(rep[0], emb.weight[[1, 2]].mean(0).detach())
    torch.testing.assert_close(rep[1], emb.weight[3].detach())


def test_patched_model_adds_weighted_sib_and_reports_it():
    model = tiny_instructblip("t5")
    cfg = PetalConfig(sib=SIBConfig(weight=0.5))
    petal.patch(model, cfg)
    inp = composite_inputs(model)
    out = model(**inp)
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.sib_loss)
    out.loss.backward()
    assert model.petal_sib.z_proj.weight.grad.abs().sum() > 0
    del inp["labels"]
    inp["decoder_input_ids"] = torch.zeros(2, 1, dtype=torch.long)
    assert "sib_loss" not in model(**inp)


def test_learnable_weight_and_disabled_sib():
    model = tiny_instructblip("llama")
    petal.patch(model, PetalConfig.from_preset("petal-official"))
    assert model.petal_sib.weight.requires_grad and float(model.petal_sib.weight) == 0.0
    petal.unpatch(model)
    petal.patch(model, PetalConfig.from_preset("petal-no-sib"))
    assert not hasattr(model, "petal_sib")
    out = model(**composite_inputs(model))
    assert "sib_loss" not in out
