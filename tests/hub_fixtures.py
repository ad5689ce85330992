"""Tiny local copies of the five hub data sets, in each one's real schema and file layout.

Each builder writes parquet files (``Dataset.to_parquet``, which keeps the ``datasets`` features, images
included) laid out as the hub serves them at the revision petal reads, so the tests load them through
``petal.data.hub.load_hub(..., path=<the copy>)``: the same ``load_dataset`` call the hub path makes.
Where each schema comes from:

* flickr30k — ``nlphuji/flickr30k`` is a loading script (``flickr30k.py``, config ``TEST``, one split
  ``test``; features image, caption [string], sentids [string], split, img_id, filename). Its parquet
  export (``refs/convert/parquet``) holds ``TEST/test/*.parquet``. The ``split`` column holds the Karpathy
  split of each image.
* textcaps — ``lmms-lab/TextCaps`` is a parquet repository; its card's ``dataset_info`` lists question_id,
  question, image, image_id, image_classes, flickr_original_url, flickr_300k_url, image_width (int64),
  image_height (int64), set_name, image_name, image_path, caption_id [int64], caption_str [string],
  reference_strs [string]; splits train / val / test in ``data/<split>-*`` (its card's ``configs``). One row
  per image; the test split's captions are withheld.
* okvqa — ``HuggingFaceM4/OK-VQA`` is a loading script (``OK-VQA.py``, splits train / validation); its
  features, as the copy ``thomasgauthier/okvqa`` made from it shows in its card: image, question_type,
  confidence (int32), answers [{answer, raw_answer, answer_confidence, answer_id (int64)}], image_id
  (int64), answer_type, question_id (int64), question. Parquet export: ``default/<split>/*.parquet``.
* aokvqa — ``HuggingFaceM4/A-OKVQA`` is a parquet repository (``data/<split>-00000-of-00001-*.parquet``,
  splits train / validation / test) with image, question_id, question, choices [string],
  correct_choice_idx (int8), direct_answers (a *string* holding a Python list), difficult_direct_answer
  (bool), rationales [string]; the test split's answers are hidden.
* textvqa — ``facebook/textvqa`` is a loading script (``textvqa.py``; its card's ``dataset_info``: image_id,
  question_id (int32), question, question_tokens [string], image, image_width (int32), image_height
  (int32), flickr_original_url, flickr_300k_url, answers [string], image_classes [string], set_name,
  ocr_tokens [string]; splits train / validation / test, the test answers ten empty strings). Parquet
  export: ``textvqa/<split>/*.parquet``.
"""

from __future__ import annotations

from pathlib import Path

COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
URL = "https://example.invalid/image.jpg"


def _image(i: int):
    from PIL import Image

    return Image.new("RGB", (12, 10), COLOURS[i % len(COLOURS)])


