"""Will a bundle work in its runtime? The pre-flight `bundle` runs before writing.

The checks follow what LiteRT-LM 0.18 does with a `.litertlm` (see text/litert_template.py): it renders
the carried template with minijinja on list-of-parts content, with `bos_token` and `eos_token`
empty, adds the start token itself, prefills each turn as the difference of two renderings, and
stops at the metadata's stop tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgellm.errors import EdgeLLMError
from edgellm.text.chat_template import encode_with_specials, render_chat
from edgellm.text.litert_template import PROBE_CONVERSATIONS, adapt_for_litert_lm, as_parts, render_litert_lm, turn_tail
from edgellm.text.prompt import PromptSettings
from edgellm.text.tokenizer import Tokenizer

# LiteRT-LM LlmModelType (llm_model_type.proto) by checkpoint family. Qwen 2.5 and Qwen 3 have their
# own data processors (tool-call syntax in replies); other families run as generic models, whose
# processor only turns the rendered prompt into text input. Gemma 3's processor is left out until
# a test runs it.
MODEL_TYPES = {"qwen2": "qwen2p5", "qwen3": "qwen3"}


def model_type(name: str | None) -> str:
    """The LlmModelType field for a build, from the spec's name."""
    name = (name or "").lower().replace(".", "").replace("-", "")
    return next((kind for family, kind in MODEL_TYPES.items() if name.startswith(family)), "generic_model")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _piece(tokenizer: Tokenizer, token_id: int) -> str | None:
    return tokenizer.piece(token_id) if 0 <= token_id < tokenizer.vocab_size else None


def token_check(tokenizer: Tokenizer, start_id: int | None, stop_ids: list[int]) -> Check:
    """The start and stop tokens are ids the tokenizer has, and there is a stop token."""
    missing = [i for i in ([start_id] if start_id is not None else []) + list(stop_ids) if _piece(tokenizer, i) is None]
    if missing:
        return Check("tokens", False, f"token ids {missing} are not in the tokenizer ({tokenizer.vocab_size} tokens); "
                                      "fix tokenizer.bos_id / stop_ids in the spec")
    if not stop_ids:
        return Check("tokens", False, "no stop token: generation would run to the token limit; set tokenizer.stop_ids in the spec")
    start = f"start {start_id} {_piece(tokenizer, start_id)!r}" if start_id is not None else "no start token"
    return Check("tokens", True, f"{start}; stop " + ", ".join(f"{i} {_piece(tokenizer, i)!r}" for i in stop_ids))


@dataclass
class ChatPlan:
    """What a `.litertlm` carries for chat: the adapted template and the start token LiteRT-LM adds."""

    template: str
    start_id: int | None
    problems: list[str] = field(default_factory=list)


def plan_chat(metadata: PromptSettings, tokenizer: Tokenizer) -> ChatPlan:
    """Adapt the chat template for LiteRT-LM and check that every probe conversation, as LiteRT-LM
    sends it, becomes the token ids `edgellm chat` feeds for it (whole and turn by turn)."""
    template, strings, specials = metadata.chat_template, metadata.template_strings, metadata.specials
    stop_texts = [p for i in metadata.stop_ids if (p := _piece(tokenizer, i))]
    try:
        adapted = adapt_for_litert_lm(template, turn_tail(template, stop_texts))
    except EdgeLLMError:
        adapted = adapt_for_litert_lm(template)
    # `edgellm chat` gets BOS from the template's bos_token text; LiteRT-LM renders that empty and
    # adds the start token instead, so the bundle has one exactly when the chat prompt starts with it.
    probe = PROBE_CONVERSATIONS["one user message"]
    bos = metadata.bos_id
    try:
        ours = encode_with_specials(tokenizer, render_chat(template, probe, strings), specials)
        theirs = tokenizer.encode(render_litert_lm(adapted, as_parts(probe)))
        start = bos if bos is not None and ours[:1] == [bos] and theirs[:1] != [bos] else None
    except EdgeLLMError:
        start = None  # the loop below reports it
    plan = ChatPlan(adapted, start)
    for name, conversation in PROBE_CONVERSATIONS.items():
        try:
            ours = encode_with_specials(tokenizer, render_chat(template, conversation, strings), specials)
            theirs = ([start] if start is not None else []) + tokenizer.encode(render_litert_lm(adapted, as_parts(conversation)))
        except EdgeLLMError as exc:
            plan.problems.append(f"{name}: {exc}")
            break
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            plan.problems.append(f"{name}: LiteRT-LM's prompt differs from edgellm chat's at token {at} "
                                 f"({tokenizer.decode(theirs[at:at + 6])!r} instead of {tokenizer.decode(ours[at:at + 6])!r})")
    plan.problems.extend(turn_problems(adapted))
    return plan


def turn_problems(template: str) -> list[str]:
    """LiteRT-LM prefills a turn as new rendering minus the previous one, which must be its prefix."""
    conversation = as_parts(PROBE_CONVERSATIONS["several turns"])
    problems = []
    for k, message in enumerate(conversation):
        if k == 0 or message["role"] != "user":
            continue
        try:
            old = render_litert_lm(template, conversation[:k], add_generation_prompt=False)
            new = render_litert_lm(template, conversation[: k + 1])
        except EdgeLLMError as exc:
            return [str(exc)]
        if not new.startswith(old):
            problems.append(f"turn {k // 2 + 1}: the rendering of the history is not a prefix of the next turn's, "
                            "so LiteRT-LM refuses the turn")
            break
    return problems


def preflight(metadata: PromptSettings, tokenizer: Tokenizer, fmt: str) -> ChatPlan | None:
    """Raise a one-line EdgeLLMError naming what would break in the runtime; the chat plan for a `.litertlm`."""
    plan = plan_chat(metadata, tokenizer) if metadata.chat_template and fmt == "litertlm" else None
    start = plan.start_id if plan else metadata.start_id
    tokens = token_check(tokenizer, start, metadata.stop_ids)
    if not tokens.ok:
        raise EdgeLLMError(f"bundle pre-flight: {tokens.detail}")
    if plan and plan.problems:
        raise EdgeLLMError(f"bundle pre-flight: the chat template would break in LiteRT-LM ({plan.problems[0]}); "
                           "pass a template that renders there with --chat-template FILE")
    return plan
