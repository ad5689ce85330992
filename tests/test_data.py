import json

import pytest
import torch

from petal.data.collate import ProcessorCollator, WordCollator, format_prompt, training_target
from petal.data.folder import FolderDataset
from petal.data.hub import RecordDataset, map_aokvqa, map_flickr30k, map_okvqa, map_textcaps, map_textvqa
from petal.data.sources import load_data
from petal.data.synthetic import FAMILIES, SyntheticShapes
from petal.data.tokenizer import WordTokenizer, embedded_tokenizer


def test_synthetic_is_deterministic_and_seeded():
    a = SyntheticShapes("train", num_scenes=12, seed=3)
    b = SyntheticShapes("train", num_scenes=12, seed=3)
    c = SyntheticShapes("train", num_scenes=12, seed=4)
    assert len(a) == 12 * len(FAMILIES)
    for ra, rb in zip(a, b):
        assert ra["question"] == rb["question"] and ra["answers"] == rb["answers"]
        assert torch.equal(ra["image"], rb["image"])
    assert any(not torch.equal(ra["image"], rc["image"]) for ra, rc in zip(a, c))
    img = a[0]["image"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1


def test_synthetic_splits_are_disjoint():
    splits = {s: SyntheticShapes(s, num_scenes=60, families=("caption",)) for s in ("train", "val", "test")}
    keys = {s: {scene.key() for scene in d.scenes} for s, d in splits.items()}
    images = {s: {d[i]["image"].numpy().tobytes() for i in range(len(d))} for s, d in splits.items()}
    for x, y in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not keys[x] & keys[y]
        assert not images[x] & images[y]
    assert all(len(k) == 60 for k in keys.values())


def test_synthetic_answers_match_the_scene():
    d = SyntheticShapes("val", num_scenes=20)
    for i in range(0, len(d), len(FAMILIES)):
        scene = d.scenes[i // len(FAMILIES)]
        caption, colour, shape, spatial = d[i], d[i + 1], d[i + 2], d[i + 3]
        assert all(c in " ".join(caption["answers"]) for c in scene.colours + scene.shapes)
        assert colour["answers"][0] in scene.colours and shape["answers"][0] in scene.shapes
        side = spatial["question"].split()[4]
        expected = scene.colours[0] if side in ("left", "top") else scene.colours[1]
        assert spatial["answers"] == [expected]


def test_synthetic_rotated_domain_rotates_colour_channels():
    std = SyntheticShapes("test", num_scenes=3, families=("colour",))
    rot = SyntheticShapes("test", num_scenes=3, families=("colour",), domain="rotated")
    for a, b in zip(std, rot):
        assert a["answers"] == b["answers"] and a["question"] == b["question"]
        assert torch.equal(b["image"], a["image"][[1, 2, 0]])
    with pytest.raises(ValueError, match="domain"):
        SyntheticShapes("test", 2, domain="sepia")


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes("dev")
    with pytest.raises(ValueError, match="families"):
        SyntheticShapes("train", 2, families=("colours",))
    with pytest.raises(ValueError, match="num_scenes"):
        SyntheticShapes("train", 0)


def test_tokenizer_round_trip_and_save(tmp_path):
    tok = embedded_tokenizer()
    ids = tok.encode("Question: what colour is the left shape? Short answer:")
    assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids) == "question: what colour is the left shape? short answer:"
    tok.save(tmp_path / "t.json")
    again = WordTokenizer.load(tmp_path / "t.json")
    assert again.vocab == tok.vocab
    assert tok.encode("a zebra")[1] == tok.unk_token_id


def test_word_collator_shapes():
    tok = embedded_tokenizer()
    d = SyntheticShapes("train", num_scenes=3)
    batch = WordCollator(tok, num_query_tokens=4, image_size=24)(list(d)[:5])
    B = 5
    assert batch["pixel_values"].shape == (B, 3, 24, 24)
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    L = batch["qformer_input_ids"].shape[1]
    assert batch["input_ids"].shape == (B, 4 + L)
    assert (batch["input_ids"][:, :4] == tok.image_token_id).all()
    prompt_lengths = batch["qformer_attention_mask"].sum(1).tolist()
    assert batch["attention_mask"].sum(1).tolist() == [4 + n for n in prompt_lengths]
    labels = batch["labels"]
    assert labels.shape[0] == B and (labels == -100).any()
    first = [i for i in labels[1].tolist() if i != -100]
    assert tok.decode(first) == training_target(d[1])
    assert batch["meta"]["answers"][0] == d[0]["answers"]


def test_prompt_and_target():
    vqa = {"id": "1", "task": "vqa", "question": "what is it?", "answers": ["cat", "dog", "dog"]}
    cap = {"id": "2", "task": "caption", "question": "A short image caption:", "answers": ["x", "y"]}
    assert format_prompt(vqa) == "Question: what is it? Short answer:"
    assert format_prompt(cap) == "A short image caption:"
    assert training_target(vqa) == "dog"
    assert training_target(cap) in ("x", "y") and training_target(cap) == training_target(dict(cap))
    with pytest.raises(ValueError, match="answer"):
        training_target({"id": "3", "task": "vqa", "answers": []})


def _processor(num_query_tokens=4):
    from transformers import BlipImageProcessor, InstructBlipProcessor

    tok = embedded_tokenizer().to_hf()
    image_processor = BlipImageProcessor(size={"height": 24, "width": 24})
    return InstructBlipProcessor(image_processor, tok, embedded_tokenizer().to_hf(),
                                 num_query_tokens=num_query_tokens)


def test_processor_collator_encoder_decoder():
    proc = _processor()
    d = SyntheticShapes("train", num_scenes=2)
    batch = ProcessorCollator(proc)(list(d)[:4])
    assert batch["pixel_values"].shape == (4, 3, 24, 24)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    assert batch["qformer_input_ids"].shape[0] == 4
    image_id = proc.tokenizer.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum(1).tolist() == [4] * 4
    target = [i for i in batch["labels"][1].tolist() if i != -100]
    assert proc.tokenizer.decode(target, skip_special_tokens=True) == training_target(d[1])


def test_processor_collator_decoder_only_masks_the_prompt():
    proc = _processor()
    records = list(SyntheticShapes("train", num_scenes=2))[1:3]
    batch = ProcessorCollator(proc, encoder_decoder=False)(records)
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape
    for i, r in enumerate(records):
        kept = [t for t in labels[i].tolist() if t != -100]
        n = len(kept)
        assert kept[-1] == proc.tokenizer.eos_token_id
        assert proc.tokenizer.decode(kept, skip_special_tokens=True) == training_target(r)
        real = int(batch["attention_mask"][i].sum())
        assert ids[i, real - n:real].tolist() == kept  # the target sits right after the prompt
    gen = ProcessorCollator(proc, encoder_decoder=False, with_labels=False)(records)
    assert "labels" not in gen and (gen["attention_mask"][:, -1] == 1).all()  # left-padded for generation


def _pil(color):
    from PIL import Image

    return Image.new("RGB", (20, 16), color)


def test_record_mappings_on_hub_shaped_rows():
    import datasets

    flickr = datasets.Dataset.from_dict({"image": [_pil("red")], "caption": [["a dog runs", "a dog"]],
                                         "img_id": ["7"], "split": ["train"]})
    rec = RecordDataset(flickr, map_flickr30k)[0]
    assert rec["task"] == "caption" and rec["answers"] == ["a dog runs", "a dog"] and rec["id"] == "7"
    assert rec["image"].size == (20, 16)

    textcaps = {"image": _pil("blue"), "question_id": 3, "caption_str": "a sign",
                "reference_strs": ["a sign", "a stop sign"]}
    assert map_textcaps(textcaps, 0)["answers"] == ["a sign", "a stop sign"]
    assert map_textcaps({**textcaps, "reference_strs": None}, 0)["answers"] == ["a sign"]

    okvqa_m4 = {"image": None, "question": "what is it?", "question_id": 5,
                "answers": [{"answer": "dog", "raw_answer": "dogs", "answer_confidence": "yes",
                             "answer_id": 1}]}
    okvqa_lmms = {"image": None, "question": "what is it?", "question_id": 5, "answers": ["dog", "dog"]}
    assert map_okvqa(okvqa_m4, 0)["answers"] == ["dog"]
    assert map_okvqa(okvqa_lmms, 0)["answers"] == ["dog", "dog"]

    aok = {"image": None, "question": "why?", "question_id": "x", "direct_answers": str(["rain"] * 10),
           "choices": ["a", "b"], "correct_choice_idx": 0, "difficult_direct_answer": True}
    assert map_aokvqa(aok, 0) == {"id": "x", "image": None, "task": "vqa", "question": "why?",
                                  "answers": ["rain"] * 10, "metric": "aokvqa", "difficult": True}
    tv = datasets.Dataset.from_dict({"image": [_pil("green")], "question": ["what does it say?"],
                                     "answers": [["stop"] * 10], "question_id": [9]})
    rec = RecordDataset(tv, map_textvqa)[0]
    assert rec["task"] == "vqa" and rec["answers"] == ["stop"] * 10 and rec["id"] == "9"
    assert rec["metric"] == "vqa" and map_flickr30k(flickr[0], 0)["metric"] == "caption"
    with pytest.raises(ValueError, match="answers"):
        map_okvqa({**okvqa_lmms, "answers": [3]}, 0)


def test_folder_loader(tmp_path):
    (tmp_path / "images").mkdir()
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        _pil(color).save(tmp_path / "images" / name)
    lines = [{"image": "images/a.png", "question": "what colour?", "answers": ["red"], "split": "train"},
             {"image": "images/b.png", "captions": ["a blue square"], "split": "val"},
             {"image": "images/b.png", "question": "shape?", "answer": "square"}]
    (tmp_path / "annotations.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    train = FolderDataset(tmp_path, "train")
    val = load_data(str(tmp_path), "val")
    assert [r["task"] for r in train] == ["vqa", "vqa"]
    assert [r["task"] for r in val] == ["caption", "vqa"]
    assert train[0]["image"].getpixel((0, 0)) == (255, 0, 0)
    assert val[0]["answers"] == ["a blue square"] and val[0]["question"] == "A short image caption:"
    batch = WordCollator(embedded_tokenizer(), 2, 16)(list(val))
    assert batch["pixel_values"].shape == (2, 3, 16, 16)

    missing = {"image": "images/missing.png", "captions": ["x"]}
    (tmp_path / "test.jsonl").write_text(json.dumps(missing) + "\n")
    with pytest.raises(ValueError, match="missing.png does not exist"):
        FolderDataset(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"image": "images/a.png"}) + "\n")
    with pytest.raises(ValueError, match="answers"):
        FolderDataset(tmp_path, "test")


