"""Settings of the comparison baselines of the PETAL and VL-PET tables: ``head``, ``maple``,
``llama-adapter`` (Q-Former) and ``vl-adapter`` (T5). ``lora`` keeps its section in :mod:`petal.config`."""

from __future__ import annotations

from dataclasses import dataclass

from .config_fields import Section, check_bool, check_int, check_real, check_subset

# the children of a Q-Former layer (its cross-attention exists in every ``cross_attention_frequency``-th)
HEAD_PARTS = ("attention", "crossattention", "intermediate", "output", "intermediate_query", "output_query")


@dataclass
class HeadSettings(Section):
    """The ``head`` baseline: every parameter of the last ``qformer_layers`` Q-Former layers (their
    ``parts`` that exist) and, with ``language_projection``, the projection into the language model.

    The default, the whole last layer, is 11,811,840 parameters on InstructBLIP's Q-Former: the paper's
    11.8 M (the same for FlanT5-XXL and Vicuna-7B, so without the LM-width projection). The released
    ``train.py``'s ``head`` mode trains only that layer's ``intermediate`` and ``intermediate_query``
    (4,724,736): ``parts=("intermediate", "intermediate_query")``.
    """

    qformer_layers: int = 1
    parts: tuple = HEAD_PARTS
    language_projection: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "HeadSettings"
        check_int(o, "qformer_layers", self.qformer_layers, low=0)
        self.parts = check_subset(o, "parts", self.parts, HEAD_PARTS)
        check_bool(o, "language_projection", self.language_projection)
        if self.qformer_layers == 0 and not self.language_projection:
            raise ValueError("HeadSettings trains nothing: qformer_layers is 0 and language_projection False")


@dataclass
class MapleSettings(Section):
    """MaPLe-style coupled deep prompts in an InstructBLIP Q-Former (Khattak et al., CVPR 2023).

    ``prompt_length`` learnable tokens (N(0, ``init_std``)) join the instruction tokens in each of the
    first ``depth`` layers (appended at layer 0, replaced by the next layer's own prompts in layers
    1 … depth-1, carried on after that, removed from the output); at each of those layers that has a
    cross-attention, a learned linear coupling maps that layer's prompts to the image width and the
    results are appended to the image features the cross-attention reads. ``depth`` beyond the
    Q-Former's layers means all of them.
    """

    prompt_length: int = 2
    depth: int = 5
    init_std: float = 0.02

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "MapleSettings"
        check_int(o, "prompt_length", self.prompt_length)
        check_int(o, "depth", self.depth)
        check_real(o, "init_std", self.init_std, 0.0)


@dataclass
class LlamaAdapterSettings(Section):
    """LLaMA-Adapter's zero-initialised gated attention (Zhang et al., 2023) in the Q-Former.

    In each of the top ``layers`` self-attentions, ``prompt_length`` learnable adaption prompts
    (N(0, ``init_std``)) are projected by the layer's own frozen key/value projections; every token's
    query attends to them with a softmax of its own, scaled per head by a gate that starts at 0, and
    the result is added to the attention output: the patched model starts equal to the base model.
    ``layers`` beyond the Q-Former's means all of them.
    """

    prompt_length: int = 128
    layers: int = 12
    init_std: float = 0.02

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "LlamaAdapterSettings"
        check_int(o, "prompt_length", self.prompt_length)
        check_int(o, "layers", self.layers)
        check_real(o, "init_std", self.init_std, 0.0)


VL_ADAPTER_PLACES = ("encoder_self_attention", "encoder_ffn", "decoder_self_attention",
                     "decoder_cross_attention", "decoder_ffn")


@dataclass
class VLAdapterSettings(Section):
    """VL-Adapter (Sung et al., CVPR 2022) on a T5, as VL-PET's ``single_adapter.sh`` runs it: one
    bottleneck adapter ``y ← y + up(gelu_new(down(y)))`` (width ``reduction_dim``, d/8 = 96 on T5-base,
    PyTorch's default init: no zero start) on the output of every sublayer enabled below, before the
    sublayer's dropout and residual. No gate. ``t5_module`` as in :class:`~petal.VLPetConfig`.
    """

    reduction_dim: int = 96
    encoder_self_attention: bool = True
    encoder_ffn: bool = True
    decoder_self_attention: bool = True
    decoder_cross_attention: bool = True
    decoder_ffn: bool = True
    t5_module: str = "language_model"

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        o = "VLAdapterSettings"
        check_int(o, "reduction_dim", self.reduction_dim)
        for name in VL_ADAPTER_PLACES:
            check_bool(o, name, getattr(self, name))
        if not any(getattr(self, name) for name in VL_ADAPTER_PLACES):
            raise ValueError(f"VLAdapterSettings: at least one of {VL_ADAPTER_PLACES} must be True")
        if not isinstance(self.t5_module, str) or not self.t5_module:
            raise ValueError(f"VLAdapterSettings.t5_module must be a non-empty module path, got "
                             f"{self.t5_module!r}")
