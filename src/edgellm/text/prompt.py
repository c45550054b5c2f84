"""How prompts are made for a model: special tokens, stop conditions and the chat template."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PromptSettings(BaseModel):
    """How prompts are made for a model: special tokens, stop conditions and the chat template."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    bos_id: int | None = None
    add_bos: bool = True
    stop_ids: list[int] = []
    stop_strings: list[str] = []
    bos_token: str | None = None  # the special tokens as text, for chat templates
    eos_token: str | None = None
    chat_template: str | None = None
    prompt_prefix: str | None = None  # bundle overrides; None derives them from the chat template
    prompt_suffix: str | None = None
    decoder_start_id: int | None = None  # encoder-decoders: the decoder's first token (config's decoder_start_token_id)

    @property
    def start_id(self) -> int | None:
        """The token a prompt starts with: BOS, unless the model's input does not start with it."""
        return self.bos_id if self.add_bos else None

    @property
    def template_strings(self) -> dict[str, str]:
        """The special tokens as text, the variables chat templates expect."""
        return {"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}

    @property
    def specials(self) -> dict[str, int]:
        """Special-token text a rendered template may contain, with its id (SentencePiece never maps it from text)."""
        return {self.bos_token: self.bos_id} if self.bos_token and self.bos_id is not None else {}
