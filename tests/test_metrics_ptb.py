"""CIDEr-D and its PTB tokenisation: the Java path equals pycocoevalcap's own pipeline end to end, the
Python tokenizer equals the Java one on hand-written captions, and each result names its tokenizer."""

import shutil

import pytest

from petal.metrics import cider, ptb_tokenize, python_ptb_tokenize
from petal.metrics import ptb as ptb_module

JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not JAVA, reason="no java (pycocoevalcap's PTBTokenizer needs it)")

# caption-like sentences written to exercise PTB's rules (clitics, numbers, abbreviations, brackets, quotes)
SENTENCES = [
    "A man's dog is running.", "The U.S. flag waves in the wind.", "A 3.5 inch half-eaten sandwich.",
    "Mr. Smith and Dr. Jones at St. Mary's.", "I can't believe it's not butter!",
    "They're gonna wanna go, aren't they?", '"Hello," she said -- "goodbye..."',
    "A (red) [blue] {green} car.",
    "A cat & a dog; 50% off: $5.99 or £3.", "The colour of the centre is grey.",
    "cannot won't shan't don't I'm we've you'll he'd 'tis", "e.g. etc. i.e. a.m. p.m. 5 p.m.",
    "A man with 3,000 dollars and 1/2 a pie.", "Two dogs--one black, one white--play.",
    "It's 10:30 on 12/25/2010.", "the dogs' toys and the boys' bikes", "rock'n'roll n' stuff o'clock",
    "A #1 fan @ the game * star", "Wait... what?! Really?", "A  double  spaced   caption ", "",
    "ALL CAPS SENTENCE HERE.", "Café naïve résumé – “quoted” ‘single’ …", "x-ray X-Ray co-op e-mail",
    "he said: 'yes'", "A 5'10\" man.", "gimme lemme gotta", "We live in the U.S.",
    "I like apples, pears, etc.",
    "He ain't here, y'all. Ma'am, O'Neill's it'd I'd've", "it’s a dog’s life", "50 €, 5¢, ¥100",
    "!!! ??? ?! !? ...", "a dog.cat a.b hi-5 3-4 10-year-old -5 +5 5-", "'tis 'twas 's 'S",
    "Fig. 3 and No. 5 vs. Inc. Co. Ltd. Mt. Ft. Jr. Sr. Prof.", "AT&T at&t Q&A R&B", "he's HE'S DON'T CAN'T",
    "a  man w/ a hat", "#hashtag @user 100% 3x 2nd 1st 4th", "the 1990s and '90s and 90's", "a b.c. d",
    "one.two Three. four", "A cat . A dog .", "a.", ".a", "a'", "'a", "x > y < z = w", "a~b a^b a|b a`b",
    "The dog's bone's color", "St. Louis", "I said no.", "No. 5 is here.", "Plan B.", "look at me, I.",
    'A sign reading "NO PARKING 8AM-6PM".', "The 49ers' quarterback", 'a t-shirt that says "i <3 ny"',
    "jan. feb. Jan. Ave. ave. Rd. Inc.", 'A sign for "Joe\'s Bar & Grill" hangs above the door.',
    "The clock reads 10:45 and the date is 3/14/2015.", 'A license plate that reads "ABC-1234".',
    "The price tag says $19.99 (was $29.99).", "A street sign for W. 34th St. and 5th Ave.",
    "A boy -- maybe 5 or 6 -- plays with a toy truck.", "A store front with \"OPEN 24/7\" in neon.",
    "The letters \"N.Y.P.D.\" are on the car.", "A menu with items like \"Fish & Chips\" for £7.50.",
    "http://www.example.com and foo@bar.com",
]

# what PTB's rules give, written out (these hold for the Python tokenizer with or without Java)
EXPECTED = {
    "A man's dog is running.": "a man 's dog is running",
    "The U.S. flag waves.": "the u.s. flag waves",
    "A 3.5 inch half-eaten sandwich.": "a 3.5 inch half-eaten sandwich",
    "I can't, won't, cannot.": "i ca n't wo n't can not",
    "A (red) car?!": "a -lrb- red -rrb- car ?!",  # pycocoevalcap never drops the lower-cased brackets
    '"Stop," he said... -- ok; fine: yes!': "stop he said ok fine yes",
    "3,000 fans at 10:30 paid $5.99 or £3": "3,000 fans at 10:30 paid $ 5.99 or # 3",
    "Mr. Smith, etc. Plan B. I said no. No. 5": "mr. smith etc. plan b. i said no no. 5",
}


@pytest.mark.parametrize("text, tokens", sorted(EXPECTED.items()))
def test_python_tokenizer_follows_ptb_rules(text, tokens):
    assert python_ptb_tokenize(text) == tokens


