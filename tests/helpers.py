"""Shared tools of the op tests: backends under test, error metric, tolerance rules (DESIGN §2.3)."""

from __future__ import annotations

import contextlib

import torch

import petal_kernels as pk

CPU_BACKENDS = pk.available_backends("cpu")
LOW_PRECISION = (torch.bfloat16, torch.float16)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; NaN anywhere gives NaN (which never passes a bound)."""
    out, ref = out.detach().double(), ref.detach().double()
    if out.shape != ref.shape:
        raise AssertionError(f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    if ref.numel() == 0:
        return 0.0
    num = (out - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


def fp32_bound(backend: str) -> float:
    return 5e-4 if backend == "triton" else 1e-5


def assert_close(name, out, ref, bound):
    err = rel_err(out, ref)
    assert err == err, f"{name}: NaN in output"
    assert err <= bound, f"{name}: relative error {err:.3g} > bound {bound:.3g}"


@contextlib.contextmanager
def backend(name: str):
    with pk.use_backend(name):
        yield


def grads_of(fn, inputs: dict, names: list, seed: int = 123, cot_dtype=None):
    """Run ``fn(**inputs)``; return its output(s) and the grads of ``names`` for random cotangents
    (rounded to ``cot_dtype`` first when given, as the backends under test see them)."""
    out = fn(**inputs)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    gen = torch.Generator().manual_seed(seed)
    cot = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(cot_dtype or o.dtype).to(o.dtype)
           for o in outs]
    tensors = [inputs[n] for n in names]
    grads = torch.autograd.grad(outs, tensors, cot, allow_unused=True) if tensors else []
    return outs, dict(zip(names, grads))


def compare(backend_name: str, dtype, fn_backend, fn_ref, inputs64: dict, names: list):
    """Check a backend's outputs and grads against the float64 reference by DESIGN §2.3's rules.

    The reference runs in float64 on the inputs rounded to ``dtype``, so the metric measures the
    op's own error, not the input rounding amplified by an ill-conditioned reduction.
    """
    rounded = {k: _cast(_cast(v, dtype), torch.float64) for k, v in inputs64.items()}
    ref_outs, ref_grads = grads_of(fn_ref, rounded, names, cot_dtype=dtype)

    def run(fn, dt, name):
        cast = {k: _cast(v, dt) for k, v in inputs64.items()}
        with backend(name):
            return grads_of(fn, cast, names)

    outs, grads = run(fn_backend, dtype, backend_name)
    if dtype in LOW_PRECISION:
        # 2x the reference backend's own error in this dtype, never below one rounding of the
        # result to the dtype (a tiny tensor's reference error can be luckily small).
        floor = torch.finfo(dtype).eps
        base_outs, base_grads = run(fn_backend, dtype, "reference")
        bounds_out = [max(2 * rel_err(b, r), floor) for b, r in zip(base_outs, ref_outs)]
        bounds_grad = {n: max(2 * rel_err(base_grads[n], ref_grads[n]), floor) for n in names}
    else:
        b = fp32_bound(backend_name) if dtype == torch.float32 else 1e-10
        bounds_out = [b] * len(ref_outs)
        bounds_grad = dict.fromkeys(names, b)
    for i, (o, r, bound) in enumerate(zip(outs, ref_outs, bounds_out)):
        assert o.dtype == dtype, f"output {i} has dtype {o.dtype}, expected {dtype}"
        assert_close(f"output {i}", o, r, bound)
    for n in names:
        assert grads[n] is not None, f"no gradient for {n}"
        assert_close(f"grad {n}", grads[n], ref_grads[n], bounds_grad[n])


def _cast(v, dtype):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.detach().to(dtype).requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(_cast(e, dtype) for e in v)
    return v
