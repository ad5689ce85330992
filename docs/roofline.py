"""Roofline floors of the petal_kernels launches on an H100 SXM; prints the tables of docs/ROOFLINE.md.

Model: every launch reads each operand from HBM once and writes each output once (tiles re-read
from L2 are free), so its floor is ``max(FLOPs / peak, bytes / bandwidth)``; an op's floor is the
sum over its launches (no overlap between launches). Tensors are bf16 (2 bytes); fp32 workspaces
(dt of the Triton backward, reduction partials) are 4 bytes. Element-wise FLOPs count the
multiply-adds of the formula, a sigmoid as 4.

    python docs/roofline.py            # markdown tables, as in docs/ROOFLINE.md
"""

from __future__ import annotations

import dataclasses

PEAK_FLOPS = 989e12  # H100 SXM, dense bf16 tensor cores
HBM_BYTES_PER_S = 3.35e12  # H100 SXM, HBM3
E = 2  # bf16
F32 = 4


@dataclasses.dataclass
class Launch:
    name: str
    flops: float
    bytes: float

    @property
    def t_compute(self) -> float:
        return self.flops / PEAK_FLOPS

    @property
    def t_memory(self) -> float:
        return self.bytes / HBM_BYTES_PER_S

    @property
    def floor(self) -> float:
        return max(self.t_compute, self.t_memory)


def total(launches: list[Launch]) -> float:
    return sum(launch.floor for launch in launches)


# --------------------------------------------------------------------------- frozen floors


def linear_fwd(M, K, N) -> list[Launch]:
    """The frozen nn.Linear alone: y = x W^T + b (cuBLAS)."""
    return [Launch("cuBLAS x W^T + b", 2 * M * K * N, E * (M * K + N * K + M * N + N))]


def linear_bwd(M, K, N) -> list[Launch]:
    """Its backward with W frozen: dx = dy W only."""
    return [Launch("cuBLAS dy W", 2 * M * N * K, E * (M * N + N * K + M * K))]


# --------------------------------------------------------------------------- dma_linear: Triton


def triton_dma_fwd(M, K, N, R, J=1) -> list[Launch]:
    """t = x down^T once, then one fused launch over the J projections' concatenated N."""
    NJ = N * J
    return [
        Launch("t = x down^T", 2 * M * K * R, E * (M * K + R * K + M * R)),
        Launch("fused y_j = x W_j^T + b_j + (t s_j) up_j^T", 2 * M * K * NJ + 2 * M * R * NJ + M * R * J,
               E * (M * K + NJ * K + M * R + NJ * R + J * R + NJ + M * NJ)),
    ]


def triton_dma_bwd(M, K, N, R, J=1) -> list[Launch]:
    NJ = N * J
    return [
        Launch("dz_j = dy_j up_j; dt = sum dz_j s_j; d_scale", 2 * M * NJ * R + 3 * M * R * J,
               E * (M * NJ + NJ * R + M * R + J * R) + F32 * M * R),
        Launch("dx = [dy_j | dt] [W_j; down]", 2 * M * NJ * K + 2 * M * R * K,
               E * (M * NJ + NJ * K + R * K + M * K) + F32 * M * R),
        *[Launch(f"d_up_{j} = dy_j^T (t s_j)", 2 * M * N * R + M * R, E * (M * N + M * R + R + N * R))
          for j in range(J)],
        Launch("d_down = dt^T x", 2 * M * R * K, F32 * M * R + E * (M * K + R * K)),
    ]


# --------------------------------------------------------------------------- dma_linear: cuda backend


def cuda_dma_fwd(M, K, N, R) -> list[Launch]:
    """bindings_cuda.cpp without gamma: cuBLAS GEMMs plus the CUDA scale kernel."""
    return [
        Launch("cuBLAS t = x down^T", 2 * M * K * R, E * (M * K + R * K + M * R)),
        Launch("CUDA z = t * scale", M * R, E * (2 * M * R + R)),
        Launch("cuBLAS y = b + x W^T", 2 * M * K * N, E * (M * K + N * K + M * N + N)),
        Launch("cuBLAS y += z up^T", 2 * M * R * N, E * (M * R + N * R + 2 * M * N)),
    ]


def cuda_dma_fwd_gamma(M, K, N, R) -> list[Launch]:
    return [
        Launch("cuBLAS t = x down^T", 2 * M * K * R, E * (M * K + R * K + M * R)),
        Launch("CUDA z = t * scale", M * R, E * (2 * M * R + R)),
        Launch("cuBLAS base = x W^T", 2 * M * K * N, E * (M * K + N * K + M * N)),
        Launch("cuBLAS y = z up^T", 2 * M * R * N, E * (M * R + N * R + M * N)),
        Launch("CUDA y = gamma base + b + y", 3 * M * N, E * (3 * M * N + 2 * N)),
    ]


