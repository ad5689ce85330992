import pytest
import torch

import petal
from petal.config import AIMConfig, DMAConfig, PetalConfig, SIBConfig
from petal.layers.aim import AIMEmbeddings, InstructionMerge

from .petal_models import QUERY, composite_inputs, qformer_inputs, tiny_instructblip, tiny_qformer


def _aim_only(**kw):
    return PetalConfig(dma=DMAConfig(enabled=False), aim=AIMConfig(**kw), sib=SIBConfig(enabled=False))


class _Identity(torch.nn.Module):
    def forward(self, x, query_embeds=None):
        return x


def _layer(gate="softmax", identity=True, K=3, d=8, r=4):
    torch.manual_seed(0)
    return AIMEmbeddings(_Identity(), d, K, r, gate, 0.6, 0.4, identity)


def test_identity_init_leaves_embeddings_unchanged():
    e = torch.randn(2, 5, 8)
    torch.testing.assert_close(_layer()(e), e)


def test_official_formula_with_uniform_gate():
    layer = _layer(gate="uniform", identity=False)
    e = torch.randn(2, 5, 8)
    experts = [e @ layer.down[k].T + layer.down_bias[k] for k in range(3)]
    experts = [h @ layer.up[k].T + layer.up_bias[k] for k, h in enumerate(experts)]
    ref = 0.6 * e + 0.4 * sum(experts) / 3
    torch.testing.assert_close(layer(e), ref)


def test_softmax_router_reads_the_mean_instruction_embedding():
    layer = _layer()
    with torch.no_grad():
        layer.router.weight.normal_()
    e = torch.randn(2, 6, 8)
    g = layer.gates(e, query_length=2)
    torch.testing.assert_close(g.sum(-1), torch.ones(2))
    torch.testing.assert_close(g, torch.softmax(layer.router(e[:, 2:].mean(1)), -1))
    e2 = e.clone()
    e2[:, :2] += 5  # query tokens do not route
    torch.testing.assert_close(layer.gates(e2, 2), g)
    assert torch.allclose(_layer(gate="uniform").gates(e, 2), torch.full((2, 3), 1 / 3))


def test_aim_trains_and_changes_outputs():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q, _aim_only())
    assert isinstance(q.embeddings, AIMEmbeddings)
    q.train()
    q(**inp).last_hidden_state.square().mean().backward()
    assert q.embeddings.up.grad.abs().sum() > 0
    assert q.embeddings.down.grad.abs().sum() == 0  # B = 0 blocks it at init, as with LoRA


def test_instruction_merge_weights():
    m = InstructionMerge(3, "softmax")
    w = m.weights(2, torch.zeros(1))
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="max_instructions is 3"):
        m.weights(4, torch.zeros(1))
    assert InstructionMerge(3, "uniform").logits is None


def _run_one(q, inp, ids, text_mask=None):
    text = ids.shape[1]
    mask = torch.ones(ids.shape[0], QUERY + text, dtype=torch.long)
    if text_mask is not None:
        mask[:, QUERY:] = text_mask
    return q(input_ids=ids, attention_mask=mask, query_embeds=inp["query_embeds"],
             encoder_hidden_states=inp["encoder_hidden_states"]).last_hidden_state


def test_multi_instruction_qformer_merges_per_instruction_outputs():
    q, inp = tiny_qformer(), qformer_inputs()
    petal.patch(q, _aim_only(instruction_merge="softmax"))
    with torch.no_grad():
        q.petal_instruction_merge.logits.copy_(torch.tensor([0.3, -0.2, 0.0, 0.0]))
        ids = torch.randint(1, 99, (2, 2, 5))
        single = [_run_one(q, inp, ids[:, i]) for i in range(2)]
        multi = q(input_ids=ids, query_embeds=inp["query_embeds"],
                  encoder_hidden_states=inp["encoder_hidden_states"]).last_hidden_state
    w = torch.softmax(torch.tensor([0.3, -0.2]), 0)
    torch.testing.assert_close(multi, w[0] * single[0] + w[1] * single[1], rtol=1e-5, atol=1e-5)

    text_mask = torch.ones(2, 2, 5, dtype=torch.long)
    text_mask[0, 1, -2:] = 0  # padding in one instruction
    with torch.no_grad():
        single = [_run_one(q, inp, ids[:, i], text_mask[:, i]) for i in range(2)]
        multi = q(input_ids=ids, attention_mask=text_mask, query_embeds=inp["query_embeds"],
                  encoder_hidden_states=inp["encoder_hidden_states"]).last_hidden_state
    torch.testing.assert_close(multi, w[0] * single[0] + w[1] * single[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_mask for 2 instructions"):
        q(input_ids=ids, attention_mask=torch.ones(2, 3), query_embeds=inp["query_embeds"],
          encoder_hidden_states=inp["encoder_hidden_states"])


def test_multi_instruction_instructblip_through_qformer_input_ids():
    model = tiny_instructblip("t5")
    petal.patch(model, _aim_only(instruction_merge="uniform"))
    inp = composite_inputs(model)
    inp["decoder_input_ids"] = inp.pop("labels")
    ids = torch.randint(1, 99, (2, 3, 5))
    with torch.no_grad():
        multi = model(**{**inp, "qformer_input_ids": ids,
                         "qformer_attention_mask": torch.ones(2, 3, 5, dtype=torch.long)})
    assert multi.qformer_outputs.last_hidden_state.shape[0] == 2
    q_single = []
    with torch.no_grad():
        for i in range(3):
            o = model(**{**inp, "qformer_input_ids": ids[:, i],
                         "qformer_attention_mask": torch.ones(2, 5, dtype=torch.long)})
            q_single.append(o.qformer_outputs.last_hidden_state)
    torch.testing.assert_close(multi.qformer_outputs.last_hidden_state, sum(q_single) / 3,
                               rtol=1e-5, atol=1e-5)
