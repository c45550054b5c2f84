"""edgellm: take a trained Hugging Face LLM to a verified, multi-signature LiteRT `.tflite`."""

__version__ = "0.2.0"
