"""Linear layers that read the same input, merged into one."""

from torch import nn


def merged(*linears: nn.Linear) -> nn.Linear:
    """An empty (meta) Linear whose output is the outputs of `linears` side by side, which share one
    input and one bias setting: the runtime then runs one larger matmul instead of several small
    ones. The loader fills it with the parts' weights."""
    first = linears[0]
    return nn.Linear(first.in_features, sum(linear.out_features for linear in linears), bias=first.bias is not None, device="meta")
