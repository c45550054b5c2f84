"""Chat templates: render a Hugging Face template (Jinja) the way transformers does, turn the
rendered text into ids, and derive the prompt prefix/suffix that bundles store."""

from __future__ import annotations

import re
from pathlib import Path

from edgellm.errors import EdgeLLMError
from edgellm.infra.files import inside
from edgellm.text.prompt import PromptSettings
from edgellm.text.tokenizer import Tokenizer

_PROBE = "\x00edgellm-probe\x00"


def render_chat(template: str, messages: list[dict], special_strings: dict[str, str]) -> str:
    """Render a chat template over `messages`, ready for the reply (add_generation_prompt)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise EdgeLLMError(f"chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special_strings)
    except jinja2.TemplateError as exc:
        raise EdgeLLMError(f"chat template does not render ({exc}); fix it or pass --chat-template FILE") from None


def encode_with_specials(tokenizer: Tokenizer, text: str, specials: dict[str, int]) -> list[int]:
    """Encode text in which special tokens appear as strings (a rendered chat template).

    SentencePiece never maps control tokens such as `<bos>` from text, so they are cut out
    and placed as ids; the text between them is encoded normally.
    """
    if not specials:
        return tokenizer.encode(text)
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids: list[int] = []
    for part in re.split(pattern, text):
        if part in specials:
            ids.append(specials[part])
        elif part:
            ids.extend(tokenizer.encode(part))
    return ids


def prompt_affixes(settings: PromptSettings) -> tuple[str, str]:
    """(prefix, suffix) around one user message, as the chat template renders it; spec overrides win.

    The template is rendered on a single probe message: what precedes the probe is the prefix,
    what follows it (end of the user turn, start of the model's) is the suffix. The BOS text is
    left out: the runtime adds the start token itself.
    """
    prefix, suffix = settings.prompt_prefix, settings.prompt_suffix
    if settings.chat_template and (prefix is None or suffix is None):
        rendered = render_chat(settings.chat_template, [{"role": "user", "content": _PROBE}], settings.template_strings)
        before, _, after = rendered.partition(_PROBE)
        if settings.bos_token and before.startswith(settings.bos_token):
            before = before[len(settings.bos_token) :]
        prefix = before if prefix is None else prefix
        suffix = after if suffix is None else suffix
    return prefix or "", suffix or ""


def checkpoint_template(checkpoint_dir: Path, tokenizer_config: dict) -> str | None:
    """The checkpoint's chat template: transformers 5 saves it beside the config; older checkpoints
    keep it inside tokenizer_config.json, sometimes as a list of named templates."""
    if (checkpoint_dir / "chat_template.jinja").is_file():
        try:
            return inside(checkpoint_dir, "chat_template.jinja", "chat template").read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise EdgeLLMError(f"{checkpoint_dir}/chat_template.jinja is not UTF-8 text; re-download it") from None
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template
