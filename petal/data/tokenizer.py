"""A word-level tokenizer for the embedded default model, built from the synthetic data's words.

Lower-cased words and single punctuation marks are tokens. Ids 0–3 are fixed specials: ``<pad>``
(also T5's decoder start), ``</s>`` (end of sequence), ``<unk>`` and ``<image>`` (the InstructBLIP
placeholder each query token's projection replaces). Saved with a run as ``tokenizer.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Sequence, Union

PAD, EOS, UNK, IMAGE = "<pad>", "</s>", "<unk>", "<image>"
SPECIALS = (PAD, EOS, UNK, IMAGE)
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def split_words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class WordTokenizer:
    def __init__(self, words: Sequence[str]):
        vocab = list(SPECIALS) + [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.vocab = vocab
        self.ids = {w: i for i, w in enumerate(vocab)}
        self.pad_token_id, self.eos_token_id = self.ids[PAD], self.ids[EOS]
        self.unk_token_id, self.image_token_id = self.ids[UNK], self.ids[IMAGE]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> WordTokenizer:
        words: list[str] = []
        for text in texts:
            words += split_words(text)
        return cls(sorted(set(words)))

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str, add_eos: bool = True) -> list[int]:
        ids = [self.ids.get(w, self.unk_token_id) for w in split_words(text)]
        return ids + [self.eos_token_id] if add_eos else ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id and skip_special_tokens:
                break
            if not 0 <= i < len(self.vocab):
                raise ValueError(f"token id {i} is outside the vocabulary (size {len(self.vocab)})")
            if skip_special_tokens and self.vocab[i] in SPECIALS:
                continue
            words.append(self.vocab[i])
        return re.sub(r" ([?.,!:;])", r"\1", " ".join(words))

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(seq, skip_special_tokens) for seq in sequences]

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"type": "petal-word-tokenizer/1", "vocab": self.vocab}, indent=0) + "\n")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("type") != "petal-word-tokenizer/1" or list(data["vocab"][:4]) != list(SPECIALS):
            raise ValueError(f"{path} is not a petal word tokenizer file")
        return cls(data["vocab"][len(SPECIALS):])

    def to_hf(self):
        """The same vocabulary as a ``transformers.PreTrainedTokenizerFast`` (for processor-based code)."""
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast

        tok = Tokenizer(models.WordLevel(vocab=self.ids, unk_token=UNK))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.post_processor = processors.TemplateProcessing(single=f"$A {EOS}",
                                                           special_tokens=[(EOS, self.eos_token_id)])
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def embedded_tokenizer() -> WordTokenizer:
    from .synthetic import vocabulary_texts

    return WordTokenizer.from_texts(vocabulary_texts())


__all__ = ["EOS", "IMAGE", "PAD", "SPECIALS", "UNK", "WordTokenizer", "embedded_tokenizer", "split_words"]
