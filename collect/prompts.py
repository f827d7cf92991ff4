"""Prompts as token ids, with the spans the vectors need.

The chat template renders the text; the text is tokenized once without adding special tokens (so a
template that writes its own BOS keeps exactly one), and the role-word and period spans are found by
character offsets in the rendered text. That works whether the template has a system role or folds
the system prompt into the first user turn (Gemma).

The no-prompt condition is explicit: `none` renders no system turn at all (removing a default that a
template would insert, as SmolLM2's and Qwen2.5's do), `template_default` keeps whatever the template
does.
"""

from __future__ import annotations

from dataclasses import dataclass

from animacy.errors import ConfigError
from animacy.roles import article

NO_PROMPT_MODES = ("none", "template_default")
_SENTINEL = "\u2063SYSTEM\u2063"


def system_text(template: str, role: str) -> str:
    return template.format(role=role, article=article(role))


@dataclass
class Prompt:
    """A rendered prompt: text, token ids, and (for role prompts) the role-word token positions and the
    position of the period that ends the role assignment."""

    text: str
    ids: list[int]
    role_tokens: list[int]
    period_token: int | None


def _render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _without_default_system(tokenizer, messages: list[dict]) -> str:
    """The prompt with no system turn, even when the template inserts a default one."""
    plain = _render(tokenizer, messages)
    with_sys = _render(tokenizer, [{"role": "system", "content": _SENTINEL}, *messages])
    i = with_sys.find(_SENTINEL)
    if i < 0:
        return plain
    pre, post = with_sys[:i], with_sys[i + len(_SENTINEL):]
    injected = plain.startswith(pre) and plain.endswith(post) and len(plain) > len(pre) + len(post)
    if not injected:
        return plain
    if "<|im_start|>system\n" in plain:  # ChatML (SmolLM2, Qwen2.5): drop the default system turn
        start = plain.index("<|im_start|>system\n")
        end = plain.index("<|im_end|>", start) + len("<|im_end|>")
        return plain[:start] + plain[end:].lstrip("\n")
    raise ConfigError("study.no_prompt", "this chat template inserts a default system prompt that animacy "
                      "cannot remove", hint="Set no_prompt = 'template_default' to keep it.")


def _messages_text(tokenizer, system: str | None, messages: list[dict], no_prompt: str) -> str:
    if no_prompt not in NO_PROMPT_MODES:
        raise ConfigError("study.no_prompt", f"unknown mode {no_prompt!r} (choose {', '.join(NO_PROMPT_MODES)})")
    if system is None:
        return _without_default_system(tokenizer, messages) if no_prompt == "none" else _render(tokenizer, messages)
    return _render(tokenizer, [{"role": "system", "content": system}, *messages])


def render_conversation(tokenizer, system: str | None, turns: list[tuple[str, str]], user: str,
                        no_prompt: str = "none") -> list[int]:
    """The token ids of a conversation so far (`turns`: (user, assistant) pairs) and the next user message,
    ready for the assistant's answer; the system prompt (or its absence) handled as in `render_prompt`."""
    messages = [m for u, a in turns for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
    text = _messages_text(tokenizer, system, [*messages, {"role": "user", "content": user}], no_prompt)
    return _encode(tokenizer, text)[0]


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of rendered text, tokenized once without special tokens, so a
    template that writes its own BOS keeps exactly one (and one is added where the tokenizer wants it)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    bos = tokenizer.bos_token_id
    if getattr(tokenizer, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
        ids, offsets = [bos, *ids], [(0, 0), *offsets]
    return ids, offsets


def render_prompt(tokenizer, user: str, system: str | None, role: str | None = None,
                  no_prompt: str = "none") -> Prompt:
    """Render, tokenize (one BOS), and locate the role word and the period inside the system text."""
    text = _messages_text(tokenizer, system, [{"role": "user", "content": user}], no_prompt)
    ids, offsets = _encode(tokenizer, text)
    role_tokens: list[int] = []
    period = None
    if system is not None and role:
        s0 = text.find(system)
        if s0 < 0:
            raise ConfigError("study.system_template", "the rendered prompt does not contain the system text")
        r0 = s0 + system.find(role)
        r1 = r0 + len(role)
        role_tokens = [k for k, (a, b) in enumerate(offsets) if a < r1 and b > r0 and b > a]
        dot = text.find(".", r1, s0 + len(system))
        if dot >= 0:
            hits = [k for k, (a, b) in enumerate(offsets) if a <= dot < b]
            period = hits[0] if hits else None
    return Prompt(text, ids, role_tokens, period)
