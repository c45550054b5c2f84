"""Linear layers that read the same input, merged into one for export."""

import torch
from torch import nn


def merged(*linears: nn.Linear) -> nn.Linear | None:
    """One Linear whose output is the outputs of `linears` side by side: the runtime then runs one
    larger matmul instead of several small ones, each with its own dispatch. None when some have a
    bias and some not."""
    if len({linear.bias is None for linear in linears}) != 1:
        return None
    first = linears[0]
    with torch.no_grad():
        weight = torch.cat([linear.weight for linear in linears])
        bias = None if first.bias is None else torch.cat([linear.bias for linear in linears])
    out = nn.Linear(first.in_features, weight.shape[0], bias=bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias, requires_grad=False)
    return out
