"""Loading a GGUF model and its tokenizer through llama.cpp's low-level API.

`Model` owns the `llama_model` pointer and answers the questions the rest of
the engine asks of it: tokens for a text, bytes for a token, end-of-generation
tests and metadata. Every failure to load ends in `ModelLoadError` with a
one-line message that says what went wrong and where.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as llama

from igllama.engine import logs
from igllama.engine.control_text import ControlText
from igllama.engine.tool_calls import MARKERS

GGUF_MAGIC = b"GGUF"

ProgressCallback = Callable[[float], None]


class ModelLoadError(Exception):
    """The model or its context could not be loaded; the message says why and where."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """How to load a model file."""

    path: str
    n_gpu_layers: int = 0  # -1 offloads every layer; a CPU build ignores it
    mlock: bool = False
    # llama.cpp's repacked weight layouts (llama-server's default): faster batches, but a
    # request's greedy output then depends on what shares its batch (see model_params).
    repack: bool = False


def model_params(config: ModelConfig) -> llama.llama_model_params:
    """The llama.cpp load parameters for `config`.

    The bindings replaced `use_mmap`/`use_mlock` with `load_mode`; a ctypes
    Structure silently ignores unknown attributes, so the field names are
    checked by the tests rather than trusted.
    """
    params = llama.llama_model_default_params()
    params.n_gpu_layers = config.n_gpu_layers
    # No repacked weight layouts unless asked: with them llama.cpp multiplies
    # groups of four rows with another kernel than the rest, so a request's
    # greedy output would depend on how many others share its batch. They
    # make long batches cheaper (Qwen2.5-Coder-0.5B on an AVX2 EPYC, 32 tokens
    # with logits: 264 ms against 323), which speculation's long drafts use.
    params.use_extra_bufts = config.repack
    params.load_mode = llama.LLAMA_LOAD_MODE_MMAP_MLOCK if config.mlock else llama.LLAMA_LOAD_MODE_MMAP
    return params


def check_gguf_file(path: str) -> None:
    """Refuse a path that is missing or is not a GGUF file, before llama.cpp sees it."""
    file = Path(path)
    if not file.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if not file.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    try:
        with file.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF file (it starts with {magic!r}, not b'GGUF'): {path}")


class Model:
    """A loaded GGUF model: weights, vocabulary and metadata."""

    def __init__(self, config: ModelConfig, progress: ProgressCallback | None = None) -> None:
        check_gguf_file(config.path)
        logs.install()
        llama.llama_backend_init()
        params = model_params(config)
        # The ctypes callback object must outlive the load call.
        progress_cb = _progress_callback(progress)
        if progress_cb is not None:
            params.progress_callback = progress_cb
        logs.forget_last_error()
        self._model = llama.llama_model_load_from_file(os.fsencode(config.path), params)
        if not self._model:
            reason = logs.last_error() or "unknown error"
            raise ModelLoadError(f"llama.cpp could not load {config.path}: {reason}")
        self.config = config
        self.path = config.path
        self.vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab: int = llama.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train: int = llama.llama_model_n_ctx_train(self._model)
        self.n_embd: int = llama.llama_model_n_embd(self._model)
        self.n_swa: int = llama.llama_model_n_swa(self._model)
        self.add_bos: bool = llama.llama_vocab_get_add_bos(self.vocab)
        self.architecture = self.metadata("general.architecture") or ""
        self.bos_token: int = llama.llama_vocab_bos(self.vocab)
        self.bos_text = self._special_text(self.bos_token)
        self.eos_text = self._special_text(llama.llama_vocab_eos(self.vocab))
        self._pieces: dict[int, bytes] = {}
        self._texts: dict[int, bytes] = {}
        self._vocab_facts: tuple[ControlText, int] | None = None
        self.fim = _fim_tokens(self.vocab)
        # Control tokens that mark tool calls (Llama's <|python_tag|>, Mistral's
        # [TOOL_CALLS]...), with their text: rendered for requests with tools.
        self.call_markers: dict[int, bytes] = {}
        for marker in MARKERS:
            tokens = self.tokenize(marker, add_special=False, parse_special=True)
            if len(tokens) == 1 and not self.piece(tokens[0]):
                self.call_markers[tokens[0]] = marker.encode()

    @property
    def pointer(self) -> llama.llama_model_p:
        return self._model

    def close(self) -> None:
        if getattr(self, "_model", None):
            llama.llama_model_free(self._model)
            self._model = None

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None when the key is absent."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def chat_template(self) -> str | None:
        """The model's own `tokenizer.chat_template`, if its GGUF carries one."""
        raw = llama.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Tokens for `text`; `add_special` adds BOS (and EOS) where the model asks for them."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (llama.llama_token * capacity)()
        n = llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:  # the buffer was too small: -n is the size needed
            capacity = -n
            tokens = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special, parse_special)
        return tokens[:n]

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens for a rendered chat prompt: special tokens parsed, BOS exactly once."""
        starts_with_bos = bool(self.bos_text) and text.startswith(self.bos_text)
        return self.tokenize(text, add_special=self.add_bos and not starts_with_bos)

    def tokenize_pieces(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Tokens for a rendered prompt in pieces, (text, parse_special) each; BOS exactly once."""
        first = pieces[0][0] if pieces else ""
        add_bos = self.add_bos and not (bool(self.bos_text) and first.startswith(self.bos_text) and pieces[0][1])
        if not pieces:
            return self.tokenize("", add_special=add_bos)
        tokens: list[int] = []
        for i, (text, parse_special) in enumerate(pieces):
            tokens += self.tokenize(text, add_special=add_bos and i == 0, parse_special=parse_special)
        return tokens

    @property
    def control_text(self) -> ControlText:
        """The text of the vocabulary's control tokens (see control_text.py)."""
        return self._scan_vocabulary()[0]

    @property
    def max_token_bytes(self) -> int:
        """An upper bound of any token's length in bytes: a text of n bytes makes at least
        n / max_token_bytes tokens."""
        return self._scan_vocabulary()[1]

    def _scan_vocabulary(self) -> tuple[ControlText, int]:
        # One pass over the vocabulary (~0.1 s for 262k tokens), on first use. A token's stored
        # text is never shorter than its bytes (SentencePiece's "▁" is 3 bytes for a space,
        # byte-level BPE maps a byte to a character of 1-2, byte tokens read "<0x0A>").
        if self._vocab_facts is None:
            control, longest = [], 1
            for token in range(self.n_vocab):
                text = llama.llama_vocab_get_text(self.vocab, token) or b""
                longest = max(longest, len(text))
                if llama.llama_vocab_get_attr(self.vocab, token) & llama.LLAMA_TOKEN_ATTR_CONTROL:
                    control.append(text.decode("utf-8", errors="replace"))
            self._vocab_facts = (ControlText(control), longest)
        return self._vocab_facts

    def has_special_token(self, text: str) -> bool:
        """Whether `text` is one special token of the vocabulary (like Qwen3's `<think>`)."""
        return len(self.tokenize(text, add_special=False, parse_special=True)) == 1

    def piece(self, token: int) -> bytes:
        """The bytes a generated token stands for (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)  # (not shared: prompts are prepared on other threads)
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        piece = buf.raw[:n]
        self._pieces[token] = piece
        return piece

    def token_text(self, token: int) -> bytes:
        """A token's bytes with special tokens written out (`<|im_end|>`), for tokenizer tools
        and scored prompts (each position names its alternatives: cached, as `piece`)."""
        cached = self._texts.get(token)
        if cached is not None:
            return cached
        self._texts[token] = text = self._token_text(token)
        return text

    def _token_text(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def detokenize(self, tokens: list[int]) -> str:
        """The text of `tokens`, special tokens written out."""
        return b"".join(self.token_text(t) for t in tokens).decode("utf-8", errors="replace")

    def describe(self) -> ModelFacts:
        """Size, quantization and file facts, for listings (Ollama's /api/tags and /api/show)."""
        buf = ctypes.create_string_buffer(256)
        llama.llama_model_desc(self._model, buf, len(buf))
        desc = buf.value.decode("utf-8", errors="replace")  # "<arch> <size> <file type>"
        n_params = int(llama.llama_model_n_params(self._model))
        file_size, modified_at = file_facts(self.path)
        return ModelFacts(
            parameter_size=f"{n_params / 1e9:.1f}B" if n_params >= 1e9 else f"{n_params / 1e6:.0f}M",
            quantization=desc.split(" ", 2)[2] if desc.count(" ") >= 2 else "",
            file_size=file_size,
            modified_at=modified_at,
        )

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self.vocab, token))

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        text = llama.llama_vocab_get_text(self.vocab, token)
        return text.decode("utf-8", errors="replace") if text else ""

    def __del__(self) -> None:
        self.close()


