"""llama-server's command line on `igllama api`: every flag it accepts, and what igllama does with it.

A llama-server user's command line should work unchanged. Each of llama-server's
flags (llama.cpp's `common/arg.cpp`, as its `--help` lists them) is here, as one of:

- MAPPED: it sets an igllama setting (cli.py defines the option, beside igllama's own);
- IGNORED: accepted and changes nothing, because it has no meaning in igllama
  (a GPU on a CPU server, a mechanism igllama does not have, llama-server's own
  default); `note` says why. Some are accepted only at the value that means
  "off" or llama-server's default, and refused otherwise;
- REFUSED: igllama exits with status 2 and one line naming the flag and what to use
  instead, rather than start a server that silently does something else.

(`--slot-save-path`, `--lora`, `--lora-scaled` and `--lora-init-without-apply` are
defined with their features, elsewhere.)
"""

from __future__ import annotations

import argparse
import enum
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

EXIT_USAGE = 2


class Kind(enum.Enum):
    MAPPED = "mapped"
    IGNORED = "ignored"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Flag:
    """One llama-server flag under all its spellings."""

    spellings: tuple[str, ...]
    kind: Kind
    note: str  # MAPPED: the igllama setting; IGNORED: why it changes nothing; REFUSED: what to use instead
    takes_value: bool = False
    # IGNORED only for the values this accepts; another value is refused with `otherwise`.
    only: Callable[[str], bool] | None = None
    otherwise: str = ""


def _flag(spellings: str, kind: Kind, note: str, value: bool, only: Callable[[str], bool] | None = None,
          otherwise: str = "") -> Flag:
    return Flag(tuple(spellings.split()), kind, note, value, only, otherwise)


def mapped(spellings: str, setting: str) -> Flag:
    return _flag(spellings, Kind.MAPPED, setting, False)


def ignored(spellings: str, why: str, *, value: bool = False, only: Callable[[str], bool] | None = None,
            otherwise: str = "") -> Flag:
    return _flag(spellings, Kind.IGNORED, why, value or only is not None, only, otherwise)


def refused(spellings: str, instead: str, *, value: bool = True) -> Flag:
    return _flag(spellings, Kind.REFUSED, instead, value)


def number_is(*values: float) -> Callable[[str], bool]:
    """Accepts text that is one of `values` as a number (`0`, `0.0`, `-1`)."""
    def check(text: str) -> bool:
        try:
            return float(text) in values
        except ValueError:
            return False
    return check


def negative(text: str) -> bool:
    try:
        return float(text) < 0
    except ValueError:
        return False


def one_of(*values: str) -> Callable[[str], bool]:
    return lambda text: text.strip().lower() in values


_GPU = "igllama runs on the CPU: GPU devices, offload and placement do not apply"
_DOWNLOAD = "igllama serves local GGUF files only: download the file and pass its path (igllama api FILE)"
_DRAFT_MODEL = ("igllama has no draft model: it drafts from the conversation itself (n-gram speculation: "
                "--spec on|off, --spec-draft-max, --spec-ngram-min, --spec-ngram-max)")
_NGRAM = "igllama's n-gram drafter has its own knobs: --spec-draft-max, --spec-ngram-min, --spec-ngram-max"
_MEDIA = "igllama serves text models only (no multimodal projector, images, audio or video)"
_PER_REQUEST = "set it per request instead"
_AFFINITY = "igllama does not pin threads; run it under taskset -c CPUS (or numactl)"
_PRIORITY = "igllama does not change thread priorities; run it under nice or chrt"
_ROPE = "igllama uses the RoPE settings in the GGUF's metadata; use a GGUF that has the ones you want"
_LOG_FORMAT = "igllama's log lines have one fixed format (time, level, source) on stderr"

