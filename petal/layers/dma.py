"""Dynamic Mode Approximation (DESIGN §1.1) on the q/k/v projections of one attention module.

For an input row ``x`` of modality ``m`` and adapted projection ``j``::

    y_j = Γ_j ⊙ (W_j x) + b_j + U ((s^m(x) ⊙ c_j) ⊙ (D x))          # core "cp":  c_j = p_j
    y_j = Γ_j ⊙ (W_j x) + b_j + (U M_jᵀ) (s^m(x) ⊙ (D x))           # core "tucker": M_j = C ×₃ p_j

``s^m(x) = λ^m ⊙ (1 + tanh(A D mean_tokens(x^m)))`` (the dynamic term, ``W_λ = A D``), times the
dropout mask when training. ``D``/``U`` (and ``C``, ``A``) are one :class:`DMAFactors` per input space,
shared by every layer; ``p_j`` and ``Γ_j`` belong to the projection. All projections of one input
run through one ``petal_kernels.dma_linear_multi`` call, so ``t = D x`` is computed once for q/k/v of a
self-attention (and once for k/v of a cross-attention). For the Tucker core the core is folded into an
effective up matrix ``U M_jᵀ`` (cost R²·N) rather than an effective down ``M_jᵀ D``: both are exact,
and folding it on the up side keeps ``t`` shared (and the dropout on ``D x`` where the official code
puts it).
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import petal_kernels

from . import fast_paths as fast
from .attention_core import additive_mask, attention
from .base import AdapterWrapper, run_forward_hooks
from .fast_dropout import keep_mask

MODALITIES = ("query", "instruction", "image")
QUERY_LENGTH_KWARG = "petal_query_length"


class DMAFactors(nn.Module):
    """The shared factors of one input space: ``down`` D (R×K), ``up`` U (N×R, zero-init)."""

    def __init__(self, in_features: int, out_features: int, rank: int, core: str, dynamic: bool):
        super().__init__()
        self.down = nn.Parameter(torch.empty(rank, in_features))
        nn.init.kaiming_uniform_(self.down, a=5 ** 0.5)
        self.up = nn.Parameter(torch.zeros(out_features, rank))
        self.core = None
        if core == "tucker":
            self.core = nn.Parameter(torch.empty(rank, rank, rank))
            nn.init.xavier_uniform_(self.core)
        self.dynamic = nn.Parameter(torch.zeros(rank, rank)) if dynamic else None


class DMAShared(nn.Module):
    """Everything DMA shares across layers: a factor set per input space and λ per modality."""

    def __init__(self, hidden_size: int, encoder_hidden_size: Optional[int], rank: int, core: str,
                 dynamic: bool, per_modality: bool, trainable_lambda: bool = True):
        super().__init__()
        self.rank, self.core_kind, self.per_modality = rank, core, per_modality
        self.text = DMAFactors(hidden_size, hidden_size, rank, core, dynamic)
        self.image = (DMAFactors(encoder_hidden_size, hidden_size, rank, core, dynamic)
                      if encoder_hidden_size is not None else None)
        self.lambdas = (nn.Parameter(torch.ones(len(MODALITIES) if per_modality else 1, rank))
                        if trainable_lambda else None)

    def lam(self, modality: str) -> Tensor:
        """λ^m; all ones (not a parameter) when λ is not trained, as in the released code."""
        if self.lambdas is None:
            return self.text.down.new_ones(self.rank)
        return self.lambdas[MODALITIES.index(modality) if self.per_modality else 0]


def _xavier_vector(rank: int) -> Tensor:
    p = torch.empty(rank, 1)
    nn.init.xavier_uniform_(p)
    return p[:, 0]


def _key_weights(mask, length: int) -> Optional[Tensor]:
    """(B, L) 1/0 weights of the attended keys, read off a 4-D attention mask (bool, or additive with 0
    for attended keys); ``None`` when there is no such mask (every key attended)."""
    if not isinstance(mask, Tensor) or mask.dim() != 4 or mask.shape[-1] != length:
        return None
    row = mask[:, 0, 0, :]
    return row.float() if row.dtype == torch.bool else (row == 0).float()


def _attention_module_globals(module: nn.Module):
    return sys.modules[type(module).__module__]


class DelegatingWrapper(AdapterWrapper):
    """An AdapterWrapper that answers attribute lookups it lacks from ``base_layer`` (as peft's
    layers do), so model code reading e.g. ``layernorm.weight`` or ``attention.config`` keeps working."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)


