"""Several instructions per image through the pipeline: records -> collators -> (B, n, L) Q-Former
inputs -> AIM's merge in training, evaluation and generate; ``petal train`` / ``petal eval`` on the
synthetic data and on a folder data set."""

import json

import pytest
import torch

import petal
from petal.cli import main
from petal.data.collate import InstructionCollator, ProcessorCollator, WordCollator, model_inputs
from petal.data.instructions import CAPTION_TEMPLATES, FOCUS_INSTRUCTIONS, template_pool
from petal.data.sources import FolderDataset
from petal.data.synthetic import SyntheticShapes
from petal.data.tokenizer import embedded_tokenizer
from petal.embedded import build_embedded_model, save_base
from petal.layers.aim import InstructionMerge
from petal.train import TrainSettings, train_model

from .test_data import _pil, _processor
from .test_train import SMALL, SPEC


def _config(source, count=3):
    cfg = SMALL.to_dict()
    cfg["instructions"] = {"source": source, "count": count}
    return petal.PetalConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def records():
    return list(SyntheticShapes("train", num_scenes=2, families=("spatial", "caption"), instructions=True))


def test_synthetic_records_carry_the_focus_set_and_the_vocabulary_knows_it(records):
    assert all(r["instructions"] == list(FOCUS_INSTRUCTIONS) for r in records)
    assert "instructions" not in SyntheticShapes("train", num_scenes=1)[0]
    tok = embedded_tokenizer()
    for text in FOCUS_INSTRUCTIONS + CAPTION_TEMPLATES + tuple(template_pool(records[0])):
        assert tok.unk_token_id not in tok.encode(text), text


def test_word_collator_emits_batch_by_instruction_by_length(records):
    tok = embedded_tokenizer()
    batch = WordCollator(tok, 4, 32)(records)
    ids, mask = batch["qformer_input_ids"], batch["qformer_attention_mask"]
    assert ids.shape[:2] == (4, 3) and mask.shape == ids.shape
    assert tok.decode(ids[2, 1][mask[2, 1] == 1].tolist()) == FOCUS_INSTRUCTIONS[1].lower()
    assert batch["input_ids"].shape[0] == 4  # the language model still reads the prompt
    with pytest.raises(ValueError, match="same number of instructions"):
        WordCollator(tok, 4, 32)([records[0], {**records[1], "instructions": ["one"]}])
    with pytest.raises(ValueError, match="non-empty list"):
        WordCollator(tok, 4, 32)([records[0], {**records[1], "instructions": None}])


def test_processor_collator_emits_batch_by_instruction_by_length(records):
    proc = _processor()
    batch = ProcessorCollator(proc)(records)
    assert batch["qformer_input_ids"].shape[:2] == (4, 3)
    assert batch["qformer_attention_mask"].shape == batch["qformer_input_ids"].shape
    text = proc.qformer_tokenizer.decode(batch["qformer_input_ids"][0, 2], skip_special_tokens=True)
    assert text == FOCUS_INSTRUCTIONS[2].lower().replace("?", " ?")
    decoder_only = ProcessorCollator(proc, encoder_decoder=False)(records)
    assert decoder_only["qformer_input_ids"].shape[:2] == (4, 3)


def test_instruction_collator_follows_the_config(records):
    plain = [{k: v for k, v in r.items() if k != "instructions"} for r in records]
    seen = []
    sink = lambda rs: seen.append([r["instructions"] for r in rs]) or {}  # noqa: E731
    InstructionCollator.for_config(sink, _config("focus", 2), train=True)(plain)
    assert seen[-1] == [list(FOCUS_INSTRUCTIONS[:2])] * 4
    InstructionCollator.for_config(sink, SMALL, train=True)(records)  # "record": the records' own
    assert seen[-1] == [list(FOCUS_INSTRUCTIONS)] * 4
    InstructionCollator.for_config(sink, petal.PetalConfig(method="lora"), train=True)(records)
    assert seen[-1] == [None] * 4  # LoRA cannot merge: one instruction, the prompt
    InstructionCollator.for_config(sink, None, train=False)(records)  # an unpatched model
    assert seen[-1] == [None] * 4

    random_train = InstructionCollator.for_config(sink, _config("random"), train=True)
    torch.manual_seed(0)
    random_train(plain)
    random_train(plain[1:] + plain[:1])  # the same records batched otherwise (another epoch's shuffle)
    random_train(plain)
    torch.manual_seed(1)
    random_train(plain)
    first, reshuffled, again, other_seed = seen[-4:]
    assert first == again  # the same batch draws the same: a resumed run replays it
    assert reshuffled != first[1:] + first[:1] and other_seed != first
    for r, drawn in zip(plain, first):
        assert len(drawn) == 3 and set(drawn) <= set(template_pool(r))
    random_eval = InstructionCollator.for_config(sink, _config("random"), train=False)
    random_eval(plain)
    random_eval(list(reversed(plain)))
    assert seen[-2] == list(reversed(seen[-1]))  # evaluation: the draw follows the record id


