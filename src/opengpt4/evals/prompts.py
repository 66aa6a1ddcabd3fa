"""OpenAI Evals' prompt rendering, so that a spec sends a model exactly what `oaieval` sends it.

A sample's `input` is a string or chat messages. OpenAI Evals leaves that choice to the
completion function: a chat model gets a string as one system message (its
`ChatCompletionPrompt`), a text model gets chat messages flattened by
`chat_prompt_to_text_prompt` (its `CompletionPrompt`). Grader prompts insert chat-valued slots
with the same flattening, without the trailing "Assistant:" cue. Our completion functions take
both kinds of prompt; one that can only complete text says so with `chat = False`.
"""

from __future__ import annotations

import string
from typing import Any

from opengpt4.errors import OpenGPT4Error

from .api import CompletionFn, Prompt
from .completion import CachedCompletionFn

Chat = list[dict[str, Any]]

# chat_prompt_to_text_prompt's prefixes, by a message's name (few-shot turns are named
# example_user / example_assistant) or else its role; any other role is written capitalized.
TEXT_PREFIXES = {"system": "", "example_user": "User: ", "example_assistant": "Assistant: "}


def is_chat(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)


def chat_to_text(messages: Chat, for_completion: bool = True, prefixes: dict[str, str] | None = None) -> str:
    """OpenAI Evals' chat_prompt_to_text_prompt: one line per message, "Role: content", the
    system bare; a lone message is its content alone. `for_completion` ends with "Assistant:"."""
    prefixes = TEXT_PREFIXES if prefixes is None else prefixes
    if len(messages) == 1:
        return messages[0]["content"]
    text = ""
    for m in messages:
        role = m.get("name") or m["role"]
        text += f"{prefixes.get(role, role.capitalize() + ': ')}{m['content']}\n"
    if for_completion:
        text += prefixes.get("assistant", "Assistant: ").rstrip()
    return text.lstrip()


def takes_chat(fn: CompletionFn) -> bool:
    """Whether `fn` is a chat model (the default); the cache answers for the model it wraps."""
    return getattr(fn.inner if isinstance(fn, CachedCompletionFn) else fn, "chat", True)


def render(prompt: Prompt, chat: bool) -> Prompt:
    """A prompt as OpenAI Evals' completion functions send it to a chat or a text model."""
    if chat:
        return prompt if is_chat(prompt) else [{"role": "system", "content": prompt}]
    return chat_to_text(prompt) if is_chat(prompt) else prompt


def scrub_braces(prompt: Prompt) -> Prompt:
    """OpenAI Evals' scrub_formatting_from_prompt: braces doubled, so a sample's text is inert in a
    template. Model-graded evals scrub their inputs first: the policy sees them restored by the
    formatting, the grader sees the doubled braces."""
    if is_chat(prompt):
        return [{**m, "content": m["content"].replace("{", "{{").replace("}", "}}")} if "content" in m else m
                for m in prompt]
    return prompt.replace("{", "{{").replace("}", "}}")


def slots(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def fill(template: str, values: dict[str, Any], where: str) -> str:
    """OpenAI Evals' format_necessary: str.format with only the template's slots, each one required."""
    missing = sorted(set(slots(template)) - set(values))
    if missing:
        raise OpenGPT4Error(f"{where}: no value for slot(s) {', '.join(missing)} of the prompt template")
    return template.format(**{k: values[k] for k in slots(template)})


def fill_prompt(prompt: Prompt, values: dict[str, Any], where: str) -> Prompt:
    """OpenAI Evals' PromptFn: chat-valued slots flattened to text, then every message filled."""
    values = {k: chat_to_text(v, for_completion=False) if is_chat(v) else v for k, v in values.items()}
    if is_chat(prompt):
        return [{**m, "content": fill(m["content"], values, where)} if "content" in m else m for m in prompt]
    return fill(prompt, values, where)