def test_folder_finds_unreadable_images_up_front(tmp_path):
    (tmp_path / "images").mkdir()
    _pil("red").save(tmp_path / "images" / "good.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png at all")
    _pil("blue").save(tmp_path / "images" / "cut.png")
    data = (tmp_path / "images" / "cut.png").read_bytes()
    (tmp_path / "images" / "cut.png").write_bytes(data[: len(data) // 2])  # truncated
    lines = [{"image": "images/good.png", "captions": ["a red square"]},
             {"image": "images/broken.png", "captions": ["x"]},
             {"image": "images/broken.png", "question": "q?", "answers": ["y"]},
             {"image": "images/cut.png", "captions": ["z"]},
             {"image": "images/gone.png", "captions": ["w"]}]
    (tmp_path / "annotations.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(ValueError, match=r"3 image\(s\) .* cannot be used, e\.g\. .*broken\.png is not a "
                       r"readable image .*--skip-bad-images"):
        FolderDataset(tmp_path, "train")
    said = []
    data = load_data(str(tmp_path), "train", skip_bad_images=True, log=said.append)
    assert [r["answers"] for r in data] == [["a red square"]] and data.skipped == 4
    assert said and "skipped 4 record(s) of 3 missing or unreadable image(s)" in said[0]
    (tmp_path / "val.jsonl").write_text(json.dumps(lines[1]) + "\n")
    with pytest.raises(ValueError, match="no record .* has a readable image"):
        FolderDataset(tmp_path, "val", skip_bad_images=True)


def test_folder_metric_and_difficult_fields(tmp_path):
    (tmp_path / "images").mkdir()
    _pil("red").save(tmp_path / "images" / "a.png")
    lines = [{"image": "images/a.png", "question": "q?", "answers": ["red"] * 10, "metric": "aokvqa",
              "difficult": True}]
    (tmp_path / "annotations.jsonl").write_text(json.dumps(lines[0]) + "\n")
    rec = FolderDataset(tmp_path, "train").records[0]
    assert rec["metric"] == "aokvqa" and rec["difficult"] is True
    (tmp_path / "annotations.jsonl").write_text(json.dumps({**lines[0], "metric": "caption"}) + "\n")
    with pytest.raises(ValueError, match="annotations.jsonl:1: a vqa record cannot use metric 'caption'"):
        FolderDataset(tmp_path, "train")
    (tmp_path / "annotations.jsonl").write_text(json.dumps({**lines[0], "difficult": "yes"}) + "\n")
    with pytest.raises(ValueError, match="difficult must be true or false"):
        FolderDataset(tmp_path, "train")


def test_load_data_rejects_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match="synthetic"):
        load_data("coco-nonexistent", "train")
    with pytest.raises(ValueError, match="split"):
        load_data("synthetic", "dev")