FLAGS: tuple[Flag, ...] = (
    # -- common
    mapped("-h --help --usage", "--help, --usage print the help; -h is igllama's --host (its specification's)"),
    mapped("--version", "--version"),
    refused("-cl --cache-list", "igllama keeps no model cache: it serves the files you name", value=False),
    refused("--completion-bash", "igllama has no shell completion script", value=False),
    mapped("-t --threads", "--threads (-1: all cores, igllama's default)"),
    mapped("-tb --threads-batch", "--threads-batch (-1: all cores)"),
    refused("-C --cpu-mask", _AFFINITY),
    refused("-Cr --cpu-range", _AFFINITY),
    ignored("--cpu-strict", "0 is llama-server's default: no strict placement, as igllama",
            only=number_is(0), otherwise=_AFFINITY),
    ignored("--prio", "0 (normal) is llama-server's default and igllama's", only=number_is(0), otherwise=_PRIORITY),
    ignored("--poll", "50 is llama.cpp's default polling level, which igllama's threads use",
            only=number_is(50), otherwise="igllama keeps llama.cpp's default polling level (50)"),
    refused("-Cb --cpu-mask-batch", _AFFINITY),
    refused("-Crb --cpu-range-batch", _AFFINITY),
    ignored("--cpu-strict-batch", "0 is llama-server's default: no strict placement",
            only=number_is(0), otherwise=_AFFINITY),
    ignored("--prio-batch", "0 (normal) is llama-server's default and igllama's",
            only=number_is(0), otherwise=_PRIORITY),
    ignored("--poll-batch", "1 (poll, as --poll) is llama-server's default and llama.cpp's",
            only=number_is(1), otherwise="igllama keeps llama.cpp's default polling"),
    mapped("-c --ctx-size", "--ctx-size (shared by the slots; 0, the model's own, is refused: give a size)"),
    mapped("-n --predict --n-predict", "--max-tokens, the default and cap of a reply's tokens "
                                       "(-1 or -2: the context size)"),
    mapped("-b --batch-size", "--batch-size"),
    mapped("-ub --ubatch-size", "ubatch_size: tokens per physical decode (default: the batch size)"),
    ignored("--keep", "tokens kept by context shift, which igllama does not do (see --context-shift)", value=True),
    ignored("--swa-full", "igllama always keeps the full sliding-window cache (so prefixes can be reused)"),
    mapped("-fa --flash-attn", "flash_attn: on, off or auto (a quantized V cache needs it on)"),
    ignored("--perf --no-perf", "llama.cpp's internal perf counters; igllama times every reply itself"),
    ignored("-e --escape --no-escape", "escapes apply to prompts given on llama.cpp's command line; "
                                       "a server takes its prompts from requests"),
    refused("--rope-scaling", _ROPE),
    refused("--rope-scale", _ROPE),
    refused("--rope-freq-base", _ROPE),
    refused("--rope-freq-scale", _ROPE),
    refused("--yarn-orig-ctx", _ROPE),
    refused("--yarn-ext-factor", _ROPE),
    refused("--yarn-attn-factor", _ROPE),
    refused("--yarn-beta-slow", _ROPE),
    refused("--yarn-beta-fast", _ROPE),
    ignored("-kvo --kv-offload -nkvo --no-kv-offload", _GPU),
    mapped("--repack -nr --no-repack", "--repack (igllama's default: off; -nr/--no-repack: off)"),
    ignored("--no-host", _GPU),
    mapped("-ctk --cache-type-k", "--cache-type-k"),
    mapped("-ctv --cache-type-v", "--cache-type-v"),
    ignored("-dt --defrag-thold", "deprecated in llama.cpp, where it does nothing either", value=True),
    refused("--rpc", "igllama computes on this machine's CPU only (no RPC backends)"),
    mapped("-lm --load-mode", "mlock: mlock and mmap+mlock set --mlock; auto and mmap are igllama's "
                              "default; none and dio are refused (igllama always memory-maps)"),
    ignored("-lzm --lazy-mode", "auto is llama.cpp's default, which igllama keeps", only=one_of("auto"),
            otherwise="igllama keeps llama.cpp's default lazy mode (auto)"),
    refused("--numa", "igllama does not set NUMA policy; run it under numactl"),
    ignored("-dev --device", _GPU, value=True),
    refused("--list-devices", "igllama runs on the CPU only: there are no devices to list", value=False),
    ignored("-ot --override-tensor", _GPU, value=True),
    ignored("-cmoe --cpu-moe", _GPU),
    ignored("-ncmoe --n-cpu-moe", _GPU, value=True),
    ignored("-ncffn --n-cpu-ffn", _GPU, value=True),
    mapped("-ngl --gpu-layers --n-gpu-layers", "--gpu-layers (all: -1; auto: -1; a CPU build ignores it)"),
    ignored("-sm --split-mode", _GPU, value=True),
    ignored("-ts --tensor-split", _GPU, value=True),
    ignored("-mg --main-gpu", _GPU, value=True),
    ignored("-fit --fit", "fitting unset settings to a device's memory: " + _GPU, value=True),
    ignored("-fitt --fit-target", _GPU, value=True),
    ignored("-fitc --fit-ctx", _GPU, value=True),
    refused("--check-tensors", "igllama does not check tensor data at load; check the file with llama.cpp's tools",
            value=False),
    refused("--override-kv", "igllama uses the GGUF's metadata as it is; edit the file "
                             "(gguf-py's gguf_set_metadata) instead"),
    ignored("--op-offload --no-op-offload", _GPU),
    refused("--control-vector", "igllama does not apply control vectors"),
    refused("--control-vector-scaled", "igllama does not apply control vectors"),
    refused("--control-vector-layer-range", "igllama does not apply control vectors"),
    mapped("-m --model", "--model (repeat it to serve several)"),
    refused("-mu --model-url", _DOWNLOAD),
    refused("-dr --docker-repo", _DOWNLOAD),
    refused("-hf -hfr --hf-repo", _DOWNLOAD),
    refused("-hff --hf-file", _DOWNLOAD),
    refused("-hft --hf-token", _DOWNLOAD),
    refused("--log-disable", "igllama logs to stderr; to silence it, redirect it: 2>/dev/null", value=False),
    refused("--log-file", "igllama logs to stderr; redirect it: 2>>FILE"),
    refused("--log-jsonl", "igllama logs plain lines, not JSON", value=False),
    ignored("--no-log-jsonl", "plain log lines are igllama's only format"),
    ignored("--log-colors", "igllama never colours its log", value=True),
    mapped("-v --verbose --log-verbose", "--verbose"),
    ignored("--offline", "igllama never downloads anything"),
    ignored("-lv --verbosity --log-verbosity", "igllama logs info and above; -v adds llama.cpp's own messages",
            value=True),
    ignored("--log-prefix --no-log-prefix", _LOG_FORMAT),
    ignored("--log-timestamps --no-log-timestamps", _LOG_FORMAT),
    refused("--spec-draft-type-k -ctkd --cache-type-k-draft", _DRAFT_MODEL),
    refused("--spec-draft-type-v -ctvd --cache-type-v-draft", _DRAFT_MODEL),
    # -- sampling
    refused("--samplers", "igllama's sampler order is fixed (penalties, top-k, top-p, min-p, temperature)"),
    mapped("-s --seed", "seed: the sampling seed of requests that give none (-1: a random one each)"),
    refused("--sampler-seq --sampling-seq", "igllama's sampler order is fixed (penalties, top-k, top-p, min-p, "
                                            "temperature)"),
    refused("--ignore-eos", "send logit_bias with the end-of-generation tokens at -100 per request",
            value=False),
    mapped("--temp --temperature", "--temp"),
    mapped("--top-k", "top_k: default of requests that give none"),
    mapped("--top-p", "top_p: default of requests that give none"),
    mapped("--min-p", "min_p: default of requests that give none"),
    ignored("--top-nsigma --top-n-sigma", "-1 (off) is llama-server's default", only=negative,
            otherwise="igllama has no top-n-sigma sampler"),
    ignored("--xtc-probability", "0 (off) is llama-server's default", only=number_is(0),
            otherwise="igllama has no XTC sampler"),
    ignored("--xtc-threshold", "used only by the XTC sampler, which is off", value=True),
    ignored("--typical --typical-p", "1 (off) is llama-server's default", only=number_is(1),
            otherwise="igllama has no locally typical sampler"),
    ignored("--repeat-last-n", "64 is igllama's penalty window too", only=number_is(64),
            otherwise="igllama's default penalty window is 64 tokens; set repeat_last_n per request (Ollama's options)"),
    mapped("--repeat-penalty", "repeat_penalty: default of requests that give none"),
    mapped("--presence-penalty", "presence_penalty: default of requests that give none"),
    mapped("--frequency-penalty", "frequency_penalty: default of requests that give none"),
    ignored("--dry-multiplier", "0 (off) is llama-server's default", only=number_is(0),
            otherwise="igllama has no DRY sampler"),
    ignored("--dry-base", "used only by the DRY sampler, which is off", value=True),
    ignored("--dry-allowed-length", "used only by the DRY sampler, which is off", value=True),
    ignored("--dry-penalty-last-n", "used only by the DRY sampler, which is off", value=True),
    ignored("--dry-sequence-breaker", "used only by the DRY sampler, which is off", value=True),
    ignored("--adaptive-target", "negative (off) is llama-server's default", only=negative,
            otherwise="igllama has no adaptive-p sampler"),
    ignored("--adaptive-decay", "used only by the adaptive-p sampler, which is off", value=True),
    ignored("--dynatemp-range", "0 (off) is llama-server's default", only=number_is(0),
            otherwise="igllama has no dynamic temperature"),
    ignored("--dynatemp-exp", "used only by dynamic temperature, which is off", value=True),
    ignored("--mirostat", "0 (off) is llama-server's default", only=number_is(0),
            otherwise="igllama has no Mirostat sampler"),
    ignored("--mirostat-lr", "used only by Mirostat, which is off", value=True),
    ignored("--mirostat-ent", "used only by Mirostat, which is off", value=True),
    refused("-l --logit-bias", "send logit_bias per request"),
    refused("--grammar", "send a grammar per request (response_format with a json_schema, or tools)"),
    refused("--grammar-file", "send a grammar per request (response_format with a json_schema, or tools)"),
    refused("-j --json-schema", "send response_format {\"type\": \"json_schema\", ...} per request"),
    refused("-jf --json-schema-file", "send response_format {\"type\": \"json_schema\", ...} per request"),
    ignored("-bs --backend-sampling", "sampling on a GPU backend: " + _GPU),
    # -- speculative decoding
    refused("--spec-draft-hf -hfd -hfrd --hf-repo-draft", _DRAFT_MODEL),
    refused("--spec-draft-threads -td --threads-draft", _DRAFT_MODEL),
    refused("--spec-draft-threads-batch -tbd --threads-batch-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-mask -Cd --cpu-mask-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-range -Crd --cpu-range-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-strict --cpu-strict-draft", _DRAFT_MODEL),
    refused("--spec-draft-prio --prio-draft", _DRAFT_MODEL),
    refused("--spec-draft-poll --poll-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-mask-batch -Cbd --cpu-mask-batch-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-strict-batch --cpu-strict-batch-draft", _DRAFT_MODEL),
    refused("--spec-draft-prio-batch --prio-batch-draft", _DRAFT_MODEL),
    refused("--spec-draft-poll-batch --poll-batch-draft", _DRAFT_MODEL),
    refused("--spec-draft-override-tensor -otd --override-tensor-draft", _DRAFT_MODEL),
    refused("--spec-draft-cpu-moe -cmoed --cpu-moe-draft", _DRAFT_MODEL, value=False),
    refused("--spec-draft-n-cpu-moe --spec-draft-ncmoe -ncmoed --n-cpu-moe-draft", _DRAFT_MODEL),
    mapped("--spec-draft-n-max", "--spec-draft-max"),
    refused("--spec-draft-n-min", _NGRAM),
    refused("--spec-synth-len", "synthetic acceptance is for benchmarking llama.cpp; igllama has none"),
    refused("--spec-synth-rates", "synthetic acceptance is for benchmarking llama.cpp; igllama has none"),
    refused("--spec-draft-p-split --draft-p-split", _DRAFT_MODEL),
    refused("--spec-draft-p-min --draft-p-min", _DRAFT_MODEL),
    ignored("--spec-draft-backend-sampling --no-spec-draft-backend-sampling", _GPU),
    refused("--spec-draft-device -devd --device-draft", _DRAFT_MODEL),
    refused("--spec-draft-ngl -ngld --gpu-layers-draft --n-gpu-layers-draft", _DRAFT_MODEL),
    refused("--spec-draft-model -md --model-draft", _DRAFT_MODEL),
    mapped("--spec-type", "--spec: none is --spec off; ngram-simple, ngram-map-k, ngram-map-k4v, ngram-mod and "
                          "ngram-cache are --spec on (igllama's own n-gram drafter); draft-* is refused "
                          "(no draft model)"),
    refused("--spec-ngram-mod-n-min", _NGRAM),
    refused("--spec-ngram-mod-n-max", _NGRAM),
    refused("--spec-ngram-mod-n-match", _NGRAM),
    refused("--spec-ngram-simple-size-n", _NGRAM),
    refused("--spec-ngram-simple-size-m", _NGRAM),
    refused("--spec-ngram-simple-min-hits", _NGRAM),
    refused("--spec-ngram-map-k-size-n", _NGRAM),
    refused("--spec-ngram-map-k-size-m", _NGRAM),
    refused("--spec-ngram-map-k-min-hits", _NGRAM),
    refused("--spec-ngram-map-k4v-size-n", _NGRAM),
    refused("--spec-ngram-map-k4v-size-m", _NGRAM),
    refused("--spec-ngram-map-k4v-min-hits", _NGRAM),
    refused("--draft --draft-n --draft-max", "removed from llama-server too; use --spec-draft-max"),
    refused("--draft-min --draft-n-min", "removed from llama-server too; " + _NGRAM),
    refused("--spec-ngram-size-n", "removed from llama-server too; " + _NGRAM),
    refused("--spec-ngram-size-m", "removed from llama-server too; " + _NGRAM),
    refused("--spec-ngram-min-hits", "removed from llama-server too; " + _NGRAM),
    # -- the server's own
    refused("-lcs --lookup-cache-static", "igllama has no lookup caches: " + _NGRAM),
    refused("-lcd --lookup-cache-dynamic", "igllama has no lookup caches: " + _NGRAM),
    refused("--kv-unified-per-slot", "igllama's slots share one KV pool of --ctx-size tokens; size it with -c"),
    ignored("-ctxcp --ctx-checkpoints --swa-checkpoints", "igllama keeps the whole sliding-window cache, "
                                                          "so it needs no context checkpoints", value=True),
    ignored("-cms --checkpoint-min-step", "igllama makes no context checkpoints (see -ctxcp)", value=True),
    mapped("-cram --cache-ram", "--cache-ram (0 drops idle state; -1, no limit, is refused: give MiB)"),
    ignored("-kvu --kv-unified", "igllama's slots always share one KV pool"),
    refused("-no-kvu --no-kv-unified", "igllama's slots always share one KV pool of --ctx-size tokens",
            value=False),
    ignored("--cache-idle-slots", "igllama keeps idle conversations' KV state in host RAM (--cache-ram)"),
    refused("--no-cache-idle-slots", "use --cache-ram 0 to keep no idle conversations' state", value=False),
    refused("--context-shift", "igllama does not shift the context: a reply that fills it ends with "
                               "finish_reason \"length\"; give a larger -c", value=False),
    ignored("--no-context-shift", "igllama never shifts the context (llama-server's default too)"),
    refused("-r --reverse-prompt", "send stop strings per request (\"stop\")"),
    refused("-sp --special", "igllama never writes control tokens into replies", value=False),
    ignored("--warmup --no-warmup", "igllama runs no warm-up decode; its first request pays that cost"),
    refused("--spm-infill", "igllama's /infill uses the prefix-suffix-middle order only", value=False),
    mapped("--pooling", "pooling of embeddings: mean, cls or last (none and rank are refused: "
                        "igllama's embeddings are one vector per input)"),
    mapped("-np --parallel", "--parallel (-1, auto: 4)"),
    ignored("-cb --cont-batching", "igllama always batches continuously"),
    refused("-nocb --no-cont-batching", "igllama always batches continuously; -np 1 serves one request at a time",
            value=False),
    refused("-mm --mmproj", _MEDIA),
    refused("-mmu --mmproj-url", _MEDIA),
    ignored("--mmproj-auto --no-mmproj --no-mmproj-auto", "no projector is ever loaded: " + _MEDIA),
    ignored("--mmproj-offload --no-mmproj-offload", _GPU),
    ignored("-mmdev --mmproj-device", _GPU, value=True),
    ignored("--image-min-tokens", "tunes image inputs, which a request cannot send: " + _MEDIA, value=True),
    ignored("--image-max-tokens", "tunes image inputs, which a request cannot send: " + _MEDIA, value=True),
    ignored("--mtmd-batch-max-tokens", "tunes image inputs, which a request cannot send: " + _MEDIA, value=True),
    ignored("--video-fps", "tunes video inputs, which a request cannot send: " + _MEDIA, value=True),
    ignored("--video-timestamp-interval", "tunes video inputs, which a request cannot send: " + _MEDIA, value=True),
    ignored("--video-ffmpeg-dir", "tunes video inputs, which a request cannot send: " + _MEDIA, value=True),
    mapped("-a --alias", "--alias (one name: several, comma-separated, are refused)"),
    ignored("--tags", "informational in llama-server too (not used for routing)", value=True),
    ignored("--embd-normalize", "2 (Euclidean) is how igllama normalises every embedding",
            only=number_is(2), otherwise="igllama's embeddings are always L2-normalised (--embd-normalize 2)"),
    mapped("--host", "--host (several, comma-separated, are all listened on; UNIX sockets are refused)"),
    mapped("--port", "--port"),
    refused("--reuse-port", "one igllama per port; run several behind a load balancer (docs/scaling-out.md)",
            value=False),
    refused("--path", "igllama serves no static files; put a web server in front for them"),
    mapped("--cors-origins", "cors_origins: the origins browser pages may call from (*, localhost, or a list)"),
    mapped("--cors-methods", "cors_methods: the methods a preflight allows"),
    ignored("--cors-headers", "* is llama-server's default: igllama allows any header a preflight asks for",
            only=one_of("*"), otherwise="igllama allows any request header a preflight asks for (as *)"),
    mapped("--cors-credentials --no-cors-credentials",
           "cors_credentials (igllama's default: off, so * stays *; on: the Origin is echoed)"),
    refused("--api-prefix", "igllama serves from /; a reverse proxy can add a prefix"),
    ignored("--ui-config --webui-config", "settings of llama.cpp's web UI; igllama's chat page has none",
            value=True),
    ignored("--ui-config-file --webui-config-file", "settings of llama.cpp's web UI; igllama's chat page has none",
            value=True),
    refused("--ui-mcp-proxy --webui-mcp-proxy", "igllama has no MCP proxy", value=False),
    ignored("--no-ui-mcp-proxy --no-webui-mcp-proxy", "igllama has no MCP proxy (llama-server's default: off)"),
    refused("--tools", "igllama runs no tools itself: clients run the tools they declare"),
    refused("--tools-runtime", "igllama runs no tools itself: clients run the tools they declare"),
    refused("--mcp-servers-config", "igllama connects to no MCP servers: clients run the tools they declare"),
    refused("--mcp-servers-json", "igllama connects to no MCP servers: clients run the tools they declare"),
    refused("-ag --agent", "igllama runs no tools itself: clients run the tools they declare", value=False),
    ignored("-no-ag --no-agent", "igllama runs no tools itself (llama-server's default: off)"),
    mapped("--ui --webui --no-ui --no-webui", "ui: --no-ui drops the chat page (GET / then answers as Ollama does)"),
    ignored("--embedding --embeddings", "igllama always serves embeddings beside generation (on a context of "
                                        "their own); use --pooling to choose the pooling"),
    refused("--rerank --reranking", "igllama has no reranking endpoint", value=False),
    mapped("--api-key", "--api-key (one key; more with --api-key-file)"),
    mapped("--api-key-file", "api_keys: the file's keys, one a line, # comments"),
    mapped("--ssl-key-file", "--ssl-key-file"),
    mapped("--ssl-cert-file", "--ssl-cert-file"),
    refused("--chat-template-kwargs", "send chat_template_kwargs per request"),
    ignored("-to --timeout", "igllama's connection timeouts are per phase (a request head or body too slow "
                             "gets 408) and a generation has none", value=True),
    mapped("--sse-ping-interval", "--sse-ping (-1: never)"),
    ignored("--threads-http", "igllama's HTTP runs on one event loop; work that grows with a request runs "
                              "off it", value=True),
    ignored("--cache-prompt", "igllama always reuses a slot's cached prompt prefix"),
    refused("--no-cache-prompt", "igllama always reuses a cached prompt prefix; send cache_prompt: false per "
                                 "request", value=False),
    ignored("--cache-reuse", "0 is llama-server's default: no KV shifting, as igllama", only=number_is(0),
            otherwise="igllama reuses only a shared prompt prefix (no KV shifting)"),
    mapped("--metrics", "--metrics"),
    refused("--props", "igllama's settings are fixed at start (no POST /props): restart with other flags",
            value=False),
    mapped("--slots --no-slots", "--no-slots (--slots: igllama's default)"),
    ignored("--media-path", "local media files are for image and audio inputs: " + _MEDIA, value=True),
    mapped("--models-dir", "--models-dir"),
    refused("--models-preset", "name models and their settings in DIR/models.toml (see docs/many-models.md)"),
    mapped("--models-max", "--models-max"),
    ignored("--models-autoload", "igllama loads a model when a request names it"),
    refused("--no-models-autoload", "igllama loads a model when a request names it; limit them with --models-max",
            value=False),
    ignored("--jinja", "igllama renders chat templates with (sandboxed) Jinja"),
    refused("--no-jinja", "igllama renders a model's own template with Jinja; for one of llama.cpp's built-in "
                          "formats name it: --chat-template chatml (or another built-in)", value=False),
    mapped("--reasoning-format", "--reasoning-format (auto, deepseek, none)"),
    mapped("-rea --reasoning", "--no-think: off is --no-think; auto is igllama's default; on is refused "
                               "(igllama does not force a model to think)"),
    ignored("--reasoning-effort", "default keeps the template's own, as igllama", only=one_of("default"),
            otherwise="igllama passes no reasoning effort to the template"),
    ignored("--reasoning-budget", "-1 (no budget) is llama-server's default", only=number_is(-1),
            otherwise="igllama has no reasoning budget; --no-think (or -rea off) turns thinking off"),
    refused("--reasoning-budget-message", "igllama has no reasoning budget"),
    ignored("--reasoning-preserve", "igllama renders the history as the client sends it, reasoning included"),
    refused("--no-reasoning-preserve", "igllama renders the history as the client sends it", value=False),
    mapped("--chat-template", "--chat-template: a built-in name, a Jinja file, or the Jinja text itself"),
    mapped("--chat-template-file", "--chat-template FILE"),
    refused("--skip-chat-parsing", "--reasoning-format none keeps reasoning in the content", value=False),
    ignored("--no-skip-chat-parsing", "igllama parses replies (llama-server's default)"),
    ignored("--prefill-assistant", "llama-server's default"),
    refused("--no-prefill-assistant", "igllama continues a final assistant message as llama-server's default does",
            value=False),
    ignored("-sps --slot-prompt-similarity", "igllama picks the slot whose cached prefix matches the request "
                                             "longest", value=True),
    mapped("--sleep-idle-seconds", "--models-idle-unload: unload the model after that long idle, load it again "
                                   "on the next request (-1: never)"),
    refused("--log-prompts-dir", "igllama logs no prompts; its access log gives token counts"),
    refused("--embd-gemma-default", _DOWNLOAD, value=False),
    refused("--fim-qwen-1.5b-default", _DOWNLOAD, value=False),
    refused("--fim-qwen-3b-default", _DOWNLOAD, value=False),
    refused("--fim-qwen-7b-default", _DOWNLOAD, value=False),
    refused("--fim-qwen-7b-spec", _DOWNLOAD, value=False),
    refused("--fim-qwen-14b-spec", _DOWNLOAD, value=False),
    refused("--fim-qwen-30b-default", _DOWNLOAD, value=False),
    refused("--gpt-oss-20b-default", _DOWNLOAD, value=False),
    refused("--gpt-oss-120b-default", _DOWNLOAD, value=False),
    refused("--vision-gemma-4b-default", _DOWNLOAD, value=False),
    refused("--vision-gemma-12b-default", _DOWNLOAD, value=False),
    mapped("--spec-default", "--spec on (igllama's n-gram speculation)"),
)

