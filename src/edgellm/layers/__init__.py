"""edgellm's own PyTorch building blocks, assembled from a spec's Architecture: decoder-only LLMs
(decoder.py), bidirectional text encoders of the BERT family (encoder.py) and encoder-decoders (t5.py).
Which model a spec builds is its kind's choice (kinds/)."""
