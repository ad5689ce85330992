import os

import torch

# Triton kernels run on CPU tensors only under its interpreter, which must be on before
# petal_kernels.triton is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