def cuda_dma_bwd(M, K, N, R) -> list[Launch]:
    blocks = 132 * 8  # column_dot partial rows (upper bound)
    return [
        Launch("cuBLAS dz = dy up", 2 * M * N * R, E * (M * N + N * R + M * R)),
        Launch("CUDA dt = dz s; z = t s", 2 * M * R, E * (4 * M * R + R)),
        Launch("CUDA d_scale = colsum dz t", 2 * M * R, E * (2 * M * R + R) + 2 * F32 * blocks * R),
        Launch("cuBLAS d_up = dy^T z", 2 * M * N * R, E * (M * N + M * R + N * R)),
        Launch("cuBLAS d_down = dt^T x", 2 * M * R * K, E * (M * R + M * K + R * K)),
        Launch("cuBLAS dx = dt down", 2 * M * R * K, E * (M * R + R * K + M * K)),
        Launch("cuBLAS dx += dy W", 2 * M * N * K, E * (M * N + N * K + 2 * M * K)),
    ]


# --------------------------------------------------------------------------- gated_residual

# Row tensors (M, d) each launch reads and writes, with a dropout mask (training). The Triton and
# CUDA kernels make the same passes; "small" backward's first pass also reads x to recompute the
# row scores in fp32 (a bf16 stat is too coarse for the sigmoid's slope).
GATED_PASSES = {  # granularity: (forward passes, backward passes); a pass: (name, reads, writes)
    "large": ([("x,h,u,logits,mask -> out", 5, 1)],
              [("dout,h,u,logits,mask -> dx,dh,du,d_logits", 5, 4)]),
    "middleX": ([("x,h,u,mask -> out (+ row score)", 4, 1)],
                [("dout,x,h,u,mask -> dx,dh,du (+ d_w partials)", 5, 3)]),
    "middleY": ([("x,h,u,mask -> out", 4, 1)],
                [("dout,h,u,mask -> dx,dh,du (+ d_vector partials)", 4, 3)]),
    "small": ([("x,h,u -> row scores", 3, 0), ("x,h,u,mask -> out", 4, 1)],
              [("dout,x,h,u,mask -> row sums of e*h2, fp32 row scores", 5, 0),
               ("dout,x,h,u,mask -> dx,dh,du", 5, 3)]),
}
GATED_FLOPS_PER_ELEMENT = {"forward": 10, "backward": 16}


def gated(M, d, granularity, direction) -> list[Launch]:
    passes = GATED_PASSES[granularity][0 if direction == "forward" else 1]
    per = GATED_FLOPS_PER_ELEMENT[direction] / len(passes)
    return [Launch(f"{granularity} {name}", per * M * d, E * (reads + writes) * M * d + E * 2 * d)
            for name, reads, writes in passes]


def residual_add(M, d) -> list[Launch]:
    return [Launch("x + h", M * d, E * 3 * M * d)]


# --------------------------------------------------------------------------- report