def test_generate_merges_the_instructions_of_each_image(records):
    model, tok = build_embedded_model(seed=0, spec=SPEC)
    petal.patch(model, SMALL)
    batch = model_inputs(WordCollator(tok, 4, 32)(records))
    single = {**batch, "qformer_input_ids": batch["qformer_input_ids"][:, 0],
              "qformer_attention_mask": batch["qformer_attention_mask"][:, 0]}
    same = {**batch, "qformer_input_ids": single["qformer_input_ids"][:, None].expand(-1, 3, -1),
            "qformer_attention_mask": single["qformer_attention_mask"][:, None].expand(-1, 3, -1)}
    keys = ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask")
    with torch.no_grad():
        for name, value in model.qformer.named_parameters():
            if "up" in name or "router" in name:
                value.normal_(0, 0.5)  # adapters away from their identity start
        model.qformer.petal_instruction_merge.logits.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        gen = lambda b: model.generate(**{k: b[k] for k in keys}, num_beams=2, max_new_tokens=4)  # noqa: E731
        assert torch.equal(gen(same), gen(single))  # three copies of one instruction merge to it
        features = model.get_image_features(batch["pixel_values"], batch["qformer_input_ids"],
                                            batch["qformer_attention_mask"]).pooler_output
        parts = [model.get_image_features(batch["pixel_values"], batch["qformer_input_ids"][:, i],
                                          batch["qformer_attention_mask"][:, i]).pooler_output
                 for i in range(3)]
        w = torch.softmax(torch.tensor([1.0, -2.0, 0.5]), 0)
        torch.testing.assert_close(features, sum(wi * p for wi, p in zip(w, parts)), rtol=1e-5, atol=1e-6)
    petal.unpatch(model)
    assert "get_image_features" not in model.__dict__


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny embedded model of test_train (untrained), saved where ``--model`` can load it."""
    path = tmp_path_factory.mktemp("base") / "tiny"
    save_base(*build_embedded_model(spec=SPEC), path, {"steps": 0, "note": "untrained, for tests"})
    return path


@pytest.fixture
def merges_seen(monkeypatch):
    """(n, inside generate) for every merge of several instructions, across everything the CLI runs."""
    seen, state = [], {"generating": False}
    real_merge = InstructionMerge.merge

    def merge(self, stacked):
        seen.append((stacked.shape[1], state["generating"]))
        return real_merge(self, stacked)

    from transformers import InstructBlipForConditionalGeneration as Model
    real_generate = Model.generate

    def generate(self, *args, **kwargs):
        state["generating"] = True
        try:
            return real_generate(self, *args, **kwargs)
        finally:
            state["generating"] = False

    monkeypatch.setattr(InstructionMerge, "merge", merge)
    monkeypatch.setattr(Model, "generate", generate)
    return seen


def _train_and_eval(tmp_path, base_dir, config, data, extra=()):
    run = tmp_path / "run"
    (tmp_path / "run.json").write_text(json.dumps({
        "model": str(base_dir), "data": data, "petal": config.to_dict(), "batch_size": 4, "lr": 1e-2,
        "num_beams": 1, "max_new_tokens": 3}))
    assert main(["train", "--config", str(tmp_path / "run.json"), "--max-steps", "2", "--train-limit", "2",
                 "--eval-limit", "2", "--output-dir", str(run), "--no-progress", *extra]) == 0
    report = tmp_path / "eval.json"
    assert main(["eval", "--adapter", str(run / "adapter"), "--split", "test", "--limit", "2", "--beams", "1",
                 "--max-new-tokens", "3", "--output", str(report)]) == 0
    return run, json.loads(report.read_text())


def test_cli_trains_evaluates_and_generates_with_several_instructions_on_synthetic_data(
        tmp_path, base_dir, merges_seen, capsys):
    run, report = _train_and_eval(tmp_path, base_dir, _config("random"), "synthetic",
                                  ["--families", "spatial"])
    assert "trained 2 steps" in capsys.readouterr().out
    assert {n for n, _ in merges_seen} == {3}
    assert any(not g for _, g in merges_seen) and any(g for _, g in merges_seen)  # forward and generate
    from safetensors.torch import load_file

    saved = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    logits = saved["qformer.petal_instruction_merge.logits"]
    assert (logits[:3] != 0).all() and logits[3] == 0  # three instructions per image were merged and trained
    assert len(report["predictions"]) == 2


def test_cli_trains_evaluates_and_generates_a_folder_with_instructions(tmp_path, base_dir, merges_seen):
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    lines = []
    for i, color in enumerate(("red", "blue", "green", "yellow")):
        _pil(color).save(folder / "images" / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "question": "what colour is the shape?", "answers": [color],
                      "instructions": ["what objects are in the picture?",
                                       f"what colour is the {color} shape?"],
                      "split": "train" if i < 2 else "test"})
    (folder / "annotations.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert FolderDataset(folder, "test")[0]["instructions"][1] == "what colour is the green shape?"
    _train_and_eval(tmp_path, base_dir, SMALL, str(folder), ["--eval-split", "test"])
    assert {n for n, _ in merges_seen} == {2}
    assert any(g for _, g in merges_seen) and any(not g for _, g in merges_seen)
    (folder / "bad.jsonl").write_text(json.dumps({**lines[0], "instructions": "one string"}) + "\n")
    (folder / "bad.jsonl").rename(folder / "val.jsonl")
    with pytest.raises(ValueError, match="val.jsonl:1: 'instructions' must be a non-empty list"):
        FolderDataset(folder, "val")


def test_several_instructions_need_aim_and_fit_max_instructions():
    with pytest.raises(ValueError, match="only AIM's merge takes"):
        petal.PetalConfig(method="lora", instructions=petal.InstructionSettings(source="focus"))
    with pytest.raises(ValueError, match="exceeds aim.max_instructions"):
        petal.PetalConfig(instructions=petal.InstructionSettings(source="random", count=5))
    with pytest.raises(ValueError, match="at most 3 for source 'focus'"):
        petal.InstructionSettings(source="focus", count=4)


def test_random_instructions_replay_when_training_resumes(tmp_path):
    data = SyntheticShapes("train", num_scenes=8, families=("spatial", "colour"))
    settings = TrainSettings(max_steps=4, batch_size=4, lr=5e-3, warmup_steps=1, progress=False, seed=0)
    cfg = _config("random")

    def patched(seed):
        model, tok = build_embedded_model(seed=0, spec=SPEC)
        torch.manual_seed(seed)
        petal.patch(model, cfg)
        return model, InstructionCollator.for_config(WordCollator(tok, 4, 32), cfg, train=True)

    straight, collator = patched(1)
    train_model(straight, data, collator, settings, output_dir=tmp_path / "a")

    def stop_at_two(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    first, collator = patched(1)
    with pytest.raises(KeyboardInterrupt):
        train_model(first, data, collator, settings, output_dir=tmp_path / "b", on_step=stop_at_two,
                    log=lambda s: None)
    resumed, collator = patched(5)
    train_model(resumed, data, collator, settings, output_dir=tmp_path / "b", resume=True, log=lambda s: None)
    a = {n: p for n, p in straight.named_parameters() if p.requires_grad}
    for name, p in resumed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, a[name], rtol=1e-5, atol=1e-6, msg=name)
