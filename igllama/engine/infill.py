"""Prompts without a chat template: raw token ids, and fill-in-the-middle for code models.

A FIM prompt is the code model's own layout, as llama-server builds it:
other files of the project first (with Qwen2.5-Coder's `<|repo_name|>` and
`<|file_sep|>` tokens, when the model has them), then
`<fim_prefix>` code before the gap `<fim_suffix>` code after it
`<fim_middle>`; the model writes the middle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from igllama.engine.errors import InputError
from igllama.engine.model import Model

REPO_NAME = "myproject"  # what llama-server names the repository


@dataclass(frozen=True, slots=True)
class ExtraFile:
    """Another file of the project, given as context for the gap."""

    filename: str
    text: str


class NoFimError(InputError):
    """The model has no fill-in-the-middle tokens."""

    def __init__(self, model: Model) -> None:
        super().__init__(
            f"{model.path} has no fill-in-the-middle tokens (its vocabulary lacks fim_pre/fim_suf/fim_mid): "
            "use a code model such as Qwen2.5-Coder, or send the prompt without a suffix"
        )


def infill_prompt(model: Model, prefix: str, suffix: str, extra: Sequence[ExtraFile] = ()) -> list[int]:
    """The token ids asking `model` for the code between `prefix` and `suffix`."""
    fim = model.fim
    if fim is None:
        raise NoFimError(model)

    def text(value: str) -> list[int]:
        return model.tokenize(value, add_special=False, parse_special=False)

    tokens = [model.bos_token] if model.add_bos and model.bos_token >= 0 else []
    if extra:
        if fim.repo >= 0 and fim.file_sep >= 0:
            tokens += [fim.repo, *text(f"{REPO_NAME}\n")]
            for file in extra:
                tokens += [fim.file_sep, *text(f"{file.filename}\n{file.text}")]
        else:
            for file in extra:
                tokens += text(f"--- {file.filename} ---\n{file.text}\n")
    return [*tokens, fim.prefix, *text(prefix), fim.suffix, *text(suffix), fim.middle]


def check_token_ids(model: Model, tokens: Sequence[int]) -> None:
    """Refuse ids outside the vocabulary before llama.cpp sees them."""
    for token in tokens:
        if not 0 <= token < model.n_vocab:
            raise InputError(f"token id {token} is outside the vocabulary (0 to {model.n_vocab - 1})")
