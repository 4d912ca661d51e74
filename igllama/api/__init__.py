"""The OpenAI wire format: validate requests, shape responses and errors."""

from igllama.api.app import App, AppSettings
from igllama.api.errors import APIError, error_body

__all__ = ["APIError", "App", "AppSettings", "error_body"]
