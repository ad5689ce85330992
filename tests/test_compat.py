"""``petal.patch`` fails loudly, at patch time, on a ``transformers`` it was not tested with or one that
lacks what the model layer uses (petal/compat.py); ``query_length`` is bound by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers.models.instructblip import modeling_instructblip as hf
from transformers.models.t5 import modeling_t5

import petal
from petal import compat
from petal.layers.dma import QUERY_LENGTH_KWARG

from .petal_models import qformer_inputs, tiny_qformer

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_the_range_patch_enforces():
    text = (ROOT / "pyproject.toml").read_text()
    declared = re.findall(r'"transformers([^"]*)"', text)
    assert declared == [compat.TRANSFORMERS_RANGE]


def test_the_installed_transformers_is_supported():
    compat.check_version()  # make test: the newest supported; make test-compat: the lowest


@pytest.mark.parametrize("version", ["4.46.3", "5.14.1", "5.26.0", "5.26.0.dev0", "6.0.0"])
def test_versions_outside_the_range_are_refused_with_the_range_named(version, monkeypatch):
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(compat.IncompatibleTransformersError) as info:
        compat.check_version(version)
    message = str(info.value)
    assert f"transformers {version} is installed" in message and compat.TRANSFORMERS_RANGE in message
    assert compat.ALLOW_UNTESTED_ENV in message


@pytest.mark.parametrize("version", [compat.TRANSFORMERS_MIN, "5.25.0", "5.25.3", "5.20.0rc1"])
def test_versions_inside_the_range_pass(version):
    compat.check_version(version)


def test_the_environment_variable_turns_the_refusal_into_a_warning(monkeypatch):
    monkeypatch.setenv(compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(UserWarning, match=r"transformers 5\.26\.0 is installed; patching anyway"):
        compat.check_version("5.26.0")


def test_patch_refuses_an_unsupported_transformers_and_leaves_the_model_alone(monkeypatch):
    monkeypatch.delenv(compat.ALLOW_UNTESTED_ENV, raising=False)
    monkeypatch.setattr(compat, "installed_version", lambda: "5.14.1")
    model = tiny_qformer()
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(compat.IncompatibleTransformersError, match=re.escape(compat.TRANSFORMERS_RANGE)):
        petal.patch(model)
    assert not petal.is_patched(model) and [n for n, _ in model.named_modules()] == names
    assert all(p.requires_grad for p in model.parameters())


def _patch_error(model, config=None) -> str:
    with pytest.raises(compat.IncompatibleTransformersError) as info:
        petal.patch(model, config)
    assert not petal.is_patched(model)
    return str(info.value)


def test_a_missing_overridden_method_fails_at_patch_naming_it(monkeypatch):
    monkeypatch.delattr(hf.InstructBlipQFormerLayer, "feed_forward_chunk_query")
    message = _patch_error(tiny_qformer())
    assert "InstructBlipQFormerLayer: method 'feed_forward_chunk_query'" in message
    assert f"transformers {compat.installed_version()}" in message


def test_a_missing_attribute_or_module_global_fails_at_patch_naming_it(monkeypatch):
    model = tiny_qformer()
    del model.encoder.layer[0].attention.attention.scaling
    monkeypatch.delattr(hf, "eager_attention_forward")
    message = _patch_error(model)
    assert "InstructBlipQFormerMultiHeadAttention: attribute 'scaling'" in message
    assert "modeling_instructblip.eager_attention_forward" in message


def test_a_renamed_forward_parameter_fails_at_patch_naming_it(monkeypatch):
    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, num_query_tokens=0, **kwargs):
        raise AssertionError("not reached")

    monkeypatch.setattr(hf.InstructBlipQFormerLayer, "forward", forward)
    compat.forward_signature.cache_clear()
    try:
        message = _patch_error(tiny_qformer())
    finally:
        compat.forward_signature.cache_clear()
    assert "InstructBlipQFormerLayer: forward parameter 'query_length'" in message


def test_a_missing_t5_sublayer_attribute_fails_at_patch_naming_it():
    config = transformers.T5Config(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4,
                                   d_kv=8, vocab_size=50, decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(config)
    ff = model.encoder.block[0].layer[1]
    assert isinstance(ff, modeling_t5.T5LayerFF)
    del ff.DenseReluDense
    message = _patch_error(model, petal.PetalConfig.from_preset("vl-pet-small"))
    assert "T5LayerFF: attribute 'DenseReluDense'" in message


class _Reordered(torch.nn.Module):
    def forward(self, hidden_states, query_length=3, attention_mask=None, **kwargs):
        return hidden_states


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((1,), {}, 3), ((1, 5), {}, 5), ((1,), {"query_length": 7}, 7), ((1, 4, None), {"other": 2}, 4)])
def test_bound_argument_reads_the_parameter_by_name(args, kwargs, expected):
    assert compat.bound_argument(_Reordered(), args, kwargs, "query_length") == expected


def test_query_length_reaches_dma_whether_passed_by_position_or_name():
    model = petal.patch(tiny_qformer(), petal.PetalConfig.from_preset("petal-dma-only"))
    layer = model.encoder.layer[0]
    seen = []
    attention = layer.attention.attention
    handle = attention.register_forward_pre_hook(
        lambda m, a, k: seen.append(k.get(QUERY_LENGTH_KWARG)), with_kwargs=True)
    inputs = qformer_inputs()
    hidden = torch.randn(2, 9, 32)
    image = inputs["encoder_hidden_states"]
    try:
        layer(hidden, None, image, None, 4)
        layer(hidden, None, image, encoder_attention_mask=None, query_length=4)
        layer(hidden)
    finally:
        handle.remove()
    assert seen == [4, 4, 0]