def _write(rows: dict, features: dict, path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(str(path))


def _types():
    import datasets

    return (datasets.Value("string"), datasets.Value("int32"), datasets.Value("int64"), datasets.Image())


def flickr30k(root: Path, per_split: int = 3) -> Path:
    S, _, _, IMAGE = _types()
    n = 3 * per_split
    captions = [[f"a {COLOURS[i % 6]} square on a grey wall.", f"A {COLOURS[i % 6]} block."]
                + [f"caption {k} of image {i}" for k in range(3)] for i in range(n)]
    rows = {"image": [_image(i) for i in range(n)], "caption": captions,
            "sentids": [[str(5 * i + k) for k in range(5)] for i in range(n)],
            "split": [s for s in ("train", "val", "test") for _ in range(per_split)],
            "img_id": [str(i) for i in range(n)], "filename": [f"{1000 + i}.jpg" for i in range(n)]}
    features = {"image": IMAGE, "caption": [S], "sentids": [S], "split": S, "img_id": S, "filename": S}
    _write(rows, features, root / "TEST" / "test" / "0000.parquet")
    return root


def textcaps(root: Path, per_split: int = 3) -> Path:
    S, _, I64, IMAGE = _types()
    n = per_split
    features = {"question_id": S, "question": S, "image": IMAGE, "image_id": S, "image_classes": [S],
                "flickr_original_url": S, "flickr_300k_url": S, "image_width": I64, "image_height": I64,
                "set_name": S, "image_name": S, "image_path": S, "caption_id": [I64], "caption_str": [S],
                "reference_strs": [S]}
    for split in ("train", "val", "test"):
        ids = [f"{split}{i:04d}" for i in range(n)]
        caps = [[] if split == "test" else [f'a sign that says "{c.upper()}".', f"the word {c} in {c} paint"]
                for c in COLOURS[:n]]
        rows = {"question_id": [f"q-{i}" for i in ids],
                "question": ["Provide a one-sentence caption for the provided image."] * n,
                "image": [_image(i) for i in range(n)], "image_id": ids, "image_classes": [["Sign"]] * n,
                "flickr_original_url": [URL] * n, "flickr_300k_url": [URL] * n, "image_width": [12] * n,
                "image_height": [10] * n, "set_name": [split] * n, "image_name": ids,
                "image_path": [f"{split}/{i}.jpg" for i in ids],
                "caption_id": [list(range(len(c))) for c in caps], "caption_str": caps,
                "reference_strs": caps}
        _write(rows, features, root / "data" / f"{split}-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n"
                                    + "".join(f"  - split: {s}\n    path: data/{s}-*\n"
                                              for s in ("train", "val", "test")) + "---\n")
    return root


def okvqa(root: Path, per_split: int = 3) -> Path:
    S, I32, I64, IMAGE = _types()
    n = per_split
    answer = {"answer": S, "raw_answer": S, "answer_confidence": S, "answer_id": I64}
    features = {"image": IMAGE, "question_type": S, "confidence": I32, "answers": [answer], "image_id": I64,
                "answer_type": S, "question_id": I64, "question": S}
    for base, split in ((0, "train"), (1000, "validation")):
        answers = [[{"answer": a, "raw_answer": a + "s" if k % 2 else a, "answer_confidence": "yes",
                     "answer_id": k + 1} for k, a in enumerate([COLOURS[i % 6]] * 6 + ["grey"] * 4)]
                   for i in range(n)]
        rows = {"image": [_image(i) for i in range(n)], "question_type": ["other"] * n, "confidence": [3] * n,
                "answers": answers, "image_id": [base + i for i in range(n)], "answer_type": ["other"] * n,
                "question_id": [base * 10 + i for i in range(n)],
                "question": ["What colour is the square?"] * n}
        _write(rows, features, root / "default" / split / "0000.parquet")
    return root


def aokvqa(root: Path, per_split: int = 3) -> Path:
    import datasets

    S, _, _, IMAGE = _types()
    n = per_split
    features = {"image": IMAGE, "question_id": S, "question": S, "choices": [S],
                "correct_choice_idx": datasets.Value("int8"), "direct_answers": S,
                "difficult_direct_answer": datasets.Value("bool"), "rationales": [S]}
    for split in ("train", "validation", "test"):
        hidden = split == "test"
        rows = {"image": [_image(i) for i in range(n)],
                "question_id": [f"{split[:2]}{i}xq" for i in range(n)],
                "question": ["What colour is the square?"] * n,
                "choices": [[c, "grey", "black", "pink"] for c in COLOURS[:n]],
                "correct_choice_idx": [None if hidden else 0] * n,
                "direct_answers": ["[]" if hidden else repr([c] * 7 + ["grey", "light " + c, c + "ish"])
                                   for c in COLOURS[:n]],
                "difficult_direct_answer": [i == 1 and not hidden for i in range(n)],
                "rationales": [[] if hidden else [f"The square is {c}."] * 3 for c in COLOURS[:n]]}
        _write(rows, features, root / "data" / f"{split}-00000-of-00001-0123456789abcdef.parquet")
    return root


def textvqa(root: Path, per_split: int = 3) -> Path:
    S, I32, _, IMAGE = _types()
    n = per_split
    features = {"image_id": S, "question_id": I32, "question": S, "question_tokens": [S], "image": IMAGE,
                "image_width": I32, "image_height": I32, "flickr_original_url": S, "flickr_300k_url": S,
                "answers": [S], "image_classes": [S], "set_name": S, "ocr_tokens": [S]}
    for k, (split, set_name) in enumerate((("train", "train"), ("validation", "val"), ("test", "test"))):
        words = [c.upper() for c in COLOURS[:n]]
        rows = {"image_id": [f"{k}{i:05x}" for i in range(n)], "question_id": [100 * k + i for i in range(n)],
                "question": ["what does the sign say?"] * n,
                "question_tokens": [["what", "does", "the", "sign", "say"]] * n,
                "image": [_image(i) for i in range(n)], "image_width": [12] * n, "image_height": [10] * n,
                "flickr_original_url": [URL] * n, "flickr_300k_url": [URL] * n,
                "answers": [[""] * 10 if split == "test" else [w.lower()] * 8 + [w, "sign"] for w in words],
                "image_classes": [["Sign"]] * n, "set_name": [set_name] * n,
                "ocr_tokens": [[w] for w in words]}
        _write(rows, features, root / "textvqa" / split / "0000.parquet")
    return root


BUILDERS = {"flickr30k": flickr30k, "textcaps": textcaps, "okvqa": okvqa, "aokvqa": aokvqa,
            "textvqa": textvqa}
