"""run, chat, embed: a model file on the LiteRT runtime, whatever its kind takes."""

from __future__ import annotations

import sys

import click

from edgellm.cli.options import chat_template_option, json_option, model_argument, sampling_options, threads_option, tokenizer_option
from edgellm.cli.output import console, emit_json


def generator(command: str, model, tokenizer, threads, max_prefill, stop_ids, stop_strings, adapter=None, **sampling):
    """What generates text from MODEL, as its kind does it (kinds/), with a LoRA file's weights if given."""
    from edgellm.kinds import model_kind
    from edgellm.runtime.sampler import Sampler

    made = model_kind(model, command).generator(model, tokenizer, Sampler(**sampling), stop_ids, stop_strings, threads, max_prefill)
    if adapter is not None:
        made.load_adapter(adapter)
    return made


@click.command(epilog="\b\nExamples:\n  edgellm run build/stories260k/model.tflite --max-tokens 200\n"
               "  edgellm run model.tflite --prompt 'Once' --temperature 0.8 --top-p 0.9 --seed 1 --json\n"
               "  edgellm run build/smollm2-lora/model.tflite --adapter my-lora.tflite --prompt 'Hi'")
@model_argument()
@click.option("--prompt", default="", help="Text to continue (BOS is added when the model uses it).")
@sampling_options
@json_option("Print the text, token ids and tokens/s as JSON instead of streaming.")
def run(model, prompt, max_tokens, tokenizer, threads, max_prefill, stop_ids, stop_strings, as_json, **sampling) -> None:
    """Generate text from MODEL (.tflite) on the LiteRT runtime, streaming it as it comes.

    An encoder-decoder (T5) answers the prompt: it is encoded once, then the decoder generates."""
    import time

    gen = generator("run", model, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling)
    prompt_ids, generated, pieces = gen.prompt_ids(prompt), [], []
    started = time.perf_counter()
    for piece in gen.complete(prompt_ids, max_tokens, generated):
        pieces.append(piece)
        if not as_json:
            click.echo(piece, nl=False)
    seconds = time.perf_counter() - started
    rate = round(len(generated) / seconds, 2)
    if as_json:
        emit_json({"text": "".join(pieces), "tokens": generated, "prompt_tokens": len(prompt_ids), "seconds": round(seconds, 4), "tokens_per_second": rate})
    else:
        click.echo()
        console().print(f"[dim]{len(generated)} tokens in {seconds:.2f}s ({rate:.1f} tokens/s)[/]")


@click.command(epilog="\b\nExamples:\n  edgellm chat build/qwen2.5-0.5b/model.tflite --system 'Be brief.'\n"
               "  printf 'Hi\\nAnd then?\\n' | edgellm chat model.tflite --chat-template t.jinja")
@model_argument()
@click.option("--system", help="A system message opening the conversation.")
@chat_template_option("the checkpoint's")
@sampling_options
def chat(model, system, template_file, max_tokens, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling) -> None:
    """Talk with MODEL: one line per user turn (/reset starts over, /exit or end of input ends).

    The chat template renders the whole conversation each turn; only the tokens that differ from
    what the KV cache already holds are computed.
    """
    from edgellm.errors import EdgeLLMError
    from edgellm.infra.files import read_text
    from edgellm.runtime.generate import Chat

    template = read_text(template_file, "chat template") if template_file else None
    conversation = Chat(generator("chat", model, tokenizer, threads, max_prefill, stop_ids, stop_strings, **sampling), max_tokens, system, template)
    if sys.stdin is None or sys.stdin.closed:
        raise EdgeLLMError("standard input is closed; chat reads one user message per line from it (pipe text in, or run it in a terminal)")
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            click.echo("> ", nl=False, err=True)
        try:
            line = sys.stdin.readline()
        except UnicodeDecodeError:
            raise EdgeLLMError("standard input is not valid UTF-8 text; chat reads UTF-8 lines") from None
        if not line or line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            conversation.reset()
            continue
        for piece in conversation.turn(line.rstrip("\n")):
            click.echo(piece, nl=False)
        click.echo()
        console().print(f"[dim]({conversation.session.computed} prompt tokens computed, {conversation.reused} reused from the cache)[/]")


@click.command(epilog="\b\nExamples:\n  edgellm embed build/all-minilm-l6-v2/model.tflite 'A sentence.' 'Another one.' --similarity\n"
               "  edgellm embed model.tflite 'Some text' --json")
@model_argument()
@click.argument("texts", nargs=-1, required=True)
@click.option("--similarity", is_flag=True, help="Print the cosine similarity matrix of the texts instead of the vectors.")
@tokenizer_option("tokenizer.json (default: the one beside MODEL).")
@threads_option()
@json_option("Print texts, embeddings (and the similarity matrix) as JSON.")
def embed(model, texts, similarity, tokenizer, threads, as_json) -> None:
    """Sentence embeddings of TEXT... from an embedding MODEL (.tflite with embed_N signatures).

    Each text goes through the smallest embed_N that holds it; a longer one is truncated to the
    largest N, with a warning, as sentence-transformers truncates to max_seq_length.
    """
    import numpy as np

    from edgellm.kinds import model_kind
    from edgellm.runtime.encoder import EmbeddingModel, cosine_matrix
    from edgellm.runtime.generate import valid_text

    model_kind(model, "embed")
    results = EmbeddingModel(model, tokenizer, threads).embed([valid_text(t, "the text") for t in texts])
    for i, result in enumerate(results):
        if result.truncated_from is not None:
            console().print(f"[yellow]warning:[/] text {i + 1} has {result.truncated_from} tokens; truncated to {result.tokens} (the longest signature)")
    vectors = [r.vector for r in results]
    matrix = cosine_matrix(np.stack(vectors))
    if as_json:
        emit_json({"texts": list(texts), "dimension": int(vectors[0].size), "embeddings": [v.tolist() for v in vectors],
                   **({"similarity": matrix.round(6).tolist()} if similarity else {})})
    elif similarity:
        width = len(str(len(texts)))
        for i, row in enumerate(matrix):
            click.echo(f"[{i + 1:>{width}}] " + " ".join(f"{value:6.3f}" for value in row) + f"  {texts[i]}")
    else:
        for vector in vectors:
            click.echo(" ".join(f"{value:.6f}" for value in vector))
