"""Score-based Information Bottleneck loss (DESIGN §1.3): ``L_SIB = -(I(Z;Y) - η I(Z;X))``.

* ``Z``: mean Q-Former query output, ``(B, d_q)``.
* ``Y``: target text representation, the mean of the frozen LM input embeddings of the label tokens
  (``-100`` ignored), ``(B, d_lm)``. ``I(Z;Y)`` is the InfoNCE lower bound on products of L2-normalised
  features, with Z mapped into the LM space by the model's own (frozen or trained) ``language_projection``.
* ``X``: mean visual features, ``(B, d_v)``. ``I(Z;X)`` by a pluggable estimator on learned
  ``proj_dim``-wide projections of Z and X: ``infonce`` (bound on cosine scores), ``club`` (the CLUB
  upper bound with a Gaussian q(x|z), plus its own log-likelihood fitting loss), ``mine``
  (Donsker-Varadhan with a statistics network; marginals by rolling the batch).

A patched model called with ``labels`` adds ``weight · L_SIB`` to its loss and reports ``sib_loss``
(and ``lm_loss``) on the output. Under distributed training the in-batch negatives come from every
process's batch (features gathered with gradients), so N processes compute the global batch's loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ESTIMATORS, SIBConfig
from .distributed import gather_with_grad


def infonce(a: Tensor, b: Tensor, temperature: float = 0.1) -> Tensor:
    """InfoNCE lower bound on I(A;B) from a batch of pairs: ``log B - CE(cos(a_i, b_j)/τ, i)``."""
    _pairs("infonce", a, b)
    scores = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return math.log(a.shape[0]) - F.cross_entropy(scores.float(), labels)


def _pairs(name: str, a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"{name} expects two (B, d) tensors with the same B, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


class CLUB(nn.Module):
    """CLUB upper bound on I(Z;X) with a Gaussian q(x|z) = N(mu(z), exp(logvar(z)))."""

    def __init__(self, dim: int):
        super().__init__()
        self.mu = nn.Linear(dim, dim)
        self.logvar = nn.Linear(dim, dim)

    def forward(self, z: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(MI upper bound, q's negative log-likelihood to train it on detached inputs)."""
        _pairs("club", z, x)
        mu, logvar = self.mu(z), self.logvar(z).clamp(-10, 10)
        positive = -((mu - x) ** 2) / (2 * logvar.exp())
        negative = -((mu[:, None, :] - x[None, :, :]) ** 2).mean(dim=1) / (2 * logvar.exp())
        bound = (positive.sum(-1) - negative.sum(-1)).mean()
        mu_d, logvar_d = self.mu(z.detach()), self.logvar(z.detach()).clamp(-10, 10)
        nll = (((mu_d - x.detach()) ** 2) / logvar_d.exp() + logvar_d).sum(-1).mean() / 2
        return bound, nll


