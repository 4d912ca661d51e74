"""OpenAI's dialect: chat completions, embeddings and models, text completions, the Responses API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from igllama.api.openai import chat, completions, responses

if TYPE_CHECKING:
    from igllama.api.app import App


def routes(app: App) -> None:
    chat.routes(app)
    completions.routes(app)
    responses.routes(app, responses.ResponseStore(app.settings.responses_store))
