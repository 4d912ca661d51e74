"""What one igllama server is told to do: its settings, frozen.

The command line parses its flags into a `ServerConfig` (igllama/cli.py); a
library caller names the same settings as keyword arguments (`server_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# llama-server's KV cache types (igllama/engine/runner.py maps them; named here so --help stays light)
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 4096
    max_tokens: int = 2048
    gpu_layers: int = 0
    threads: int = 0  # 0: all cores
    threads_batch: int = 0
    mlock: bool = False
    repack: bool = False
    no_think: bool = False
    special_in_content: bool = False  # control-token text in messages parsed as control tokens
    temp: float = 0.7
    parallel: int = 4
    batch_size: int = 512
    cache_ram: int = 512
    api_key: str | None = None
    alias: str | None = None
    chat_template: str | None = None
    verbose: bool = False
    max_queue: int = 256
    reasoning_format: str = "auto"
    responses_store: int = 256
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    spec: bool = True  # n-gram speculation, and its tuning:
    spec_draft_max: int = 64  # as SpecConfig's (this module does not import the engine)
    spec_ngram_min: int = 3
    spec_ngram_max: int = 32
    spec_memory: int = 65536
    shutdown_timeout: float = 30.0
    ssl_cert_file: str | None = None  # both or neither: HTTPS
    ssl_key_file: str | None = None
    metrics: bool = False
    slots: bool = True
    sse_ping: float = 5.0
    using_demo: bool = False
    models: tuple[str, ...] = ()  # model files beyond `model` (repeated -m); `model` is "" with only a models_dir
    models_dir: str | None = None
    models_max: int = 0  # models loaded at once, at most; 0: no limit
    models_idle_unload: float = 0.0  # seconds idle before a model is unloaded; 0: never
    # llama-server's settings that igllama's own flags had no name for (igllama/llama_server_flags.py):
    seed: int | None = None  # the sampling seed of requests that give none; None: a random one each
    top_k: int = 40  # default sampling settings of requests that give none
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ubatch_size: int = 0  # tokens per physical decode; 0: the batch size
    flash_attn: str = "auto"  # on, off or auto (llama.cpp decides)
    pooling: str | None = None  # embeddings' pooling: mean, cls or last; None: the model's (mean when it has none)
    api_keys: tuple[str, ...] = ()  # more accepted API keys (--api-key-file), beside api_key
    ui: bool = True  # GET / serves the chat page to browsers
    cors_origins: str = "*"  # comma-separated origins a browser page may call from; *: any; localhost
    cors_methods: str = "GET, POST, OPTIONS"
    cors_credentials: bool = False  # Access-Control-Allow-Credentials (the Origin is echoed, never *)
    slot_save_path: str | None = None  # directory for POST /slots/{id}?action=save|restore; None: those 501
    lora: tuple[tuple[str, float], ...] = ()  # LoRA adapter files and their scales, for the first model
    lora_init_without_apply: bool = False  # adapters loaded at scale 0 until POST /lora-adapters


def server_config(model: str | Path | None, **settings: Any) -> ServerConfig:
    """A `ServerConfig` for `model` (None: only `models_dir`'s, or `models`); an unknown setting
    is a TypeError naming it."""
    known = {f.name for f in fields(ServerConfig)} - {"model", "using_demo"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown igllama setting(s) {', '.join(unknown)}; use: {', '.join(sorted(known))}")
    for name in ("models", "api_keys"):
        if name in settings:
            settings[name] = tuple(str(item) for item in settings[name])
    if "lora" in settings:  # paths alone (scale 1) or (path, scale) pairs
        settings["lora"] = tuple((str(item), 1.0) if isinstance(item, (str, Path)) else (str(item[0]), float(item[1]))
                                 for item in settings["lora"])
    if model is None and not settings.get("models_dir") and not settings.get("models"):
        raise TypeError("give a model file, or models_dir= or models= to serve several")
    return ServerConfig(model=str(model) if model is not None else "", **settings)
