"""edgellm's own PyTorch building blocks, assembled from a spec's Architecture: decoder-only LLMs,
bidirectional text encoders (BERT family) and encoder-decoders (T5)."""

from torch import nn

from edgellm_cli.layers.decoder import Decoder
from edgellm_cli.spec import Architecture

__all__ = ["Decoder", "build_model"]


def build_model(arch: Architecture) -> nn.Module:
    """The model `arch.kind` names, with every parameter of the architecture (weights unset)."""
    if arch.kind == "encoder":
        from edgellm_cli.layers.encoder import TextEncoder

        return TextEncoder(arch)
    if arch.kind == "encoder-decoder":
        from edgellm_cli.layers.t5 import EncoderDecoder

        return EncoderDecoder(arch)
    return Decoder(arch)
