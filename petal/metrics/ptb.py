"""Caption tokenisation as the COCO caption pipeline does it: PTBTokenizer, then punctuation removed.

``tokenizer="ptb-java"`` runs pycocoevalcap's own ``PTBTokenizer`` (Stanford CoreNLP 3.4.1, needs
``java``): lower-cased PTB tokens, then the tokens of pycocoevalcap's punctuation list dropped. It starts
one Java process per call, so a whole evaluation set is tokenised in one call.

``tokenizer="ptb-python"`` is this module's own tokenizer written to the same rules, for machines without
Java: clitics split ("man's" -> "man 's", "can't" -> "ca n't", "cannot" -> "can not", "gonna" -> "gon na"),
numbers kept whole ("3.5", "3,000", "10:30", "1/2"), hyphenated and dotted words kept ("half-eaten",
"dog.cat"), abbreviations and initials keep their period ("u.s.", "mr.", "etc.", "b."; "no." and "fig."
only before a number), brackets become ``-lrb-`` ``-rrb-`` ``-lsb-`` ``-rsb-`` ``-lcb-`` ``-rcb-`` (kept:
pycocoevalcap compares its upper-case ``-LRB-`` entries with lower-cased tokens, so they never match),
runs of "?"/"!" stay one token ("?!" is kept, "?" is dropped), "£" -> "#", "€" -> "$", "¢" -> "cents",
curly quotes, dashes and "…" are treated as their ASCII forms. It equals the Java tokenizer on the
caption-like sentences of ``tests/test_metrics_ptb.py``; the Stanford lexer has rules it does not copy
(SGML tags, upper-case-only "AT&T", its full abbreviation list), so rare text can still differ.

``tokenizer="auto"`` runs Java when ``java`` is on the PATH and falls back to Python (with a warning)
when it is missing or fails. Every caller gets the name of the tokenizer that ran.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence

TOKENIZERS = ("auto", "ptb-java", "ptb-python")
# pycocoevalcap's PUNCTUATIONS as it acts: its "-LRB-"-style entries never meet an upper-case token
_DROPPED = frozenset(("''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"))
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]")
_UNICODE = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
            "\u201e": '"', "\u2013": " -- ", "\u2014": " -- ", "\u2026": " ... ", "\u00a3": " # ",
            "\u20ac": " $ ", "\u00a2": " cents ", "\u00a0": " "}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_ABBREVIATIONS = frozenset("""
