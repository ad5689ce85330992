"""The image-feature cache: exact (same losses with and without it), reused across epochs, refused where it
could not be exact, and removable without a trace."""

import pytest
import torch

import petal
from petal.data.collate import WordCollator
from petal.data.synthetic import SyntheticShapes
from petal.embedded import EmbeddedSpec, build_embedded_model
from petal.models.feature_cache import enable_feature_cache, image_keys
from petal.train import TrainSettings, train_model

SPEC = EmbeddedSpec(vision_hidden=16, vision_layers=1, qformer_hidden=32, qformer_layers=1,
                    num_query_tokens=4, lm_hidden=16, lm_layers=1, heads=2)
SMALL = petal.PetalConfig(dma=petal.DMAConfig(rank=4), aim=petal.AIMConfig(num_experts=2, expert_rank=4),
                          sib=petal.SIBConfig(proj_dim=4))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    # 6 scenes x 2 families: two records per image, 3 epochs of batch 4
    return SyntheticShapes("train", num_scenes=6, families=("caption", "colour"))


def _train(data, cache: bool, config=SMALL):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    torch.manual_seed(1)
    petal.patch(model, config)
    handle = enable_feature_cache(model) if cache else None
    collator = WordCollator(tok, SPEC.num_query_tokens, SPEC.image_size)
    settings = TrainSettings(max_steps=9, batch_size=4, lr=1e-2, warmup_steps=1, progress=False, seed=0)
    result = train_model(model, data, collator, settings, log=lambda s: None)
    return model, [loss for _, loss in result.losses], handle


def test_training_with_the_cache_equals_training_without(data):
    _, plain, _ = _train(data, cache=False)
    model, cached, cache = _train(data, cache=True)
    assert len(plain) == len(cached) == 9
    for a, b in zip(plain, cached):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (plain, cached)
    stats = cache.stats()
    assert stats["images"] == 6                       # one entry per distinct image, whatever the record
    assert stats["hits"] > stats["misses"]            # later epochs read the cache
    assert stats["encoder_calls"] < 9                 # batches of cached images ran no encoder
    cache.remove()
    assert "forward" not in vars(model.vision_model)  # the encoder's own forward again
    assert not hasattr(model.vision_model, "_petal_feature_cache")


def test_the_cache_serves_the_features_the_encoder_computes(data):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, SMALL)
    collator = WordCollator(tok, SPEC.num_query_tokens, SPEC.image_size)
    pixels = collator([data[i] for i in range(4)])["pixel_values"]
    with torch.no_grad():
        want = model.vision_model(pixel_values=pixels).last_hidden_state
        with enable_feature_cache(model) as cache:
            model.vision_model(pixel_values=pixels)
            calls = cache.encoder_calls
            got = model.vision_model(pixel_values=pixels.flip(0)).last_hidden_state  # all cached, other order
            assert cache.encoder_calls == calls
    torch.testing.assert_close(got, want.flip(0), rtol=0, atol=0)
    keys = image_keys(pixels)
    assert keys[0] == keys[1]  # records 0 and 1 are the same image (caption and colour question)
    assert keys[0] != keys[2]


def test_refused_when_the_vision_encoder_trains():
    model, _ = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, petal.PetalConfig.from_preset("full"))
    model.vision_model.encoder.layers[0].mlp.fc1.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen vision encoder.*trainable"):
        enable_feature_cache(model)
    assert "forward" not in vars(model.vision_model)


def test_refused_with_vision_dropout_or_augmentation():
    model, _ = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, SMALL)
    with pytest.raises(ValueError, match="augmentation"):
        enable_feature_cache(model, augmentation=True)
    model.vision_model.config.attention_dropout = 0.1
    with pytest.raises(ValueError, match="dropout"):
        enable_feature_cache(model)
    assert "forward" not in vars(model.vision_model)


def test_full_fine_tuning_keeps_the_vision_encoder_frozen_so_it_may_cache():
    model, _ = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, petal.PetalConfig.from_preset("full"))
    assert not any(p.requires_grad for p in model.vision_model.parameters())
    enable_feature_cache(model).remove()


def test_refused_on_a_model_without_a_vision_encoder():
    with pytest.raises(ValueError, match="vision encoder"):
        enable_feature_cache(torch.nn.Linear(2, 2))
