"""What ``petal.patch`` reads of the installed ``transformers``, checked when a model is patched.

The model layer overrides methods of ``transformers``' Q-Former modules and reads some of their internals:
the attention-function registry through the attention module's globals (``ALL_ATTENTION_FUNCTIONS``,
``eager_attention_forward``), ``scaling`` / ``attention_dropout`` / ``attention_head_size`` and
``config._attn_implementation`` of each multi-head attention, the ``query_length`` argument of each
Q-Former layer (bound by name from the layer's signature), ``feed_forward_chunk`` /
``feed_forward_chunk_query`` of each layer, the ``dense`` / ``dropout`` / ``LayerNorm`` of each
residual-norm block; of T5, the sublayers' ``layer_norm`` / ``dropout`` / ``SelfAttention`` /
``DenseReluDense`` and the cross-attention's ``EncDecAttention.v``.

Two guards keep a moved ``transformers`` from breaking a patched model silently:

* :func:`check_version`: ``patch`` refuses a ``transformers`` outside the range the tests run on
  (``make test`` the newest, ``make test-compat`` the lowest; pyproject.toml declares the same range).
  ``PETAL_ALLOW_UNTESTED_TRANSFORMERS=1`` turns the refusal into a warning.
* :func:`check_qformer` / :func:`check_t5`: every module ``patch`` touches is checked for each attribute,
  method and forward parameter listed above, so a renamed one fails at ``patch`` with its name instead
  of later as an ``AttributeError`` inside a forward, or not at all.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import warnings
from dataclasses import dataclass

from torch import nn

TRANSFORMERS_MIN = "5.15.0"  # the lowest tested: make test-compat
TRANSFORMERS_BELOW = "5.26"  # the first untested minor release: 5.25.x is the newest tested (make test)
TRANSFORMERS_RANGE = f">={TRANSFORMERS_MIN},<{TRANSFORMERS_BELOW}"
ALLOW_UNTESTED_ENV = "PETAL_ALLOW_UNTESTED_TRANSFORMERS"


class IncompatibleTransformersError(RuntimeError):
    """The installed ``transformers`` is outside the supported range, or lacks something petal uses."""


def _untested_allowed() -> bool:
    return os.environ.get(ALLOW_UNTESTED_ENV, "").lower() in ("1", "true", "yes", "on")


def installed_version() -> str:
    import transformers

    return transformers.__version__


def check_version(installed: str | None = None) -> None:
    """Raise :class:`IncompatibleTransformersError` when ``installed`` (default: the installed
    ``transformers``' version) is outside :data:`TRANSFORMERS_RANGE`."""
    from packaging.version import InvalidVersion, Version

    if installed is None:
        installed = installed_version()
    try:
        release = Version(Version(installed).base_version)  # 5.26.0.dev0 is 5.26's code, not 5.25's
    except InvalidVersion:
        raise IncompatibleTransformersError(f"cannot read the transformers version {installed!r}") from None
    if Version(TRANSFORMERS_MIN) <= release < Version(TRANSFORMERS_BELOW):
        return
    message = (f"petal supports transformers{TRANSFORMERS_RANGE} (the versions its tests run on), but "
               f"transformers {installed} is installed")
    if _untested_allowed():
        warnings.warn(f"{message}; patching anyway because {ALLOW_UNTESTED_ENV} is set", stacklevel=3)
        return
    raise IncompatibleTransformersError(
        f"{message}. Install a supported version (pip install 'transformers{TRANSFORMERS_RANGE}'), or set "
        f"{ALLOW_UNTESTED_ENV}=1 to patch anyway (every method and attribute petal uses is still checked).")


@dataclass(frozen=True)
class Needs:
    """What petal uses of one kind of ``transformers`` module."""

    attributes: tuple = ()      # read on the instance
    methods: tuple = ()         # called through, or overridden on, the class
    forward_params: tuple = ()  # passed to, or read from, ``forward`` by name
    module_globals: tuple = ()  # read from the module that defines the class


_ATTENTION = Needs(
    attributes=("query", "key", "value", "attention_head_size", "scaling", "attention_dropout", "config",
                "config._attn_implementation"),
    forward_params=("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask"),
    module_globals=("ALL_ATTENTION_FUNCTIONS", "ALL_ATTENTION_FUNCTIONS.get_interface",
                    "eager_attention_forward"))
_RESIDUAL_NORM = Needs(attributes=("dense", "dropout", "LayerNorm"),
                       forward_params=("hidden_states", "input_tensor"))
# intermediate / output (the instruction rows' feed-forward) exist only where instruction rows do
_LAYER = Needs(attributes=("attention", "intermediate_query", "output_query"),
               methods=("feed_forward_chunk", "feed_forward_chunk_query"), forward_params=("query_length",))
_QFORMER = Needs(attributes=("config", "config.hidden_size", "config.encoder_hidden_size", "encoder",
                             "encoder.layer"))

QFORMER_NEEDS = {}
for _family in ("InstructBlip", "Blip2"):
    QFORMER_NEEDS.update({
        f"{_family}QFormerModel": _QFORMER, f"{_family}QFormerLayer": _LAYER,
        f"{_family}QFormerMultiHeadAttention": _ATTENTION,
        f"{_family}QFormerSelfOutput": _RESIDUAL_NORM, f"{_family}QFormerOutput": _RESIDUAL_NORM,
    })

T5_NEEDS = {
    "T5LayerSelfAttention": Needs(attributes=("SelfAttention", "layer_norm", "layer_norm.weight", "dropout"),
                                  forward_params=("hidden_states", "attention_mask", "position_bias")),
    "T5LayerFF": Needs(attributes=("DenseReluDense", "layer_norm", "layer_norm.weight", "dropout")),
    "T5LayerCrossAttention": Needs(attributes=("EncDecAttention", "EncDecAttention.v")),
}


@functools.cache
def forward_signature(cls: type) -> inspect.Signature:
    """``inspect.signature(cls.forward)`` (``self`` included), computed once per class."""
    return inspect.signature(cls.forward)


def _has_path(obj, path: str) -> bool:
    for name in path.split("."):
        if not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


def _missing(module: nn.Module, needs: Needs) -> list[str]:
    cls = type(module)
    out = [f"attribute {a!r}" for a in needs.attributes if not _has_path(module, a)]
    out += [f"method {m!r}" for m in needs.methods if not callable(getattr(cls, m, None))]
    if needs.forward_params:
        params = forward_signature(cls).parameters
        out += [f"forward parameter {p!r}" for p in needs.forward_params if p not in params]
    defining = sys.modules.get(cls.__module__)
    out += [f"{cls.__module__}.{g}" for g in needs.module_globals if not _has_path(defining, g)]
    return out


def _check(model: nn.Module, table: dict, what: str) -> None:
    problems, seen = [], set()
    for module in model.modules():
        cls = type(module)
        needs = table.get(cls.__name__)
        if needs is None or cls in seen:
            continue
        seen.add(cls)
        problems += [f"{cls.__name__}: {m}" for m in _missing(module, needs)]
    if problems:
        raise IncompatibleTransformersError(
            f"petal cannot patch the {what} of transformers {installed_version()}: missing "
            f"{'; '.join(problems)} (petal supports transformers{TRANSFORMERS_RANGE})")


def check_qformer(qformer: nn.Module) -> None:
    """Raise :class:`IncompatibleTransformersError` naming each thing petal uses that a module of
    ``qformer`` lacks (first instance of each class)."""
    _check(qformer, QFORMER_NEEDS, "Q-Former")


def check_t5(model: nn.Module) -> None:
    """The same for the T5 sublayers VL-PET wraps."""
    _check(model, T5_NEEDS, "T5")


def bound_argument(module: nn.Module, args: tuple, kwargs: dict, name: str):
    """The value ``module.forward(*args, **kwargs)`` receives for parameter ``name`` (its default when
    not passed), by binding the call to the signature rather than by position."""
    sig = forward_signature(type(module))
    bound = sig.bind(module, *args, **kwargs).arguments
    return bound[name] if name in bound else sig.parameters[name].default


__all__ = ["ALLOW_UNTESTED_ENV", "IncompatibleTransformersError", "Needs", "QFORMER_NEEDS", "T5_NEEDS",
           "TRANSFORMERS_BELOW", "TRANSFORMERS_MIN", "TRANSFORMERS_RANGE", "bound_argument", "check_qformer",
           "check_t5", "check_version", "forward_signature", "installed_version"]
