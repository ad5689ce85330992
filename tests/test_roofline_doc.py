"""docs/ROOFLINE.md holds the current output of docs/roofline.py, and its model is sane; the links to docs/
from the README and between the docs resolve, and docs/ itself holds only what a user reads."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _roofline():
    spec = importlib.util.spec_from_file_location("roofline", ROOT / "docs" / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_doc_is_the_script_output():
    doc = (ROOT / "docs" / "ROOFLINE.md").read_text()
    generated = doc.split("## Generated\n", 1)[1].strip()
    assert generated == _roofline().report().strip(), "rerun: python docs/roofline.py (see ROOFLINE.md)"


def test_model_bounds():
    r = _roofline()
    M, K, N, R, J = r.SHAPES["LLM q/k/v (d=4096)"]
    (gemm,) = r.linear_fwd(M, K, N)
    assert gemm.t_compute > gemm.t_memory  # a big GEMM is compute-bound
    for launch in r.gated(M, K, "large", "backward"):
        assert launch.t_memory > 100 * launch.t_compute  # the epilogue is bandwidth only
    # fusing the rank-R term into the GEMM can only beat the unfused cuBLAS + element-wise path
    assert r.total(r.triton_dma_fwd(M, K, N, R)) < r.total(r.cuda_dma_fwd(M, K, N, R))
    assert r.total(r.triton_dma_fwd(M, K, N, R)) > r.total(r.linear_fwd(M, K, N))


# investigation logs live in docs/notes/
USER_DOCS = {"BENCHMARKS.md", "COMPARE.md", "CUDA_BUILD.md", "ROOFLINE.md"}


def test_doc_links_resolve_and_notes_live_apart():
    docs = ROOT / "docs"
    assert {p.name for p in docs.glob("*.md")} == USER_DOCS
    assert list((docs / "notes").glob("*.md")), "docs/notes/ holds the investigation notes"
    for page in [ROOT / "README.md", *docs.glob("*.md"), *(docs / "notes").glob("*.md")]:
        text = page.read_text()
        for target in re.findall(r"\]\(((?:docs/)?[\w/]+\.(?:md|png))\)", text):
            base = ROOT if target.startswith("docs/") else page.parent
            assert (base / target).exists(), f"{page.name} links to {target}, which does not exist"
        for path in re.findall(r"\b(docs/[\w/]+\.md)\b", text):
            assert (ROOT / path).exists(), f"{page.name} names {path}, which does not exist"
        assert not re.search(r"\bsession\b", text, re.I), f"{page.name} speaks of a session"