def file_facts(path: str) -> tuple[int, str]:
    """A model file's size and mtime (RFC 3339), without loading it; (0, "") if it is gone."""
    try:
        stat = os.stat(path)
    except OSError:
        return 0, ""
    return stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class ModelFacts:
    parameter_size: str  # "135M", "1.5B"
    quantization: str  # llama.cpp's name of the file type, "Q4_K - Medium"
    file_size: int  # bytes
    modified_at: str  # the file's mtime, RFC 3339


@dataclass(frozen=True, slots=True)
class FimTokens:
    """A code model's fill-in-the-middle tokens; `repo` and `file_sep` (-1 if absent)
    introduce other files of the project (Qwen2.5-Coder's repository-level form)."""

    prefix: int
    suffix: int
    middle: int
    repo: int = -1
    file_sep: int = -1


def _fim_tokens(vocab: Any) -> FimTokens | None:
    tokens = (llama.llama_vocab_fim_pre(vocab), llama.llama_vocab_fim_suf(vocab), llama.llama_vocab_fim_mid(vocab))
    if min(tokens) < 0:
        return None
    return FimTokens(*tokens, llama.llama_vocab_fim_rep(vocab), llama.llama_vocab_fim_sep(vocab))


def _progress_callback(progress: ProgressCallback | None) -> Any:
    if progress is None:
        return None

    def on_progress(fraction: float, _user_data: ctypes.c_void_p) -> bool:
        try:
            progress(fraction)
        except Exception:  # noqa: BLE001, S110 - a broken progress bar must not abort the load
            pass
        return True

    return llama.llama_progress_callback(on_progress)
