"""bundle and check: a model packaged for a runtime, and any tool's bundle checked as that runtime will use it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from edgellm.cli.build import pipeline
from edgellm.cli.options import BundleFormat, chat_template_option, json_option, model_argument, tokenizer_option
from edgellm.cli.output import Progress, console, emit_json


@click.command(epilog="\b\nExamples:\n  edgellm bundle build/stories260k/model.tflite --format litertlm\n"
               "  edgellm bundle build/stories260k/model.tflite --format task -o stories.task")
@model_argument()
@click.option("--format", "fmt", type=BundleFormat(), required=True, help="A registered bundle format (bundle/formats.py).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Default: MODEL with the format's extension.")
@tokenizer_option()
@chat_template_option()
@click.option("--stop-id", "stop_ids", multiple=True, type=int, help="Stop token id (repeatable; default: the model's).")
@json_option()
def bundle(model, fmt, output, tokenizer, template_file, stop_ids, as_json) -> None:
    """Package MODEL with its tokenizer, start/stop tokens and prompt template for a runtime.

    Before writing, a pre-flight checks that the bundle will work there: the start and stop tokens
    exist, and the chat template renders in LiteRT-LM to the prompt `edgellm chat` would feed.
    """
    from edgellm.infra.files import publish, read_text

    stage, template = f"bundle-{fmt}", read_text(template_file, "chat template") if template_file else None
    build = pipeline(Progress(model.name, as_json, stage), model=model, tokenizer=tokenizer, formats=(fmt,), chat_template=template, stop_ids=stop_ids)
    result = build.result(stage)
    output = publish(result.file, output or model.with_suffix(f".{fmt}"))
    if as_json:
        emit_json({**result.as_json(), "output": str(output)})
        return
    click.echo(output)


@click.command("check", epilog="\b\nExamples:\n  edgellm check build/smollm2-135m/smollm2-135m.litertlm\n  edgellm check other-tool.task --json\n"
               "  edgellm check build/smollm2-lora/smollm2-135m.litertlm --adapter my-lora.tflite")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-generate", is_flag=True, help="Skip the short greedy generation through LiteRT-LM's engine.")
@click.option("--adapter", type=click.Path(dir_okay=False, path_type=Path),
              help="Also prove this LoRA file takes effect: it fits the model, every LoRA input reaches the output, a zero adapter changes "
                   "nothing, and LiteRT-LM's greedy text with it equals edgellm's.")
@json_option("Print the checks as JSON.")
def check_bundle(path, no_generate, adapter, as_json) -> None:
    """Check a .litertlm or .task bundle (any tool's) the way its runtime will use it: a deploy gate.

    Signatures, KV length, start/stop tokens, the chat template as LiteRT-LM renders it, the
    tokenizer, and a short greedy reply through LiteRT-LM's engine. Exit 2 when a check fails.
    """
    from edgellm.bundle.check import check_bundle as run_checks
    from edgellm.errors import EdgeLLMError

    report = run_checks(path, generate=not no_generate)
    if adapter is not None:
        from edgellm.bundle.adapter import adapter_checks

        if report["format"] != "litertlm":
            raise EdgeLLMError(f"{path}: LoRA adapters are checked in .litertlm bundles (LiteRT-LM loads them per conversation)")
        if report["ok"]:
            report["checks"] += [c.as_json() for c in adapter_checks(path, adapter)]
            report["ok"] = all(c["ok"] for c in report["checks"])
    if as_json:
        emit_json(report)
    else:
        for item in report["checks"]:
            mark = "[green]ok[/]  " if item["ok"] else "[red]FAIL[/]"
            console().print(f"  {mark} {item['name']:<12} {item['detail']}", markup=True, highlight=False)
    if not report["ok"]:
        sys.exit(2)


@click.command("adapter", epilog="\b\nExamples:\n  edgellm adapter ./my-lora --base build/smollm2-lora/model.tflite -o my-lora.tflite\n"
               "  edgellm adapter --zero --base build/smollm2-lora/model.tflite -o base.tflite\n"
               "  edgellm run build/smollm2-lora/model.tflite --adapter my-lora.tflite --prompt 'Hi'")
@click.argument("peft_dir", required=False, type=click.Path(path_type=Path))
@click.option("--base", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The model.tflite or .litertlm edgellm built with --lora-rank (its edgellm.json beside it).")
@click.option("--zero", is_flag=True, help="Write the all-zero LoRA file instead: the base model, for a LiteRT-LM conversation without an adapter.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The LoRA file to write.")
@json_option()
def adapter(peft_dir, base, zero, output, as_json) -> None:
    """Write PEFT_DIR (a PEFT LoRA adapter) as the LoRA file LiteRT-LM loads per conversation for BASE.

    Its layers become BASE's LoRA inputs (A scaled by alpha / r, transposed), zero-padded to BASE's rank.
    `edgellm run/chat MODEL --adapter FILE` runs it; `edgellm check BUNDLE --adapter FILE` proves it takes effect.
    LiteRT-LM 0.18 binds nothing to LoRA inputs in a conversation that loads no LoRA file: give those --zero's file.
    """
    from edgellm.bundle.adapter import write_adapter
    from edgellm.errors import EdgeLLMError

    if (peft_dir is None) == (not zero):
        raise EdgeLLMError("pass either a PEFT adapter folder or --zero (the base model's all-zero LoRA file)")
    report = write_adapter(peft_dir, base, output)
    if as_json:
        emit_json(report.model_dump())
        return
    kind = "all-zero (the base model)" if zero else f"{report.method} rank {report.rank} (padded to {report.model_rank}), {report.adapted_weights} adapted weights"
    click.echo(f"{output}: {kind}, {report.tensors} tensors, {report.size_bytes / 1e6:.2f} MB")