class DMAAttention(DelegatingWrapper):
    """Wraps a Q-Former ``*QFormerMultiHeadAttention``; its q/k/v run through ``dma_linear_multi``.

    ``kind`` is ``"self"`` (q/k/v read the hidden states: query tokens then instruction tokens,
    split by the Q-Former's own ``query_length``) or ``"cross"`` (q reads the query tokens, k/v the
    image features through the image-side factors). ``shared`` is held by reference, not registered:
    it lives once in the model (``<qformer>.petal_dma``). ``fast_paths`` (``PetalConfig.fast_paths``)
    says where the attention core runs :func:`~petal.layers.attention_core.attention` instead of the
    attention function ``config._attn_implementation`` names (eager / SDPA / flash).
    """

    mergeable = True

    def __init__(self, base_layer: nn.Module, shared: DMAShared, kind: str, projections: tuple,
                 gamma: bool, dropout: float, dropout_per_projection: bool = False,
                 fast_paths: fast.FastPaths = "auto"):
        super().__init__(base_layer)
        if kind not in ("self", "cross"):
            raise ValueError(f"kind must be 'self' or 'cross', got {kind!r}")
        if kind == "cross" and shared.image is None:
            raise ValueError("a cross-attention DMA needs the image-side factors (encoder_hidden_size)")
        self.__dict__["shared"] = shared
        self.kind, self.projections, self.dropout = kind, tuple(projections), float(dropout)
        self.dropout_per_projection = bool(dropout_per_projection)
        R, N = shared.rank, base_layer.query.out_features
        self.p = nn.ParameterDict({name: nn.Parameter(_xavier_vector(R)) for name in self.projections})
        self.gamma = (nn.ParameterDict({name: nn.Parameter(torch.ones(N)) for name in self.projections})
                      if gamma else None)
        self._merge_full = False
        self.fast_paths = fast_paths

    # ------------------------------------------------------------------ the update

    def _groups(self):
        """(input name, factors, projections, modalities of its rows) for each shared-input group."""
        sh, on = self.shared, self.projections
        if self.kind == "self":
            return [("hidden", sh.text, [p for p in ("query", "key", "value") if p in on],
                     ("query", "instruction"))]
        return [("hidden", sh.text, [p for p in ("query",) if p in on], ("query",)),
                ("encoder", sh.image, [p for p in ("key", "value") if p in on], ("image",))]

    def _up(self, factors: DMAFactors, name: str) -> Tensor:
        if factors.core is None:
            return factors.up
        m = torch.einsum("abc,c->ab", factors.core, self.p[name])
        return factors.up @ m.T

    def _coef(self, factors: DMAFactors, name: str) -> Tensor:
        """What multiplies the per-row scale for projection ``name``: p_j (cp) or 1 (tucker)."""
        return self.p[name] if factors.core is None else torch.ones_like(self.p[name])

    def _row_scale(self, x: Tensor, factors: DMAFactors, modalities: tuple,
                   query_length: Optional[int], valid: Optional[Tensor] = None) -> Tensor:
        """s^m(x) per row, shape broadcastable to (B, L, R); ``valid`` (B, L) masks padding out of
        the dynamic term's token means."""
        sh = self.shared
        if len(modalities) == 1:
            segments = [(modalities[0], 0, x.shape[-2])]
        else:
            ql = x.shape[-2] if query_length is None else min(int(query_length), x.shape[-2])
            segments = [(m, a, b) for m, a, b in (("query", 0, ql), ("instruction", ql, x.shape[-2]))
                        if b > a]
        parts = []
        for modality, start, stop in segments:
            lam = sh.lam(modality)
            if factors.dynamic is None:
                parts.append(lam.expand(stop - start, sh.rank) if len(segments) > 1 else lam)
                continue
            seg = x[..., start:stop, :]
            if valid is None:
                mean = seg.mean(dim=-2)
            else:
                w = valid[:, start:stop, None].to(seg.dtype)
                mean = (seg * w).sum(dim=-2) / w.sum(dim=-2).clamp_min(1)
            mean = mean.to(factors.down.dtype)                                  # (B, K)
            lam = lam * (1 + torch.tanh(F.linear(F.linear(mean, factors.down), factors.dynamic)))
            parts.append(lam.unsqueeze(-2).expand(*x.shape[:-2], stop - start, sh.rank))
        if len(parts) == 1:
            return parts[0]                        # (R,) static, (B, L, R) dynamic
        return torch.cat(parts, dim=-2)            # (L, R) static, (B, L, R) dynamic

    def _merge_ref(self, factors: DMAFactors, modalities: tuple) -> Tensor:
        return self.shared.lam(modalities[0])

    def _project(self, x: Tensor, factors: DMAFactors, names: list, modalities: tuple,
                 query_length: Optional[int], valid: Optional[Tensor] = None) -> list:
        base = self.base_layer
        linears = [getattr(base, n) for n in names]
        if self.merged and self._merge_full:
            return [lin(x) for lin in linears]
        scale = self._row_scale(x, factors, modalities, query_length, valid)
        masks = [None] * len(names)
        if self.merged:
            scale = scale - self._merge_ref(factors, modalities)
        elif self.training and self.dropout > 0:
            # one keep mask on t = D x shared by the projections, or one per projection (q, k, v in
            # that order) as the released code draws them: t is shared either way
            like = torch.empty(*x.shape[:-1], self.shared.rank, device=x.device, dtype=scale.dtype)
            if self.dropout_per_projection:
                masks = [keep_mask(like, self.dropout) for _ in names]
            else:
                scale = scale * keep_mask(like, self.dropout) * (1 / (1 - self.dropout))
        scales = [scale * self._coef(factors, n) if m is None
                  else scale * m * (1 / (1 - self.dropout)) * self._coef(factors, n)
                  for n, m in zip(names, masks)]
        ups = [self._up(factors, n) for n in names]
        gammas = None
        if self.gamma is not None and not self.merged:
            gammas = [self.gamma[n] for n in names]
        down = factors.down
        if x.dtype != down.dtype and not torch.is_autocast_enabled(x.device.type):
            cast = lambda ts: None if ts is None else [t.to(x.dtype) for t in ts]  # noqa: E731
            down, ups, scales, gammas = down.to(x.dtype), cast(ups), cast(scales), cast(gammas)
        return list(petal_kernels.dma_linear_multi(
            x, [lin.weight for lin in linears], [lin.bias for lin in linears], down, ups, scales, gammas))

    # ------------------------------------------------------------------ forward

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, **kwargs):
        query_length = kwargs.pop(QUERY_LENGTH_KWARG, None)
        base = self.base_layer
        cross = encoder_hidden_states is not None
        if cross != (self.kind == "cross"):
            raise ValueError(f"this DMAAttention was built for {self.kind}-attention but was called "
                             f"{'with' if cross else 'without'} encoder_hidden_states")
        current = encoder_hidden_states if cross else hidden_states
        inputs = {"hidden": hidden_states, "encoder": current}
        valid = {"hidden": None if cross else _key_weights(attention_mask, hidden_states.shape[-2]),
                 "encoder": _key_weights(encoder_attention_mask, current.shape[-2]) if cross else None}
        out = {}
        for source, factors, names, modalities in self._groups():
            if names:
                out.update(zip(names, self._project(inputs[source], factors, names, modalities,
                                                    query_length, valid[source])))
        for name in ("query", "key", "value"):
            if name not in out:
                out[name] = getattr(base, name)(hidden_states if name == "query" else current)
        mask = encoder_attention_mask if cross else attention_mask

        head = base.attention_head_size
        q = out["query"].view(*hidden_states.shape[:-1], -1, head).transpose(1, 2)
        k = out["key"].view(*current.shape[:-1], -1, head).transpose(1, 2)
        v = out["value"].view(*current.shape[:-1], -1, head).transpose(1, 2)
        dropout = base.attention_dropout if self.training else 0.0
        implementation = base.config._attn_implementation
        if fast.enabled(self.fast_paths, q) and not base._forward_hooks and not kwargs and 0 <= dropout < 1 \
                and implementation in (None, "eager", "sdpa"):
            supported, additive = additive_mask(mask, q.dtype)
            if supported:
                return attention(q, k, v, additive, base.scaling, dropout), None
        hf = _attention_module_globals(base)
        interface = hf.ALL_ATTENTION_FUNCTIONS.get_interface(implementation, hf.eager_attention_forward)
        attn_output, attn_weights = interface(
            base, q, k, v, mask, dropout=dropout,
            scaling=base.scaling, **kwargs)
        attn_output = attn_output.reshape(*attn_output.shape[:2], -1).contiguous()
        return run_forward_hooks(base, (hidden_states,), {}, (attn_output, attn_weights))

    # ------------------------------------------------------------------ merge

    def _delta(self, factors: DMAFactors, name: str, ref: Tensor) -> Tensor:
        """ΔW_j = U_j diag(ref ⊙ c_j) D, in float64."""
        up = self._up(factors, name).double()
        return (up * (ref.double() * self._coef(factors, name).double())) @ factors.down.double()

    def _fold(self, sign: int) -> None:
        for _source, factors, names, modalities in self._groups():
            ref = self._merge_ref(factors, modalities)
            for name in names:
                lin = getattr(self.base_layer, name)
                w = lin.weight.data
                delta = self._delta(factors, name, ref)
                g = None if self.gamma is None else self.gamma[name].detach().double()[:, None]
                if sign > 0:
                    new = w.double() * (1 if g is None else g) + delta
                else:
                    new = (w.double() - delta) / (1 if g is None else g)
                w.copy_(new.to(w.dtype))

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise ValueError("this DMAAttention is already merged; call unmerge() first")
        if self.gamma is not None:
            for name, g in self.gamma.items():
                if bool((g == 0).any()):
                    raise ValueError(f"cannot merge: Γ of {name} has zero entries, unmerge could not divide")
        self._fold(+1)
        full = True
        for _source, factors, names, modalities in self._groups():
            if names and factors.dynamic is not None:
                full = False
            lams = [self.shared.lam(m) for m in modalities]
            if names and any(not torch.equal(lams[0], lam) for lam in lams[1:]):
                full = False
        self._merge_full = full
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise ValueError("this DMAAttention is not merged")
        self._fold(-1)
        self.merged = False
        self._merge_full = False


