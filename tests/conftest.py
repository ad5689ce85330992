import os

import pytest
import torch

# Triton kernels run on CPU tensors only under its interpreter, which must be on before
# petal_kernels.triton is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True, scope="session")
def petal_cache(tmp_path_factory):
    """The embedded base's cache for the whole suite: a temporary directory, never the user's cache.
    Tests that load ``--model embedded`` pass ``--pretrain-steps 5`` and so share one small base."""
    path = tmp_path_factory.mktemp("petal-cache")
    old = os.environ.get("PETAL_CACHE")
    os.environ["PETAL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("PETAL_CACHE", None)
    else:
        os.environ["PETAL_CACHE"] = old


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is faster, and keeps a shared machine usable (per module, on request)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
