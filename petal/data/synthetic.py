"""A synthetic image-text data set generated deterministically from a seed (no downloads).

Each scene is a small RGB image (``3×S×S`` float tensor in [0, 1]) of two coloured shapes on a noisy
grey background, one beside or above the other. A scene yields records of several *families*:

* ``caption``  — "A short image caption:" → three reference captions ("a red circle left of a blue square")
* ``colour``   — "what colour is the circle?" → "red"
* ``shape``    — "what shape is the red object?" → "circle"
* ``spatial``  — "what colour is the left shape?" → "red" (needs where a shape is, not what it is)

A *domain* changes the camera: ``"standard"``, or ``"rotated"`` where the colour channels come out
rotated (R, G, B → G, B, R: red objects look blue, ...) — the same scenes and answers, a shifted input
distribution for adaptation experiments.

Records use the common format of :mod:`petal.data.sources`: ``{"id", "image", "task", "family",
"question", "answers"}`` with ``task`` ``"caption"`` or ``"vqa"``. With ``instructions=True`` every record
also carries the paper's instruction set of different focus for the Q-Former (``"instructions"``: what
objects are in the picture, their characteristics, their relationship), which suits these scenes: two
objects, their colours and shapes, and where one is relative to the other.

Splits are disjoint by construction: a scene's split is decided by a stable hash of its full
description (shapes, colours, layout, integer positions and sizes), so no scene can appear in two
splits whatever their sizes; within a split, scenes are drawn from a generator seeded by (seed, split).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from .instructions import CAPTION_TEMPLATES, FOCUS_INSTRUCTIONS, VQA_TEMPLATES
from .records import CAPTION_INSTRUCTION

COLOURS = {
    "red": (0.90, 0.15, 0.15),
    "green": (0.15, 0.80, 0.20),
    "blue": (0.20, 0.35, 0.95),
    "yellow": (0.95, 0.90, 0.15),
    "purple": (0.65, 0.20, 0.85),
    "white": (0.97, 0.97, 0.97),
}
SHAPES = ("circle", "square", "triangle", "cross")
LAYOUTS = ("horizontal", "vertical")
# relation of the first shape to the second, by layout
RELATIONS = {"horizontal": ("left of", "right of"), "vertical": ("above", "below")}
SIDES = {"horizontal": ("left", "right"), "vertical": ("top", "bottom")}
FAMILIES = ("caption", "colour", "shape", "spatial")
SPLITS = ("train", "val", "test")
DOMAINS = ("standard", "rotated")
GRID = 4
DEFAULT_SIZES = {"train": 1200, "val": 200, "test": 200}
_SPLIT_BUCKETS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}


@dataclass(frozen=True)
class Scene:
    """Two shapes; ``first`` is left (horizontal) or on top (vertical) of ``second``."""

    layout: str
    shapes: tuple[str, str]
    colours: tuple[str, str]
    centres: tuple[tuple[int, int], tuple[int, int]]   # (x, y) pixel centres
    radii: tuple[int, int]
    image_size: int

    def key(self) -> str:
        return repr((self.layout, self.shapes, self.colours, self.centres, self.radii, self.image_size))

    def split(self) -> str:
        bucket = zlib.crc32(self.key().encode()) % 10
        return next(name for name, r in _SPLIT_BUCKETS.items() if bucket in r)


def _draw_scene(rng: random.Random, image_size: int) -> Scene:
    """Shapes sit in the cells of a 4×4 grid (one cell = one 8×8 patch of the embedded ViT at size 32),
    so a patch holds one whole shape and a small vision encoder learns them in a few hundred steps."""
    layout = rng.choice(LAYOUTS)
    shapes = tuple(rng.sample(SHAPES, 2))
    colours = tuple(rng.sample(sorted(COLOURS), 2))
    cell = image_size // GRID
    radii = (rng.randint(cell // 2 - 1, cell // 2), rng.randint(cell // 2 - 1, cell // 2))
    centres = []
    for i in range(2):
        along = rng.randrange(GRID // 2) + (0 if i == 0 else GRID // 2)  # first: left / top half
        across = rng.randrange(GRID)
        cx, cy = (along, across) if layout == "horizontal" else (across, along)
        centres.append((cx * cell + cell // 2, cy * cell + cell // 2))
    return Scene(layout, shapes, colours, tuple(centres), radii, image_size)


def _shape_mask(shape: str, cx: int, cy: int, r: int, yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        side = 0.8 * r
        return (dx.abs() <= side) & (dy.abs() <= side)
    if shape == "triangle":  # apex up, base at cy + r
        return (dy >= -r) & (dy <= r) & (dx.abs() <= (dy + r) / 2)
    if shape == "cross":
        arm = max(1.0, r / 3)
        return ((dx.abs() <= arm) & (dy.abs() <= r)) | ((dy.abs() <= arm) & (dx.abs() <= r))
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")


def render(scene: Scene, noise_seed: int) -> torch.Tensor:
    """The scene as a ``3×S×S`` float32 tensor in [0, 1]."""
    s = scene.image_size
    g = torch.Generator().manual_seed(noise_seed)
    image = 0.25 + 0.06 * torch.randn(3, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32),
                            indexing="ij")
    for shape, colour, (cx, cy), r in zip(scene.shapes, scene.colours, scene.centres, scene.radii):
        mask = _shape_mask(shape, cx, cy, r, yy, xx)
        image[:, mask] = torch.tensor(COLOURS[colour])[:, None]
    return image.clamp_(0.0, 1.0)


def captions(scene: Scene) -> list[str]:
    (c1, c2), (s1, s2) = scene.colours, scene.shapes
    forward, backward = RELATIONS[scene.layout]
    return [f"a {c1} {s1} {forward} a {c2} {s2}",
            f"a {c2} {s2} {backward} a {c1} {s1}",
            f"a {c1} {s1} and a {c2} {s2}"]


def questions(scene: Scene, family: str, rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair of ``family`` about ``scene``."""
    i = rng.randrange(2)
    colour, shape = scene.colours[i], scene.shapes[i]
    if family == "colour":
        return f"what colour is the {shape}?", colour
    if family == "shape":
        return f"what shape is the {colour} object?", shape
    if family == "spatial":
        return f"what colour is the {SIDES[scene.layout][i]} shape?", colour
    raise ValueError(f"family must be one of {FAMILIES[1:]} for a question, got {family!r}")


