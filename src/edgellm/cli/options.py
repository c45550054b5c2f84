"""Options several commands share, and the parameter types behind them."""

from __future__ import annotations

from pathlib import Path

import click


class BundleFormat(click.Choice):
    """A name from bundle/formats.FORMATS, the registry, read only when a value or --help needs it
    (the registry's imports would slow every command's start)."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from edgellm.bundle.formats import FORMATS

        return tuple(FORMATS)

    @choices.setter
    def choices(self, _) -> None:
        pass


def _apply(func, decorators):
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def spec_options(func):
    """Options shared by every command that works from a spec."""
    return _apply(func, [
        click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False),
                     help="YAML model spec: a file, or the name of a shipped one (`edgellm spec list`)."),
        click.option("--checkpoint", type=click.Path(path_type=Path), help="Use this local checkpoint folder instead of the spec's source."),
        click.option("--token", envvar="HF_TOKEN", help="Hugging Face token for gated or private repos (default: $HF_TOKEN)."),
        click.option("--offline", is_flag=True, default=None, help="Use only the local Hugging Face cache (also: HF_HUB_OFFLINE=1)."),
        json_option("Print a machine-readable JSON report on stdout."),
        cache_option,
        click.option("--adapter", "adapters", multiple=True, type=click.Path(path_type=Path),
                     help="A PEFT LoRA adapter folder merged into the weights (repeatable: applied in order); verify compares with "
                          "transformers + peft applying it."),
        click.option("--lora-rank", type=click.Choice(["16", "32"]),
                     help="Build for swappable adapters: every signature also takes LoRA weights of this rank (the ranks LiteRT-LM's engine "
                          "runs); write adapters with `edgellm adapter`."),
        click.option("--lora-targets", metavar="q,k,v,o", help="The attention projections the LoRA inputs feed (default: q,k,v,o)."),
    ])


def with_lora_inputs(spec, lora_rank: str | None, lora_targets: str | None):
    """`spec` with its export section taking --lora-rank / --lora-targets (one-line error for a bad target)."""
    from pydantic import ValidationError

    from edgellm.errors import EdgeLLMError
    from edgellm.spec.schema import ExportSection

    if lora_rank is None and lora_targets is None:
        return spec
    update = {"lora_rank": int(lora_rank) if lora_rank else spec.export.lora_rank or 16}
    if lora_targets is not None:
        update["lora_targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
    try:
        export = ExportSection.model_validate({**spec.export.model_dump(), **update})
    except ValidationError:
        raise EdgeLLMError(f"--lora-targets {lora_targets}: name attention projections among q, k, v, o, each once "
                           "(LiteRT-LM feeds LoRA weights to those; merge other adapters with --adapter)") from None
    return spec.model_copy(update={"export": export})


def sampling_options(func):
    """Sampling and stopping options shared by `run` and `chat`."""
    return _apply(func, [
        click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(min=1), help="New tokens to generate at most."),
        click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 is greedy."),
        click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="Keep the k most likely tokens (0: all)."),
        click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True), help="Keep the smallest set with this probability mass."),
        click.option("--min-p", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Drop tokens below this share of the top token's probability."),
        click.option("--repetition-penalty", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True), help="Above 1 discourages tokens already seen."),
        click.option("--seed", type=int, help="Seed for sampling, for reproducible output."),
        click.option("--stop-id", "stop_ids", multiple=True, type=int, help="Stop at this token id (repeatable; replaces the model's stop ids)."),
        click.option("--stop", "stop_strings", multiple=True, help="Stop when the text contains this string (repeatable)."),
        tokenizer_option("tokenizer.model or tokenizer.json (default: the one beside MODEL)."),
        threads_option(),
        click.option("--max-prefill", type=click.IntRange(min=1), help="Use only prefill signatures up to this length (longer prompts go in chunks)."),
        click.option("--adapter", type=click.Path(dir_okay=False, path_type=Path),
                     help="A LoRA file (`edgellm adapter`) for a model built with --lora-rank: its weights feed the model's LoRA inputs."),
    ])


def json_option(text: str = "Print the report as JSON."):
    return click.option("--json", "as_json", is_flag=True, help=text)


def tokenizer_option(text: str = "Default: the one named by edgellm.json beside MODEL."):
    return click.option("--tokenizer", type=click.Path(dir_okay=False, path_type=Path), help=text)


def threads_option():
    return click.option("--threads", type=click.IntRange(min=1), help="CPU threads (default: LiteRT's choice).")


def model_argument():
    return click.argument("model", type=click.Path(dir_okay=False, path_type=Path))


calibration_option = click.option(
    "--calibration", type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Text that calibrates a recipe's gptq rules (default: the shipped calibration text; held-out windows of it score the result).")


def chat_template_option(default: str = "the model's"):
    return click.option("--chat-template", "template_file", type=click.Path(dir_okay=False, path_type=Path),
                        help=f"Jinja chat template file (default: {default}).")


cache_option = click.option("--cache", "cache_url", envvar="EDGELLM_CACHE_URL", metavar="URL",
                            help="A shared cache tier: s3://bucket/prefix, gs://bucket/prefix, file:///path or a folder "
                                 "(also $EDGELLM_CACHE_URL). A local miss looks there before building; a build is published there.")


def artifact_cache(cache_url: str | None):
    """The local cache, with the remote tier `cache_url` names behind it."""
    from edgellm.infra.cache import ArtifactCache
    from edgellm.infra.remote import RemoteCache

    return ArtifactCache(remote=RemoteCache(cache_url) if cache_url else None)
