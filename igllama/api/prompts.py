"""Raw prompts for text completion (no chat template), as OpenAI's `/v1/completions`
and llama-server's `/completion` both take them.

A prompt is text, token ids, or a mix of the two (`[12, "text", 34]`: each
string is tokenized in place, as llama-server does); a list of such prompts
asks for one completion each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError
from igllama.api.fields import is_int

if TYPE_CHECKING:
    from igllama.engine import Engine

MAX_PROMPTS = 64
MAX_PIECES = 4096  # strings inside one mixed prompt: each is tokenized on its own

Prompt = str | list[int] | list[int | str]


def parse_prompts(raw: Any, limit: int = MAX_PROMPTS, name: str = "prompt") -> list[Prompt]:
    """The field `name`: a string, token ids, a mix of both, or a list of at most `limit` of those."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and raw and all(is_int(t) or isinstance(t, str) for t in raw):
        if any(isinstance(t, str) for t in raw) and all(isinstance(t, str) for t in raw):
            return _several(raw, limit, name)  # ["a", "b"]: two prompts (llama-server reads it so too)
        return [_mixed(raw, name, name)]
    if isinstance(raw, list) and raw:
        return _several(raw, limit, name)
    raise APIError(400, f"{name} is required: a string, an array of token ids, or an array of at most "
                   f"{limit} of either", param=name)


def _several(raw: list[Any], limit: int, name: str) -> list[Prompt]:
    if len(raw) > limit:
        raise APIError(400, f"{name} may hold at most {limit} prompts, not {len(raw)}", param=name)
    prompts: list[Prompt] = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            prompts.append(item)
        elif isinstance(item, list) and item and all(is_int(t) or isinstance(t, str) for t in item):
            prompts.append(_mixed(item, f"{name}[{i}]", name))
        else:
            raise APIError(400, f"{name}[{i}] must be a string or an array of token ids", param=name)
    return prompts


def _mixed(items: list[Any], where: str, name: str) -> list[int | str]:
    if sum(isinstance(t, str) for t in items) > MAX_PIECES:
        raise APIError(400, f"{where} mixes more than {MAX_PIECES} strings with its token ids", param=name)
    return list(items)


def is_text(prompt: Prompt) -> bool:
    return isinstance(prompt, str)


def prompt_tokens(engine: Engine, prompt: Prompt) -> list[int]:
    """The prompt's token ids (off the event loop: `engine.offload`). Text gets the model's BOS
    when it comes first, as in llama-server; the ids of a mixed prompt are checked by the engine."""
    if isinstance(prompt, str):  # special tokens in the text parsed, as llama-server does
        return engine.tokenize(prompt, True)
    tokens: list[int] = []
    for i, item in enumerate(prompt):
        if isinstance(item, str):
            tokens += engine.tokenize(item, i == 0)
        else:
            tokens.append(item)
    return tokens


def prompt_text(engine: Engine, prompt: Prompt) -> str:
    """The prompt as text (`echo`): as given when it is text, else its tokens detokenized."""
    if isinstance(prompt, str):
        return prompt
    return engine.model.detokenize(prompt_tokens(engine, prompt))