SHAPES = {  # name: (M rows, K, N, R, J projections sharing x)
    "Q-Former self-attn q/k/v": (8192, 768, 768, 64, 3),
    "Q-Former cross-attn k/v": (8192, 1408, 768, 64, 2),
    "LLM q/k/v (d=4096)": (8192, 4096, 4096, 64, 3),
}
GATED_SHAPES = {"Q-Former/T5-base (d=768)": (8192, 768), "LLM (d=4096)": (8192, 4096)}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def launch_table(title: str, launches: list[Launch]) -> list[str]:
    lines = [f"**{title}**", "", "| launch | GFLOP | MB | compute µs | memory µs | floor µs | bound |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for launch in launches:
        bound = "compute" if launch.t_compute >= launch.t_memory else "memory"
        lines.append(f"| {launch.name} | {launch.flops / 1e9:.2f} | {launch.bytes / 1e6:.1f} | "
                     f"{us(launch.t_compute)} | {us(launch.t_memory)} | {us(launch.floor)} | {bound} |")
    lines.append(f"| **total** | | | | | **{us(total(launches))}** | |")
    return lines + [""]


def dma_summary() -> list[str]:
    lines = ["| shape | op | floor µs | frozen linear(s) µs | ratio |", "|---|---|---:|---:|---:|"]
    for name, (M, K, N, R, J) in SHAPES.items():
        fwd1, bwd1 = total(linear_fwd(M, K, N)), total(linear_bwd(M, K, N))
        rows = [
            ("dma_linear fwd, triton", total(triton_dma_fwd(M, K, N, R)), fwd1),
            ("dma_linear bwd, triton", total(triton_dma_bwd(M, K, N, R)), bwd1),
            ("dma_linear fwd, cuda (cuBLAS + CUDA)", total(cuda_dma_fwd(M, K, N, R)), fwd1),
            ("dma_linear fwd + gamma, cuda", total(cuda_dma_fwd_gamma(M, K, N, R)), fwd1),
            ("dma_linear bwd, cuda (cuBLAS + CUDA)", total(cuda_dma_bwd(M, K, N, R)), bwd1),
            (f"dma_linear_multi fwd J={J}, triton", total(triton_dma_fwd(M, K, N, R, J)), J * fwd1),
            (f"dma_linear_multi bwd J={J}, triton", total(triton_dma_bwd(M, K, N, R, J)), J * bwd1),
        ]
        for op, floor, frozen in rows:
            lines.append(f"| {name} (M={M}, K={K}, N={N}, R={R}) | {op} | {us(floor)} | {us(frozen)} | "
                         f"{floor / frozen:.2f} |")
    return lines + [""]


def gated_summary() -> list[str]:
    lines = ["| shape | granularity | direction | floor µs | x + h µs | frozen d×d linear µs | "
             "ratio to linear |", "|---|---|---|---:|---:|---:|---:|"]
    for name, (M, d) in GATED_SHAPES.items():
        for granularity in GATED_PASSES:
            for direction in ("forward", "backward"):
                floor = total(gated(M, d, granularity, direction))
                frozen = total(linear_fwd(M, d, d) if direction == "forward" else linear_bwd(M, d, d))
                lines.append(f"| {name}, M={M} | {granularity} | {direction} | {us(floor)} | "
                             f"{us(total(residual_add(M, d)))} | {us(frozen)} | {floor / frozen:.2f} |")
    return lines + [""]


def report() -> str:
    lines = [f"H100 SXM: {PEAK_FLOPS / 1e12:.0f} TFLOP/s dense bf16, {HBM_BYTES_PER_S / 1e12:.2f} TB/s HBM3; "
             f"ridge point {PEAK_FLOPS / HBM_BYTES_PER_S:.0f} FLOP/byte.", "",
             "### Summary: dma_linear (no gamma, static scale, bias)", "", *dma_summary(),
             "### Summary: gated_residual (with dropout mask)", "", *gated_summary(),
             "### Per launch", ""]
    M, K, N, R, J = SHAPES["Q-Former self-attn q/k/v"]
    lines += launch_table(f"frozen linear fwd, M={M}, K={K}, N={N}", linear_fwd(M, K, N))
    lines += launch_table(f"triton dma_linear fwd, M={M}, K={K}, N={N}, R={R}", triton_dma_fwd(M, K, N, R))
    lines += launch_table(f"triton dma_linear bwd, M={M}, K={K}, N={N}, R={R}", triton_dma_bwd(M, K, N, R))
    lines += launch_table(f"triton dma_linear_multi fwd J={J}", triton_dma_fwd(M, K, N, R, J))
    lines += launch_table(f"triton dma_linear_multi bwd J={J}", triton_dma_bwd(M, K, N, R, J))
    lines += launch_table("cuda dma_linear fwd (cuBLAS + CUDA kernels)", cuda_dma_fwd(M, K, N, R))
    lines += launch_table("cuda dma_linear fwd with gamma", cuda_dma_fwd_gamma(M, K, N, R))
    lines += launch_table("cuda dma_linear bwd (cuBLAS + CUDA kernels)", cuda_dma_bwd(M, K, N, R))
    M, K, N, R, J = SHAPES["LLM q/k/v (d=4096)"]
    lines += launch_table(f"triton dma_linear fwd, M={M}, K={K}, N={N}, R={R}", triton_dma_fwd(M, K, N, R))
    lines += launch_table(f"triton dma_linear bwd, M={M}, K={K}, N={N}, R={R}", triton_dma_bwd(M, K, N, R))
    M, d = GATED_SHAPES["Q-Former/T5-base (d=768)"]
    for granularity in GATED_PASSES:
        for direction in ("forward", "backward"):
            lines += launch_table(f"gated_residual {granularity} {direction}, M={M}, d={d}",
                                  gated(M, d, granularity, direction))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