@needs_java
def test_python_tokenizer_equals_the_java_tokenizer():
    java, used = ptb_tokenize(SENTENCES, "ptb-java")
    assert used == "ptb-java" and len(java) == len(SENTENCES)
    differ = [(s, j, python_ptb_tokenize(s)) for s, j in zip(SENTENCES, java) if python_ptb_tokenize(s) != j]
    assert not differ
    assert java[:3] == ["a man 's dog is running", "the u.s. flag waves in the wind",
                        "a 3.5 inch half-eaten sandwich"]


CAPTION_REFS = [
    ["A man's dog runs in the park.", "A dog is running on the grass.", "The man's brown dog is running."],
    ["The U.S. flag waves in the wind!", "An American flag on a pole.", "A flag flying (high) in the sky."],
    ["A half-eaten sandwich on a plate.", "Half a sandwich, and chips.", "A 3.5 inch sandwich."],
    ["Two kids can't stop laughing.", "Children laugh at a joke -- loudly.", "Two children are laughing."],
]
CAPTION_PREDS = ["a man's dog running in the park", "The U.S. flag.", "a half eaten sandwich",
                 "two kids laugh"]


@needs_java
def test_cider_java_path_equals_pycocoevalcap_end_to_end():
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()  # pycocoevalcap's own pipeline: tokenise references, tokenise results, score
    gts = tok.tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(CAPTION_REFS)})
    res = tok.tokenize({i: [{"caption": p}] for i, p in enumerate(CAPTION_PREDS)})
    score, per_sample = Cider().compute_score(gts, res)
    ours = cider(CAPTION_PREDS, CAPTION_REFS, tokenizer="ptb-java")
    assert ours.tokenizer == "ptb-java"
    assert ours.score == pytest.approx(score, abs=1e-6)
    assert ours.per_sample == pytest.approx(list(per_sample), abs=1e-6)
    python = cider(CAPTION_PREDS, CAPTION_REFS, tokenizer="ptb-python")
    assert python.tokenizer == "ptb-python" and python.score == pytest.approx(score, abs=1e-6)


@needs_java
def test_one_java_call_per_evaluation_set_and_line_breaks_stay_inside_captions(monkeypatch):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    calls = []
    real = PTBTokenizer.tokenize
    monkeypatch.setattr(PTBTokenizer, "tokenize", lambda self, c: calls.append(len(c)) or real(self, c))
    preds = ["a dog\nruns", "a flag\r waves", "a sandwich", "kids"]
    result = cider(preds, CAPTION_REFS, tokenizer="auto")
    assert calls == [sum(map(len, CAPTION_REFS)) + len(preds)] and result.tokenizer == "ptb-java"
    tokens, _ = ptb_tokenize(["a\nb", "c\rd", "e\u2028f", "g"], "ptb-java")
    assert tokens == ["a b", "c d", "e f", "g"]


def test_auto_falls_back_to_python_without_java(monkeypatch):
    monkeypatch.setattr(ptb_module.shutil, "which", lambda name: None)
    result = cider(CAPTION_PREDS, CAPTION_REFS)
    assert result.tokenizer == "ptb-python" and result.score > 0
    assert ptb_tokenize(["A man's dog."])[1] == "ptb-python"


def test_a_failing_java_tokenizer_is_reported_or_replaced(monkeypatch):
    def broken(texts):
        raise OSError("read-only file system")

    monkeypatch.setattr(ptb_module, "_java_available", lambda: True)
    monkeypatch.setattr(ptb_module, "_java_tokenize", broken)
    with pytest.raises(RuntimeError, match="PTBTokenizer .* failed: OSError"):
        ptb_tokenize(["a dog"], "ptb-java")
    with pytest.warns(RuntimeWarning, match="Python PTB rules"):
        assert ptb_tokenize(["A dog."], "auto") == (["a dog"], "ptb-python")


def test_cider_orders_and_checks_inputs():
    exact = cider([r[0] for r in CAPTION_REFS], CAPTION_REFS, "ptb-python").score
    partial = cider(["a dog", "a flag", "a sandwich", "two kids"], CAPTION_REFS, "ptb-python").score
    wrong = cider(["the cat sat"] * 4, CAPTION_REFS, "ptb-python").score
    assert exact > partial > wrong >= 0.0 and exact > 1.0
    with pytest.raises(ValueError, match="same length"):
        cider(["a"], CAPTION_REFS)
    with pytest.raises(ValueError, match=r"references\[0\]"):
        cider(["a"], [[]])
    with pytest.raises(ValueError, match="tokenizer"):
        ptb_tokenize(["a"], "nltk")
    with pytest.raises(TypeError, match="captions must be strings"):
        ptb_tokenize([None])