mr mrs ms dr st jr sr prof gen gov sen rep inc co corp ltd mt ft vs etc jan feb mar apr jun jul aug sep
sept oct nov dec ave rd blvd dept univ capt col lt sgt cpl rev hon messrs esq bros est cf al sq mon tue
wed thu fri ph pres adm maj cmdr supt det insp assn adj
""".split())
_BEFORE_NUMBER = frozenset(("no", "fig"))
_SPLIT_WORDS = {"cannot": ("can", "not"), "gonna": ("gon", "na"), "gotta": ("got", "ta"),
                "wanna": ("wan", "na"), "gimme": ("gim", "me"), "lemme": ("lem", "me"),
                "y'all": ("y'", "all")}
_CLITIC = re.compile(r"(?i)(n't|'s|'m|'d|'re|'ve|'ll)$")
_TOKEN = re.compile(r"""
    (?P<url>(?:https?://|www\.)[^\s"<>]*[^\s"<>.,;:!?'")\]}]|[\w.+-]+@[\w-]+(?:\.[\w-]+)+)
  | (?P<acronym>(?-i:[A-Z]+&[A-Z]+)\b)
  | (?P<dotted>[^\W\d_](?:\.[^\W\d_])+\.)
  | (?P<abbrev>[^\W\d_]+\.)(?=\s|$|['"])
  | (?P<quoted>'(?:t(?=(?:is|was)\b)|\d+s\b|(?:s|m|d|re|ve|ll)\b))
  | (?P<number>(?<!\S)[+-]\d+(?:[.,:/-]\d+)*|\d+(?:[,:/]\d+)+)
  | (?P<tag>[#@][^\W\d_]\w*)
  | (?P<word>\w(?:\w|[-.](?=\w)|'(?=[^\W\d_]))*)
  | (?P<punct>\.{2,}|-{2,}|[?!]+|`+|'+|\S)
""", re.X | re.I)


def _words(token: str) -> list[str]:
    """A word token's PTB pieces: special splits, clitics off the end, "'n'" inside."""
    low = token.lower()
    if low in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[low])
    if "'n'" in low and not low.startswith("'n'"):
        head, _, tail = low.partition("'n'")
        return _words(head) + ["'n'"] + (_words(tail) if tail else [])
    tail = []
    while True:
        m = _CLITIC.search(low)
        if m is None or m.start() == 0:
            return [low, *tail]
        low, tail = low[: m.start()], [m.group(1), *tail]


def _abbreviation(word: str, rest: str) -> bool:
    """Does ``word.`` keep its period? ``rest`` is the text after the period."""
    low = word.lower()
    if low in _ABBREVIATIONS:
        return True
    if low in _BEFORE_NUMBER:
        return re.match(r"\s*\d", rest) is not None
    return len(word) == 1 and word not in ("I", "i") and word.isalpha()


def python_ptb_tokenize(text: str) -> str:
    """One caption through this module's Python PTB rules, punctuation dropped (see the docstring)."""
    for k, v in _UNICODE.items():
        text = text.replace(k, v)
    out = []
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        if kind == "abbrev":
            word = tok[:-1]
            if _abbreviation(word, text[m.end():]):
                out.append(tok.lower())
            else:
                out.extend(_words(word) + ["."])
        elif kind == "quoted":
            out.append(tok.lower())
        elif kind == "word":
            out.extend(_words(tok))
        elif kind == "punct":
            out.append(_BRACKETS.get(tok, "''" if tok == '"' else tok))
        else:
            out.append(tok.lower())
    return " ".join(t for t in out if t not in _DROPPED)


def _java_available() -> bool:
    if shutil.which("java") is None:
        return False
    try:
        import pycocoevalcap.tokenizer.ptbtokenizer  # noqa: F401
    except ImportError:
        return False
    return True


def _java_tokenize(texts: list[str]) -> list[str]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # PTBTokenizer works line by line: a line break inside a caption would shift every later caption
    clean = [_LINE_BREAKS.sub(" ", t) for t in texts]
    out = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(clean)})
    if sorted(out) != list(range(len(texts))) or any(len(v) != 1 for v in out.values()):
        raise RuntimeError(f"PTBTokenizer returned {sum(len(v) for v in out.values())} lines for "
                           f"{len(texts)} captions")
    return [out[i][0] for i in range(len(texts))]


def ptb_tokenize(texts: Sequence[str], tokenizer: str = "auto") -> tuple[list[str], str]:
    """Tokenise ``texts`` (in one Java call when Java runs); returns the tokenised texts (tokens joined
    by spaces) and the name of the tokenizer that produced them, ``"ptb-java"`` or ``"ptb-python"``."""
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"captions must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    if tokenizer == "ptb-java" or (tokenizer == "auto" and _java_available()):
        try:
            return _java_tokenize(texts), "ptb-java"
        except Exception as e:  # noqa: BLE001 - auto falls back, explicit ptb-java reports
            if tokenizer == "ptb-java":
                raise RuntimeError(f"pycocoevalcap's PTBTokenizer (Java) failed: {type(e).__name__}: "
                                   f"{e}") from e
            warnings.warn(f"PTBTokenizer (Java) failed ({type(e).__name__}: {e}); captions are tokenised "
                          "with petal's Python PTB rules instead", RuntimeWarning, stacklevel=2)
    return [python_ptb_tokenize(t) for t in texts], "ptb-python"


__all__ = ["TOKENIZERS", "ptb_tokenize", "python_ptb_tokenize"]
