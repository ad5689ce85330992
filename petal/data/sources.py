"""Every data source behind one call: the synthetic set (:mod:`petal.data.synthetic`), the hub data sets
(:mod:`petal.data.hub`) and local folders (:mod:`petal.data.folder`), all yielding the common records of
:mod:`petal.data.records`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from torch.utils.data import Dataset

from .folder import FolderDataset
from .hub import HUB_SOURCES, HubSource, RecordDataset, load_hub
from .records import CAPTION_INSTRUCTION, SPLITS, check_split


def load_data(spec: str, split: str, limit: Optional[int] = None, seed: int = 0,
              synthetic_families: Optional[tuple] = None, image_size: int = 32,
              synthetic_domain: str = "standard", path: Optional[str] = None, revision: Optional[str] = None,
              skip_bad_images: bool = False, log: Optional[Callable[[str], None]] = None) -> Dataset:
    """``synthetic``, a hub source name, or a folder path -> a data set of records. ``path`` and
    ``revision`` (hub sources only) read a local copy or another revision; ``skip_bad_images`` (folders
    only) leaves out records whose image is missing or unreadable."""
    check_split(split)
    if spec not in HUB_SOURCES and (path is not None or revision is not None):
        raise ValueError(f"--data-path / --data-revision are for the hub sources {sorted(HUB_SOURCES)}, not "
                         f"--data {spec!r}")
    if skip_bad_images and (spec == "synthetic" or spec in HUB_SOURCES):
        raise ValueError(f"--skip-bad-images is for folder data, not --data {spec!r}")
    if spec == "synthetic":
        from .synthetic import FAMILIES, SyntheticShapes

        families = synthetic_families or FAMILIES
        scenes = None if limit is None else -(-limit // len(families))  # a scene gives one record per family
        data = SyntheticShapes(split, num_scenes=scenes, seed=seed, families=families, image_size=image_size,
                               domain=synthetic_domain)
        if limit is not None:
            data.records = data.records[:limit]
        return data
    if spec in HUB_SOURCES:
        return load_hub(spec, split, limit=limit, path=path, revision=revision, log=log)
    if Path(spec).is_dir():
        data = FolderDataset(spec, split, skip_bad_images=skip_bad_images, log=log)
        if limit is not None and limit < len(data):
            data.records = data.records[:limit]
        return data
    raise ValueError(f"data must be 'synthetic', one of {sorted(HUB_SOURCES)}, or an existing folder; "
                     f"got {spec!r}")


__all__ = ["CAPTION_INSTRUCTION", "FolderDataset", "HUB_SOURCES", "HubSource", "RecordDataset", "SPLITS",
           "load_data", "load_hub"]