class MINE(nn.Module):
    """Donsker-Varadhan bound ``E_joint[T] - log E_marginal[e^T]`` with T an MLP on [z; x]."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        _pairs("mine", z, x)
        joint = self.net(torch.cat([z, x], dim=-1)).mean()
        marginal = self.net(torch.cat([z, x.roll(1, dims=0)], dim=-1)).squeeze(-1)
        return joint - (torch.logsumexp(marginal, dim=0) - math.log(marginal.shape[0]))


class SIBLoss(nn.Module):
    """The SIB head: projections of Z and X for the I(Z;X) estimator, and the loss weight."""

    def __init__(self, cfg: SIBConfig, z_dim: int, x_dim: int):
        super().__init__()
        if cfg.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {cfg.estimator!r}")
        self.eta, self.estimator, self.temperature = cfg.eta, cfg.estimator, cfg.temperature
        self.z_proj = nn.Linear(z_dim, cfg.proj_dim, bias=False)
        self.x_proj = nn.Linear(x_dim, cfg.proj_dim, bias=False)
        self.club = CLUB(cfg.proj_dim) if cfg.estimator == "club" else None
        self.mine = MINE(cfg.proj_dim) if cfg.estimator == "mine" else None
        if cfg.learnable_weight:
            self.weight = nn.Parameter(torch.tensor(float(cfg.weight)))
        else:
            self.register_buffer("weight", torch.tensor(float(cfg.weight)), persistent=False)

    def mi_zx(self, z: Tensor, x: Tensor) -> Tensor:
        zp, xp = self.z_proj(z), self.x_proj(x)
        if self.estimator == "infonce":
            return infonce(zp, xp, self.temperature)
        if self.estimator == "club":
            bound, nll = self.club(zp, xp)
            return bound + nll
        return self.mine(zp, xp)

    def forward(self, z: Tensor, y: Tensor, x: Tensor, z_in_y_space: Optional[Tensor] = None) -> Tensor:
        """``-(I(Z;Y) - η I(Z;X))``; ``z_in_y_space`` is Z mapped to Y's width (else Z itself)."""
        zy = z if z_in_y_space is None else z_in_y_space
        return -(infonce(zy, y, self.temperature) - self.eta * self.mi_zx(z, x))


# ---------------------------------------------------------------------- model integration


def target_representation(embedding: nn.Module, labels: Tensor) -> Tensor:
    """Mean input embedding of the valid label tokens of each example, ``(B, d_lm)``."""
    valid = labels.ne(-100)
    ids = labels.masked_fill(~valid, 0)
    with torch.no_grad():
        emb = embedding(ids)
    w = valid.to(emb.dtype).unsqueeze(-1)
    return (emb * w).sum(1) / w.sum(1).clamp_min(1)


def sib_forward_hook(model: nn.Module, args, kwargs, output):
    """Forward hook of a patched InstructBLIP / BLIP-2: adds ``weight · L_SIB`` when called with labels.

    In distributed training (a process group, gradients on) the features of every process's batch are
    gathered first, so the in-batch negatives are the global batch's and every process computes the
    loss one process would compute on the global batch (``output["sib_term"]`` keeps ``weight · L_SIB``
    with its graph, for the training loop's reweighting of the LM part)."""
    labels = kwargs.get("labels")
    if labels is None or getattr(output, "qformer_outputs", None) is None:
        return None
    head: SIBLoss = model.petal_sib
    n_query = model.query_tokens.shape[1]
    query = output.qformer_outputs.last_hidden_state[:, :n_query, :]
    z = query.mean(dim=1)
    z_lm = model.language_projection(query).mean(dim=1)
    vision = output.vision_outputs
    x = (vision.last_hidden_state if hasattr(vision, "last_hidden_state") else vision[0]).mean(dim=1)
    y = target_representation(model.get_input_embeddings(), labels)
    features = [z.float(), y.float(), x.float(), z_lm.float()]
    if torch.is_grad_enabled():
        features = [gather_with_grad(f) for f in features]
    sib = head(*features)
    output["sib_loss"] = sib.detach()
    if output.loss is not None:
        output["lm_loss"] = output.loss.detach()
        output["sib_term"] = head.weight * sib
        output.loss = output.loss + output["sib_term"]
    return output


def attach_sib(model: nn.Module, cfg: SIBConfig, state) -> bool:
    """Register the SIB head on a full InstructBLIP / BLIP-2 model; ``False`` when it has no LM."""
    if not all(hasattr(model, a) for a in ("qformer", "language_projection", "query_tokens")):
        return False
    x_dim = model.config.vision_config.hidden_size
    model.petal_sib = SIBLoss(cfg, model.config.qformer_config.hidden_size, x_dim)
    state.added.append("petal_sib")
    state.handles.append(model.register_forward_hook(sib_forward_hook, with_kwargs=True))
    return True


__all__ = ["CLUB", "MINE", "SIBLoss", "attach_sib", "infonce", "sib_forward_hook", "target_representation"]
