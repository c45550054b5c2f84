"""A tiny random T5ForConditionalGeneration written by transformers, with a real SentencePiece
tokenizer trained here (T5's special ids: pad 0, eos 1, unk 2, no BOS) on tinyshakespeare.

Relative attention uses 8 buckets and a max distance of 12, so verification inputs longer than
that exercise the logarithmic and saturated buckets.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "assets" / "corpora" / "tinyshakespeare" / "input.txt"
CONFIG = {"d_model": 64, "d_ff": 96, "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4, "d_kv": 16,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 8, "relative_attention_max_distance": 12,
          "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
          "initializer_factor": 0.5}  # logits spread like a trained model's (std ~2), so 1e-3 means something


def make_tiny_t5(folder: Path, vocab_size: int = 320, **extra) -> Path:
    import sentencepiece
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    text = SHAKESPEARE.read_text(encoding="utf-8")[:200_000].splitlines()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(line for line in text if line.strip()), model_prefix=str(folder / "spiece"), vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, model_type="unigram", minloglevel=2,
    )
    (folder / "spiece.vocab").unlink()
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=vocab_size, **{**CONFIG, **extra}))
    with torch.no_grad():  # norms away from 1, as in trained checkpoints, so a missing norm weight shows
        for name, param in model.named_parameters():
            if "layer_norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
        # transformers ties T5's output head to the embedding: at random init each token's own
        # embedding then dominates its next logit and greedy decoding repeats one token forever.
        # Small embeddings let the blocks decide; a larger final norm gives the logits their spread back.
        model.shared.weight.mul_(0.1)
        model.decoder.final_layer_norm.weight.mul_(10.0)
    model.save_pretrained(folder)
    return folder