class QueryTransform(DelegatingWrapper):
    """The official code's ``layer_output + 0.1·(attn_out ⊙ scale + shift)`` around a Q-Former layer.

    ``attn_out`` is the layer's self-attention block output (all rows). A forward hook on
    ``base_layer.attention`` (registered by :meth:`capture_hook`, removed by ``unpatch``) hands it
    over; registering it once keeps ``torch.compile`` free of graph breaks.
    """

    def __init__(self, base_layer: nn.Module, hidden_size: int, init_std: float, factor: float = 0.1):
        super().__init__(base_layer)
        self.factor = factor
        self.scale = nn.Parameter(torch.randn(hidden_size) * init_std)
        self.shift = nn.Parameter(torch.randn(hidden_size) * init_std)
        self.__dict__["_captured"] = []
        self.__dict__["_armed"] = []  # non-empty only inside forward: a checkpoint recompute captures nothing

    def capture_hook(self):
        captured, armed = self._captured, self._armed

        def hook(module, args, output):
            if armed:
                armed.clear()
                captured.append(output)

        return self.base_layer.attention.register_forward_hook(hook)

    def forward(self, *args, **kwargs):
        self._captured.clear()
        self._armed.append(True)
        out = self.base_layer(*args, **kwargs)
        self._armed.clear()
        if not self._captured:
            raise RuntimeError("QueryTransform: the self-attention output was not captured; "
                               "was the model patched with petal.patch?")
        attn = self._captured[0]
        self._captured.clear()
        # float32 masters of a half-precision base: cast at use, so the layer's output keeps its dtype
        return out + self.factor * (attn * self.scale.to(attn.dtype) + self.shift.to(attn.dtype))
