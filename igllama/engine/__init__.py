"""The engine: llama.cpp through its low-level ctypes API, many requests at once."""

from igllama.engine.embeddings import EmbeddingInputError, EmbeddingResult
from igllama.engine.engine import Engine, EngineConfig, GenerationStream, PromptTooLongError
from igllama.engine.model import ModelConfig, ModelLoadError
from igllama.engine.runner import default_threads
from igllama.engine.sampling import SamplingParams
from igllama.engine.sequence import CompletionRequest, Finished, TextDelta
from igllama.engine.template import ChatMessage, TemplateError

__all__ = [
    "ChatMessage",
    "CompletionRequest",
    "EmbeddingInputError",
    "EmbeddingResult",
    "Engine",
    "EngineConfig",
    "Finished",
    "GenerationStream",
    "ModelConfig",
    "ModelLoadError",
    "PromptTooLongError",
    "SamplingParams",
    "TemplateError",
    "TextDelta",
    "default_threads",
]
