"""Instructions for the Q-Former: the paper's set of different focus, and the template pools that
"random instruction" draws from.

``FOCUS_INSTRUCTIONS`` are the instructions PETAL pairs with every image in its multi-instruction mode
(the paper's example; the released code feeds these three, without the question marks, to the Q-Former
one at a time and merges the outputs). ``CAPTION_TEMPLATES`` / ``VQA_TEMPLATES`` are the instruction
templates of InstructBLIP (Dai et al., 2023, appendix), which the released data sets hold as the pool
``random.choice`` draws a sample's instruction from in the "w. random instruction" ablation.
"""

from __future__ import annotations

import random
import zlib
from typing import Optional

FOCUS_INSTRUCTIONS = (
    "What objects are in the picture?",
    "What are the characteristics of the objects in the picture?",
    "What is the relationship between the objects in the picture?",
)

CAPTION_TEMPLATES = (
    "A short image caption:",
    "A short image description:",
    "A photo of",
    "An image that shows",
    "Write a short description for the image.",
    "Write a description for the photo.",
    "Provide a description of what is presented in the photo.",
    "Briefly describe the content of the image.",
    "Can you briefly explain what you see in the image?",
    "Could you use a few words to describe what you perceive in the photo?",
    "Please provide a short depiction of the picture.",
    "Using language, provide a short account of the image.",
    "Use a few words to illustrate what is happening in the picture.",
)

VQA_TEMPLATES = (
    "{}",
    "Question: {}",
    "{} A short answer to the question is",
    "Q: {} A:",
    "Question: {} Short answer:",
    "Given the image, answer the following question with no more than three words. {}",
    "Based on the image, respond to this question with a short answer: {}. Answer:",
    "Use the provided image to answer the question: {} Provide your answer as short as possible:",
    'What is the answer to the following question? "{}"',
    'The question "{}" can be answered using the image. A short answer is',
)

SOURCES = ("record", "focus", "random")


def template_pool(record: dict) -> list[str]:
    """The instructions "random instruction" may give ``record``: the caption templates, or the VQA
    templates around its question."""
    if record.get("task") == "vqa":
        question = record.get("question") or ""
        return [t.format(question) for t in VQA_TEMPLATES]
    return list(CAPTION_TEMPLATES)


def random_instructions(record: dict, count: int, rng: Optional[random.Random] = None) -> list[str]:
    """``count`` independent draws (with replacement) from the record's template pool; without ``rng``
    the draws follow from the record id, so an evaluation sees the same instructions every time."""
    if rng is None:
        rng = random.Random(zlib.crc32(f"petal-instructions/{record.get('id')}".encode()))
    pool = template_pool(record)
    return [rng.choice(pool) for _ in range(count)]


def choose_instructions(record: dict, source: str, count: int,
                        rng: Optional[random.Random] = None) -> Optional[list[str]]:
    """The instructions the Q-Former reads for ``record`` under ``source`` (``None``: its question)."""
    if source == "record":
        found = record.get("instructions")
        return list(found) if found else None
    if source == "focus":
        return list(FOCUS_INSTRUCTIONS[:count])
    if source == "random":
        return random_instructions(record, count, rng)
    raise ValueError(f"instruction source must be one of {SOURCES}, got {source!r}")


__all__ = ["CAPTION_TEMPLATES", "FOCUS_INSTRUCTIONS", "SOURCES", "VQA_TEMPLATES", "choose_instructions",
           "random_instructions", "template_pool"]
