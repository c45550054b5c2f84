"""Chat templates as LiteRT-LM renders them.

LiteRT-LM (0.18) renders a `.litertlm`'s `jinja_prompt_template` with Rust minijinja, not Python
Jinja2 (runtime/components/prompt_template.cc, runtime/components/rust/minijinja_template.rs):
Python method calls are first rewritten into filters and tests by regular expressions, the
environment has trim_blocks, lstrip_blocks and keep_trailing_newline, a few helpers
(raise_exception, strftime_now, tojson, lstrip, rstrip, `is none`) and no Python compatibility.
Every message reaches the template with its content as a list of parts,
`[{"type": "text", "text": ...}]` (NormalizeMessageContent in model_data_processor/data_utils.cc),
and each turn prefills only what the conversation adds to the previous rendering, which must be
a prefix of the new one (Conversation::GetSingleTurnTextFromFullHistory).

Hugging Face templates concatenate `message['content']` as a string, so edgellm puts a preamble
in front of the template at bundle time that turns list content back into text; with string
content the adapted template renders exactly as the original.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from edgellm.errors import EdgeLLMError

# Recognised on re-bundling, so a template is adapted once.
ADAPTED_MARKER = "{#- edgellm: list-of-parts content as text -#}"
# A top-level `set` shadows the `messages` variable for the rest of the template. The preamble
# emits nothing; its last tag has no `-` so the template's own leading text is left alone.
PREAMBLE = (
    ADAPTED_MARKER
    + "{%- set __edgellm = namespace(messages=[]) -%}"
    "{%- for __m in messages -%}"
    "{%- if __m.content is defined and __m.content is not string and __m.content is iterable -%}"
    "{%- set __edgellm.messages = __edgellm.messages + [dict(__m, content=__m.content"
    " | selectattr('type', 'equalto', 'text') | map(attribute='text') | join)] -%}"
    "{%- else -%}{%- set __edgellm.messages = __edgellm.messages + [__m] -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- set messages = __edgellm.messages %}"
)

# LiteRT-LM's EditTemplateForMinijinja, in order: Python idioms of tokenizer_config.json templates.
_REWRITES = [
    (r"(?s)\.startswith\((.*?)\)", r" is startingwith \1"),
    (r"(?s)\.endswith\((.*?)\)", r" is endingwith \1"),
    (r"(?s)\.replace\((.*?),(.*?)\)", r" | replace(\1,\2)"),
    (r"(?s)\.split\((.*?)\)\[0\]", r" | split(\1) | first"),
    (r"(?s)\.split\((.*?)\)\[-1\]", r" | split(\1) | last"),
    (r"(?s)\.split\((.*?)\)", r" | split(\1)"),
    (r"(?s)\.join\((.*?)\)", r" | join(\1)"),
    (r"\.lstrip\(\)", " | lstrip"),
    (r"(?s)\.lstrip\((.*?)\)", r" | lstrip(\1)"),
    (r"\.rstrip\(\)", " | rstrip"),
    (r"(?s)\.rstrip\((.*?)\)", r" | rstrip(\1)"),
    (r"\.strip\(\)", " | trim"),
    (r"(?s)\.strip\((.*?)\)", r" | trim(\1)"),
    (r"\.items\(\)", " | items"),
    (r"{% generation %}", ""),
    (r"{% endgeneration %}", ""),
]


def adapt_for_litert_lm(template: str, turn_tail: str = "") -> str:
    """The template with the preamble that reads list-of-parts content as text (once).

    `turn_tail` is what the template writes after an assistant message past its stop token (the
    newline after `<|im_end|>`). LiteRT-LM prefills each turn as the difference between two
    renderings and keeps the reply and its stop token in the cache, so the tail must come with
    the next turn: the history's rendering leaves it out, and the cache then holds exactly the
    tokens of the whole conversation rendered at once, as `edgellm chat` feeds them.
    """
    if ADAPTED_MARKER in template:
        return template
    if not turn_tail:
        return PREAMBLE + template
    # Jinja2 (transformers) drops one final newline of the source; keep it out of the captured text.
    body = template.removesuffix("\n")
    return (
        PREAMBLE + "{%- set __edgellm_text %}" + body + "{% endset -%}"
        "{%- if not add_generation_prompt and messages and messages[-1].role == 'assistant'"
        f" and __edgellm_text is endingwith {json.dumps(turn_tail)} -%}}"
        f"{{{{ __edgellm_text[:-{len(turn_tail)}] }}}}"
        "{%- else -%}{{ __edgellm_text }}{%- endif -%}"
    )


def turn_tail(template: str, stop_texts: list[str]) -> str:
    """What the template writes after an assistant message's stop token, as LiteRT-LM renders it
    ("" when no stop token follows the message)."""
    probe = "edgellm-reply-probe"
    rendered = render_litert_lm(template, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": probe}], add_generation_prompt=False)
    after = rendered.partition(probe)[2]
    stop_text = next((s for s in stop_texts if s and after.startswith(s)), "")
    return after[len(stop_text) :] if stop_text else ""


def minijinja_source(template: str) -> str:
    """The source LiteRT-LM hands to minijinja."""
    for pattern, replacement in _REWRITES:
        template = re.sub(pattern, replacement, template)
    return template


def as_parts(messages: list[dict]) -> list[dict]:
    """Messages as LiteRT-LM's Conversation gives them to the template: content as a list of parts."""
    return [{**m, "content": [{"type": "text", "text": m["content"]}]} if isinstance(m.get("content"), str) else m for m in messages]


def _environment():
    import minijinja

    def raise_exception(message):
        raise minijinja.TemplateError(str(message))

    def strftime_now(state, fmt):
        now = state.lookup("now")
        moment = datetime.fromtimestamp(now, UTC) if isinstance(now, int) else datetime.now(UTC)
        return moment.strftime(fmt)

    def tojson(value):
        return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))

    env = minijinja.Environment()
    env.pycompat = False  # LiteRT-LM's minijinja calls no Python methods: `s.upper()` fails there
    env.keep_trailing_newline, env.trim_blocks, env.lstrip_blocks = True, True, True
    env.add_function("raise_exception", raise_exception)
    env.add_function("strftime_now", minijinja.pass_state(strftime_now))
    env.add_filter("tojson", tojson)
    env.add_filter("lstrip", lambda s, chars=None: str(s).lstrip(chars))
    env.add_filter("rstrip", lambda s, chars=None: str(s).rstrip(chars))
    env.add_test("none", lambda value: value is None)  # LiteRT-LM: undefined (missing) values
    return env


def render_litert_lm(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "", add_generation_prompt: bool = True) -> str:
    """Render as LiteRT-LM does; a template error becomes a one-line EdgeLLMError."""
    import minijinja

    try:
        return _environment().render_str(
            minijinja_source(template), messages=messages, tools=None, add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token,
        )
    except minijinja.TemplateError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EdgeLLMError(f"chat template does not render in LiteRT-LM ({reason}); pass --chat-template FILE with a template it renders") from None


# Conversations a template must render: LiteRT-LM sends each with list-of-parts content.
PROBE_CONVERSATIONS: dict[str, list[dict]] = {
    "one user message": [{"role": "user", "content": "What is the capital of France?"}],
    "system and user": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
    "several turns": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another?"},
    ],
}
