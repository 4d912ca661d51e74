"""igllama: an OpenAI-compatible server for GGUF models."""

__version__ = "0.1.0"
