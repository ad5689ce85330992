"""Tiny random-init InstructBLIP / BLIP-2 models built from configs (no download), for the petal tests."""

from __future__ import annotations

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipQFormerModel,
)

QUERY = 4
ENC = 48
HIDDEN = 32


def qformer_config(cls=InstructBlipQFormerConfig, **kw):
    base = dict(hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                encoder_hidden_size=ENC, cross_attention_frequency=2, vocab_size=99,
                max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base.update(kw)
    return cls(**base)


def tiny_qformer(seed: int = 0, **kw) -> InstructBlipQFormerModel:
    torch.manual_seed(seed)
    return InstructBlipQFormerModel(qformer_config(**kw)).eval()


def qformer_inputs(batch: int = 2, text: int = 5, image: int = 7, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, QUERY + text, dtype=torch.long)
    mask[0, -1] = 0
    return dict(input_ids=torch.randint(1, 99, (batch, text), generator=g), attention_mask=mask,
                query_embeds=torch.randn(batch, QUERY, HIDDEN, generator=g),
                encoder_hidden_states=torch.randn(batch, image, ENC, generator=g))


def _vision():
    return dict(hidden_size=ENC, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                image_size=16, patch_size=8)


def tiny_instructblip(lm: str = "t5", seed: int = 0) -> InstructBlipForConditionalGeneration:
    torch.manual_seed(seed)
    if lm == "t5":
        text = dict(model_type="t5", vocab_size=120, d_model=40, d_kv=8, d_ff=64, num_layers=1,
                    num_decoder_layers=1, num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                    dropout_rate=0.0)
    else:
        text = dict(model_type="llama", vocab_size=120, hidden_size=40, intermediate_size=64,
                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)
    cfg = InstructBlipConfig(vision_config=_vision(), qformer_config=qformer_config().to_dict(),
                             text_config=text, num_query_tokens=QUERY, image_token_index=119)
    return InstructBlipForConditionalGeneration(cfg).eval()


def tiny_blip2(seed: int = 0) -> Blip2ForConditionalGeneration:
    torch.manual_seed(seed)
    text = dict(model_type="opt", vocab_size=120, hidden_size=40, ffn_dim=64, num_hidden_layers=1,
                num_attention_heads=4, word_embed_proj_dim=40, pad_token_id=1)
    qformer = qformer_config(Blip2QFormerConfig).to_dict()
    cfg = Blip2Config(vision_config=_vision(), qformer_config=qformer, text_config=text,
                      num_query_tokens=QUERY, image_token_index=119)
    return Blip2ForConditionalGeneration(cfg).eval()


def composite_inputs(model, batch: int = 2, prompt: int = 3, target: int = 4, seed: int = 2) -> dict:
    """Inputs for a tiny InstructBLIP / BLIP-2: the image placeholder tokens, then a prompt; labels."""
    g = torch.Generator().manual_seed(seed)
    tok = model.config.image_token_id
    ids = torch.cat([torch.full((batch, QUERY), tok), torch.randint(2, 100, (batch, prompt), generator=g)], 1)
    out = dict(pixel_values=torch.randn(batch, 3, 16, 16, generator=g), input_ids=ids,
               attention_mask=torch.ones_like(ids))
    if "Instruct" in type(model).__name__:
        out["qformer_input_ids"] = torch.randint(1, 99, (batch, 5), generator=g)
        out["qformer_attention_mask"] = torch.ones(batch, 5, dtype=torch.long)
    if model.config.use_decoder_only_language_model:
        labels = ids.clone()
        labels[:, :QUERY + 1] = -100
    else:
        labels = torch.randint(2, 100, (batch, target), generator=g)
    out["labels"] = labels
    return out
