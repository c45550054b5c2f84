"""edgellm's own PyTorch building blocks for decoder-only LLMs, assembled from a spec's Architecture."""

from edgellm_cli.layers.decoder import Decoder

__all__ = ["Decoder"]