# Defined with their features, not by this table.
ELSEWHERE = ("--slot-save-path", "--lora", "--lora-scaled", "--lora-init-without-apply")

BY_SPELLING: dict[str, Flag] = {spelling: flag for flag in FLAGS for spelling in flag.spellings}


def fail(message: str) -> NoReturn:
    print(f"igllama: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


class _Refuse(argparse.Action):
    """A flag igllama does not take: one line naming it and what to use instead, exit 2."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        flag = BY_SPELLING[option_string or self.option_strings[0]]
        fail(f"{option_string}: llama-server's flag is not supported: {flag.note}")


class _Ignore(argparse.Action):
    """A flag that changes nothing here (with `only`: at the values that mean so)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        flag = BY_SPELLING[option_string or self.option_strings[0]]
        if flag.only is not None and isinstance(values, str) and not flag.only(values):
            fail(f"{option_string} {values}: llama-server's flag is not supported with this value: {flag.otherwise}")


def register(parser: argparse.ArgumentParser) -> None:
    """Add the ignored and refused flags to `parser` (hidden from --help: docs/llama-server-flags.md
    lists them); the mapped ones are the parser's own options."""
    for flag in FLAGS:
        if flag.kind is Kind.MAPPED:
            continue
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if flag.kind is Kind.REFUSED:
            # An optional value, so that the flag is refused however it is written (`--flag`,
            # `--flag VALUE`, `--flag=VALUE`) rather than reported as missing its value.
            kwargs.update(action=_Refuse, nargs="?")
        else:
            kwargs.update(action=_Ignore, nargs=None if flag.takes_value else 0)
        parser.add_argument(*flag.spellings, **kwargs)
