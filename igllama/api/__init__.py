"""The API: igllama's dialects (OpenAI, Anthropic, Ollama, llama-server's own routes)
between the HTTP server and the engine: validate requests, shape replies and errors."""

from igllama.api.app import App, AppSettings
from igllama.api.errors import APIError, error_body
from igllama.api.routes import create_app

__all__ = ["APIError", "App", "AppSettings", "create_app", "error_body"]
