"""Input validation for the public ops: every error names the argument and what it saw.

Checks run before anything is computed, so a bad call leaves no output and modifies nothing.
"""

from __future__ import annotations

import numbers

import torch

from .reference import GRANULARITIES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _desc(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def tensor(name: str, value, ref: torch.Tensor | None = None, *, optional: bool = False):
    """``value`` is a floating tensor matching ``ref``'s dtype and device."""
    if value is None:
        if optional:
            return
        raise TypeError(f"{name} must be a tensor, got None")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a floating tensor (float16, bfloat16, float32 or float64), "
            f"got {_desc(value)}"
        )
    if ref is not None:
        if value.dtype != ref.dtype:
            raise TypeError(f"{name} has dtype {value.dtype} but x has dtype {ref.dtype}; "
                            "cast all inputs to one dtype (or run under torch.autocast)")
        if value.device != ref.device:
            raise ValueError(f"{name} is on device {value.device} but x is on {ref.device}")


def shape(name: str, value: torch.Tensor, expected: tuple, what: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({what}), got {_desc(value)}")


def number(name: str, value) -> None:
    if type(value) is float or type(value) is int:  # the usual case, without the ABC check's cost
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")


def list_of(name: str, value, length: int | None = None) -> list:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ValueError(f"{name} must have {length} entries (one per weight), got {len(value)}")
    return list(value)


def dma_projection(x, down, weight, bias, up, scale, gamma, names) -> None:
    """One projection of ``dma_linear``; ``names`` maps arg -> the name to report."""
    K, R = x.shape[-1], down.shape[0]
    tensor(names["weight"], weight, x)
    tensor(names["bias"], bias, x, optional=True)
    tensor(names["up"], up, x)
    tensor(names["scale"], scale, x)
    tensor(names["gamma"], gamma, x, optional=True)
    if weight.dim() != 2 or weight.shape[1] != K:
        raise ValueError(f"{names['weight']} must have shape (N, {K}) to match x's last dim K={K}, "
                         f"got {_desc(weight)}")
    N = weight.shape[0]
    if bias is not None:
        shape(names["bias"], bias, (N,), f"N={N} from {names['weight']}")
    shape(names["up"], up, (N, R), f"N={N} from {names['weight']}, R={R} from down")
    if gamma is not None:
        shape(names["gamma"], gamma, (N,), f"N={N} from {names['weight']}")
    target = (*x.shape[:-1], R)
    if not _broadcasts_to(tuple(scale.shape), target):
        raise ValueError(f"{names['scale']} must broadcast to {target} (x's leading dims, R={R}), "
                         f"got {_desc(scale)}")


def _broadcasts_to(shape: tuple, target: tuple) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``."""
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(reversed(shape), reversed(target)))


def dma_common(x, down) -> None:
    tensor("x", x)
    tensor("down", down, x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dim (*, K), got {_desc(x)}")
    if down.dim() != 2 or down.shape[1] != x.shape[-1]:
        raise ValueError(f"down must have shape (R, {x.shape[-1]}) to match x's last dim, "
                         f"got {_desc(down)}")


def dma_linear(x, weight, bias, down, up, scale, gamma) -> None:
    dma_common(x, down)
    names = {k: k for k in ("weight", "bias", "up", "scale", "gamma")}
    dma_projection(x, down, weight, bias, up, scale, gamma, names)


def projection_lists(weights, biases, ups, scales, gammas) -> int:
    """The per-projection lists of ``dma_linear_multi`` all have one entry per weight: J."""
    J = len(list_of("weights", weights))
    if J == 0:
        raise ValueError("weights must hold at least one projection, got an empty list")
    list_of("biases", biases, J)
    list_of("ups", ups, J)
    list_of("scales", scales, J)
    if gammas is not None:
        list_of("gammas", gammas, J)
    return J


def dma_linear_multi(x, weights, biases, down, ups, scales, gammas) -> None:
    dma_common(x, down)
    J = projection_lists(weights, biases, ups, scales, gammas)
    gammas = [None] * J if gammas is None else gammas
    for j in range(J):
        names = {"weight": f"weights[{j}]", "bias": f"biases[{j}]", "up": f"ups[{j}]",
                 "scale": f"scales[{j}]", "gamma": f"gammas[{j}]"}
        dma_projection(x, down, weights[j], biases[j], ups[j], scales[j], gammas[j], names)


_GATE_ARGS = {
    "large": ("gate_logits",),
    "middleX": ("gate_weight", "gate_bias"),
    "middleY": ("gate_vector",),
    "small": ("gate_weight", "gate_bias"),
}


def gated_residual(x, h, u, granularity, adapter_scale, gate_scale, gate_logits, gate_weight,
                   gate_bias, gate_vector, dropout_mask, dropout_p=0.0, dropout_seed=None) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must have at least one dim (*, d), got {_desc(x)}")
    for name, value in (("h", h), ("u", u)):
        tensor(name, value, x)
        shape(name, value, tuple(x.shape), "same as x")
    number("adapter_scale", adapter_scale)
    number("gate_scale", gate_scale)
    gates = {"gate_logits": gate_logits, "gate_weight": gate_weight, "gate_bias": gate_bias,
             "gate_vector": gate_vector}
    needed = _GATE_ARGS[granularity]
    for name, value in gates.items():
        if name in needed:
            tensor(name, value, x)
        elif value is not None:
            users = [g for g, args in _GATE_ARGS.items() if name in args]
            raise ValueError(f"{name} is only used by granularity {' / '.join(users)}, "
                             f"but granularity is {granularity!r}; pass None")
    d = x.shape[-1]
    if granularity == "large":
        shape("gate_logits", gate_logits, tuple(x.shape), "same as x")
    elif granularity == "middleY":
        shape("gate_vector", gate_vector, (d,), f"d={d} from x")
    else:
        width = d if granularity == "middleX" else 2 * d
        shape("gate_weight", gate_weight, (width,),
              f"{'d' if width == d else '2d'}={width} from x" + ("" if width == d else ": [x; h']"))
        if gate_bias.numel() != 1 or gate_bias.dim() > 1:
            raise ValueError(f"gate_bias must be a scalar tensor of shape () or (1,), got {_desc(gate_bias)}")
    if granularity == "small" and x.dim() != 3:
        raise ValueError(f"granularity 'small' gates per example and needs x of shape (B, T, d), "
                         f"got {_desc(x)}")
    if dropout_mask is not None:
        tensor("dropout_mask", dropout_mask, x)
        shape("dropout_mask", dropout_mask, tuple(x.shape), "same as x")
    dropout(dropout_mask, dropout_p, dropout_seed)


def dropout(dropout_mask, dropout_p, dropout_seed) -> None:
    number("dropout_p", dropout_p)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if dropout_p > 0.0 and dropout_mask is not None:
        raise ValueError("pass either dropout_mask (a mask made by the caller) or dropout_p (dropout "
                         f"made in the kernel), not both; got a mask and dropout_p={dropout_p!r}")
    if dropout_seed is None:
        return
    if isinstance(dropout_seed, torch.Tensor):
        seed = dropout_seed
        if seed.numel() != 1 or seed.dtype != torch.int64 or seed.device.type != "cpu":
            raise ValueError("dropout_seed must be an int or a one-element int64 CPU tensor, got "
                             f"{_desc(dropout_seed)}")
    elif isinstance(dropout_seed, bool) or not isinstance(dropout_seed, numbers.Integral):
        raise TypeError(f"dropout_seed must be an int or a one-element int64 CPU tensor, "
                        f"got {type(dropout_seed).__name__} {dropout_seed!r}")
    elif not -2 ** 63 <= dropout_seed < 2 ** 64:
        raise ValueError(f"dropout_seed must fit in 64 bits, got {dropout_seed}")
