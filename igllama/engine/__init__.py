"""The engine: llama.cpp through its low-level ctypes API, many requests at once."""

from igllama.engine.embeddings import MAX_INPUTS as MAX_EMBEDDING_INPUTS
from igllama.engine.embeddings import EmbeddingInputError, EmbeddingResult
from igllama.engine.engine import ChoicesError, Engine, EngineConfig
from igllama.engine.errors import (
    CapacityError,
    EngineError,
    EngineFailure,
    EngineUnavailable,
    InputError,
    ModelLoadFailed,
    ModelNotFound,
    ShuttingDown,
)
from igllama.engine.gbnf_limits import GrammarLimitError
from igllama.engine.grammar import SchemaError, json_grammar
from igllama.engine.infill import ExtraFile, NoFimError
from igllama.engine.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from igllama.engine.messages import ChatMessage
from igllama.engine.model import ModelConfig, ModelLoadError
from igllama.engine.prompt import PromptTooLongError, TextTooLongError
from igllama.engine.prompt_logprobs import MAX_PROMPT_LOGPROBS, PromptScores
from igllama.engine.runner import default_threads
from igllama.engine.sampling import SamplingParams
from igllama.engine.sequence import CompletionRequest, Finished, OutputSchema, Progress, TextDelta
from igllama.engine.stats import EngineStats, SlotStats
from igllama.engine.stream import GenerationStream
from igllama.engine.template import TemplateError
from igllama.engine.tool_calls import CallDelta, ToolCall
from igllama.engine.tools import ToolChoice, ToolSpec

__all__ = [
    "MAX_EMBEDDING_INPUTS",
    "MAX_PROMPT_LOGPROBS",
    "MAX_TOP_LOGPROBS",
    "CallDelta",
    "CapacityError",
    "ChatMessage",
    "ChoicesError",
    "CompletionRequest",
    "EmbeddingInputError",
    "EmbeddingResult",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineFailure",
    "EngineStats",
    "EngineUnavailable",
    "ExtraFile",
    "Finished",
    "GenerationStream",
    "GrammarLimitError",
    "InputError",
    "ModelConfig",
    "ModelLoadError",
    "ModelLoadFailed",
    "ModelNotFound",
    "NoFimError",
    "OutputSchema",
    "Progress",
    "PromptScores",
    "PromptTooLongError",
    "SamplingParams",
    "SchemaError",
    "ShuttingDown",
    "SlotStats",
    "TemplateError",
    "TextDelta",
    "TextTooLongError",
    "TokenLogprob",
    "ToolCall",
    "ToolChoice",
    "ToolSpec",
    "default_threads",
    "json_grammar",
]
