"""A model's Jinja chat template, rendered the way Hugging Face's `apply_chat_template` does.

llama.cpp's own `llama_chat_apply_template` knows only a fixed list of templates; a GGUF carries the
real Jinja source (`tokenizer.chat_template`), so it is rendered here in a sandbox, with the globals
and filters that templates written for transformers expect.
"""

from __future__ import annotations

import json
from datetime import datetime

from workers.engines.base import EngineError
from workers.engines.decoding import plain_messages


class ChatTemplate:
    """A chat template with the model's begin/end-of-text tokens, ready to render chats into prompts."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token
        self._template = _compile(source)  # now: a broken template fails at load, not on the first request

    def render(self, messages: list[dict]) -> str:
        """The chat as the model expects it, ending where the assistant's answer starts."""
        from jinja2 import TemplateError

        try:
            return self._template.render(messages=plain_messages(messages), add_generation_prompt=True,
                                         bos_token=self.bos_token, eos_token=self.eos_token)
        except TemplateError as exc:
            raise EngineError(f"the chat template rejected this chat: {exc}") from exc


def _compile(source: str):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda v, indent=None, **_: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise EngineError(f"the chat template does not compile: {exc}") from exc