def vocabulary_texts() -> list[str]:
    """Every word any record or prompt can contain (the embedded tokenizer is built from these)."""
    words = list(COLOURS) + list(SHAPES) + [w for rel in RELATIONS.values() for r in rel for w in r.split()]
    words += [w for sides in SIDES.values() for w in sides]
    words += "a and what colour is the shape object ?".split()
    instructions = [*FOCUS_INSTRUCTIONS, *CAPTION_TEMPLATES, *(t.format("") for t in VQA_TEMPLATES)]
    return words + [CAPTION_INSTRUCTION, "Question: Short answer:", *instructions]


def _check_families(families: Sequence[str]) -> tuple[str, ...]:
    if isinstance(families, str) or not families:
        raise ValueError(f"families must be a non-empty list drawn from {FAMILIES}, got {families!r}")
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise ValueError(f"families must be drawn from {FAMILIES}, got unknown {bad}")
    return tuple(families)


class SyntheticShapes(Dataset):
    """``num_scenes`` scenes of ``split``, each giving one record per family in ``families``.

    Same (seed, split, num_scenes, families, image_size) → the same records, bit for bit.
    """

    def __init__(self, split: str = "train", num_scenes: Optional[int] = None, seed: int = 0,
                 families: Sequence[str] = FAMILIES, image_size: int = 32, domain: str = "standard",
                 instructions: bool = False):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_scenes is None:
            num_scenes = DEFAULT_SIZES[split]
        if isinstance(num_scenes, bool) or not isinstance(num_scenes, int) or num_scenes < 1:
            raise ValueError(f"num_scenes must be a positive integer, got {num_scenes!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        if image_size % GRID:
            raise ValueError(f"image_size must be a multiple of {GRID}, got {image_size}")
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if not isinstance(instructions, bool):
            raise ValueError(f"instructions must be True or False, got {instructions!r}")
        self.instructions = instructions
        self.split, self.seed, self.image_size, self.domain = split, seed, image_size, domain
        self.families = _check_families(families)
        rng = random.Random(f"petal-synthetic/{seed}/{split}")
        self.scenes: list[Scene] = []
        seen: set[str] = set()
        attempts = 0
        while len(self.scenes) < num_scenes:
            attempts += 1
            if attempts > 200 * num_scenes + 1000:
                raise ValueError(f"could not draw {num_scenes} distinct {split} scenes at image_size "
                                 f"{image_size}; ask for fewer")
            scene = _draw_scene(rng, image_size)
            key = scene.key()
            if scene.split() != split or key in seen:
                continue
            seen.add(key)
            self.scenes.append(scene)
        self.records: list[dict] = []
        for n, scene in enumerate(self.scenes):
            image = render(scene, noise_seed=zlib.crc32(f"{seed}/{scene.key()}".encode()))
            if domain == "rotated":
                image = image[[1, 2, 0]].contiguous()
            for family in self.families:
                self.records.append(self._record(n, scene, image, family, rng))

    def _record(self, n: int, scene: Scene, image: torch.Tensor, family: str, rng: random.Random) -> dict:
        rid = f"{self.split}-{n}-{family}"
        if family == "caption":
            record = {"id": rid, "image": image, "task": "caption", "family": family,
                      "question": CAPTION_INSTRUCTION, "answers": captions(scene)}
        else:
            question, answer = questions(scene, family, rng)
            record = {"id": rid, "image": image, "task": "vqa", "family": family, "question": question,
                      "answers": [answer]}
        if self.instructions:
            record["instructions"] = list(FOCUS_INSTRUCTIONS)
        return record

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.records[index]


__all__ = ["CAPTION_INSTRUCTION", "COLOURS", "DOMAINS", "FAMILIES", "SHAPES", "SPLITS", "Scene",
           "SyntheticShapes", "captions", "questions", "render", "vocabulary_texts"]
