"""The `edgellm` command line: one small module per command group, which parses arguments, calls
the pipeline, a kind's runtime or a measurement, and prints the result.

Heavy modules (torch, litert_torch, transformers) are imported inside the commands, so
`edgellm --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import click

from edgellm import __version__
from edgellm.cli import build, cache, explore, generate, matrix, measure, package, quantize, spec, tokenizer

EXAMPLES = """
\b
Examples:
  edgellm build --spec stories260k                          # fetch, verify, convert, verify .tflite (the embedded demo model)
  edgellm run build/stories260k/model.tflite --max-tokens 200
  edgellm build --spec MODEL_NAME --checkpoint ./local-checkpoint --json   # a shipped spec, local weights
  edgellm spec list                                         # the shipped specs
"""


@click.group(epilog=EXAMPLES)
@click.version_option(__version__, prog_name="edgellm")
def cli() -> None:
    """Take a Hugging Face LLM to a verified LiteRT .tflite with prefill_N and decode signatures.

    Every stage's output is a content-addressed artifact in ~/.cache/edgellm (or
    $EDGELLM_CACHE_DIR), so re-running skips finished work. Exit codes: 0 success,
    2 bad input, 3 verification beyond tolerance, 1 internal error.
    """


for command in (build.build, build.fetch, build.verify, build.convert, generate.run, generate.chat, generate.embed, measure.bench,
                measure.evaluate_models, measure.inspect, quantize.quantize, quantize.recipes, package.bundle, package.check_bundle, package.adapter, spec.spec,
                cache.cache, tokenizer.tokenizer, matrix.matrix, explore.explore):
    cli.add_command(command)


def main() -> None:
    from edgellm.errors import EdgeLLMError
    from edgellm.infra.quiet import quiet_libraries, silence_native_stderr

    quiet_libraries()
    silence_native_stderr()
    try:
        # Not cli.main(): it turns Ctrl-C into a blank line and an Abort before edgellm sees it.
        with cli.make_context("edgellm", sys.argv[1:]) as context:
            cli.invoke(context)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgeLLMError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("error: interrupted; nothing half-written was kept (finished stages are cached: run it again to go on)", err=True)
        sys.exit(130)
    except BrokenPipeError:  # the reader of our output went away (`| head`): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as exc:
        if os.environ.get("EDGELLM_DEBUG"):
            raise
        first_line = (str(exc).splitlines() or [""])[0]
        click.echo(f"error: internal error ({type(exc).__name__}: {first_line}); rerun with EDGELLM_DEBUG=1 for the traceback and report it", err=True)
        sys.exit(1)
