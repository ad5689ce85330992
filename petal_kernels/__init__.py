"""petal_kernels: fused ops for parameter-efficient tuning (DMA linear, VL-PET gated residual).

Public ops (see DESIGN §2):

* ``dma_linear(x, weight, bias, down, up, scale, gamma=None) -> y``
* ``dma_linear_multi(x, weights, biases, down, ups, scales, gammas=None) -> tuple[y_j]``
* ``gated_residual(x, h, u, granularity, ...) -> out``

Frozen arguments (``weight``/``weights``, ``bias``/``biases``) never receive gradients, even when
they require grad. The backend is chosen per call (``reference``, ``cpu``, ``triton``, ``cuda``);
force one with ``PETAL_BACKEND=<name>`` or ``with petal_kernels.use_backend(name):``.
"""

from __future__ import annotations

from . import _checks, _ops, reference
from ._autocast import autocast_args
from ._backend import BACKENDS, available_backends, backend_name, use_backend
from .reference import GRANULARITIES

__all__ = [
    "BACKENDS", "GRANULARITIES", "available_backends", "backend_name", "dma_linear",
    "dma_linear_multi", "gated_residual", "reference", "use_backend",
]
__version__ = "0.1.0"


def dma_linear(x, weight, bias, down, up, scale, gamma=None):
    """``gamma * (x @ weight.T) + bias + ((x @ down.T) * scale) @ up.T``; ``weight``/``bias`` frozen."""
    x, weight, bias, down, up, scale, gamma = autocast_args(x, weight, bias, down, up, scale, gamma)
    _checks.dma_linear(x, weight, bias, down, up, scale, gamma)
    return _ops.dma_linear_op(x, weight, bias, down, up, scale, gamma)[0]


def dma_linear_multi(x, weights, biases, down, ups, scales, gammas=None):
    """J projections of one ``x`` (q, k, v) sharing ``t = x @ down.T``; equals J ``dma_linear`` calls."""
    _checks.tensor("x", x)
    J = _checks.projection_lists(weights, biases, ups, scales, gammas)
    gammas = [None] * J if gammas is None else list(gammas)
    if any(g is None for g in gammas) and not all(g is None for g in gammas):
        # a Tensor?[] holding a None gets no gradients through torch.library: use ones instead
        gammas = [x.new_ones(w.shape[0]) if g is None else g for g, w in zip(gammas, weights)]
    x, down, *flat = autocast_args(x, down, *weights, *biases, *ups, *scales, *gammas)
    weights, biases, ups, scales, gammas = (list(flat[i * J:(i + 1) * J]) for i in range(5))
    _checks.dma_linear_multi(x, weights, biases, down, ups, scales, gammas)
    return tuple(_ops.dma_linear_multi_op(x, weights, biases, down, ups, scales, gammas)[0])


def gated_residual(x, h, u, granularity, adapter_scale=1.0, gate_scale=1.0, gate_logits=None,
                   gate_weight=None, gate_bias=None, gate_vector=None, dropout_mask=None):
    """``x + gate_scale * (G * (h + adapter_scale * u)) * dropout_mask`` with the VL-PET gate ``G``."""
    x, h, u, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask = autocast_args(
        x, h, u, gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask)
    _checks.gated_residual(x, h, u, granularity, adapter_scale, gate_scale, gate_logits,
                           gate_weight, gate_bias, gate_vector, dropout_mask)
    return _ops.gated_residual_op(x, h, u, granularity, float(adapter_scale), float(gate_scale),
                                  gate_logits, gate_weight, gate_bias, gate_vector, dropout_mask)[0]
