"""What every petal module inserted into a model is: a wrapper that keeps the module it replaced.

``petal.unpatch`` puts every ``AdapterWrapper.base_layer`` back where the wrapper stands, so the
original modules (same objects, same storage) return bit-for-bit.
"""

from __future__ import annotations

from torch import nn


class AdapterWrapper(nn.Module):
    """Wraps ``base_layer`` (frozen) and adds trainable adapter state around it.

    Subclasses implement ``forward``; static-update wrappers also implement ``merge`` and
    ``unmerge``, which fold their update into ``base_layer``'s weights and back.
    """

    mergeable = False

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.merged = False

    def merge(self) -> None:
        raise TypeError(f"{type(self).__name__} has no static update to merge")

    def unmerge(self) -> None:
        raise TypeError(f"{type(self).__name__} has no static update to unmerge")


def run_forward_hooks(module: nn.Module, args: tuple, kwargs: dict, output):
    """Fire ``module``'s forward hooks although a wrapper computed its output instead of its ``forward``,
    so observers registered on it (``transformers``' ``output_attentions`` recorders) still see it.
    Forward pre-hooks do not run."""
    for hook_id, hook in module._forward_hooks.items():
        if module._forward_hooks_with_kwargs.get(hook_id, False):
            result = hook(module, args, kwargs, output)
        else:
            result = hook(module, args, output)
        if result is not None:
            output = result
    return output
