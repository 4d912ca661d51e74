"""The API's route table: one `App` with every dialect's routes."""

from __future__ import annotations

from igllama.api import (
    anthropic,
    llamacpp,
    lora,
    ollama,
    openai,
    page,
    slot_actions,
    slots,
    utility,
)
from igllama.api.app import App, AppSettings

DIALECTS = (openai, anthropic, ollama, page, utility, slots, llamacpp, slot_actions, lora)


def create_app(settings: AppSettings) -> App:
    """An `App` serving every dialect (503 until its pool is set)."""
    app = App(settings)
    for dialect in DIALECTS:
        dialect.routes(app)
    return app
