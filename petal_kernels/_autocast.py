"""Autocast for the custom ops: under ``torch.autocast`` every floating argument runs in its dtype."""

from __future__ import annotations

import torch


def autocast_args(*args):
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is None:
        return args
    device_type = first.device.type
    if not torch.is_autocast_enabled(device_type):
        return args
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
    )
