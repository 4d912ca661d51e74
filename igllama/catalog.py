"""Which models a server offers, and under which names.

One model (`igllama api MODEL`) keeps the id it always had: `--alias` or the file
name, `.gguf` included. Several (repeated `-m`, or `--models-dir DIR`) are named
like Ollama's and LM Studio's folders are: the path without `.gguf`, relative to
DIR, with an optional `DIR/models.toml` to rename them and override flags per
model. Files are only listed here, never opened: a broken one fails when a
request loads it, and the server reports that per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from igllama.config import ServerConfig

MODELS_TOML = "models.toml"
TOML_KEYS = ("alias", "ctx_size", "parallel", "chat_template", "no_think")
# llama.cpp's gguf-split names the parts NAME-00001-of-00003.gguf; it loads the rest from the first.
SPLIT_PART = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-\d{5}$")
GGUF = ".gguf"


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """A model the server offers: the name requests use, and the file behind it."""

    name: str
    path: str  # the .gguf file to load (the first part of a split model)
    aliases: tuple[str, ...] = ()  # other names that pick it (its file name, once an alias renamed it)
    ctx_size: int | None = None  # per-model overrides from models.toml; None: the server's flag
    parallel: int | None = None
    chat_template: str | None = None
    no_think: bool | None = None

    @property
    def all_names(self) -> tuple[str, ...]:
        """The name, then the aliases: every string that picks this model."""
        return (self.name, *self.aliases)


class CatalogError(ValueError):
    """A catalog that cannot be served; one line naming the file (and key) at fault."""


def is_multi(config: ServerConfig) -> bool:
    """Whether the server offers several models (so names drop `.gguf`, and --alias is refused)."""
    return config.models_dir is not None or bool(config.models)


def scan(config: ServerConfig) -> list[CatalogModel]:
    """The models `config` serves, in a stable order: the model files given, then DIR's."""
    if not is_multi(config):
        return [CatalogModel(name=config.alias or Path(config.model).name, path=config.model)]
    given = [_named(Path(path), Path(path).name) for path in (config.model, *config.models) if path]
    if config.models_dir is None:
        return _unique(given, None)
    folder = Path(config.models_dir)
    if not folder.is_dir():
        why = "not a directory" if folder.exists() else "not found"
        raise CatalogError(f"--models-dir {folder}: {why}")
    listed = _scan_folder(folder)
    toml_path = folder / MODELS_TOML
    if toml_path.is_file():
        listed = _apply_toml(listed, toml_path, folder)
    # A file given with -m that DIR lists too is served once, under DIR's name and settings.
    in_folder = {Path(model.path).resolve() for model in listed.values()}
    models = [model for model in given if Path(model.path).resolve() not in in_folder] + list(listed.values())
    if not models:
        raise CatalogError(f"no .gguf files in {folder}")
    return _unique(models, folder)


def _named(path: Path, file_key: str) -> CatalogModel:
    """A model named after `file_key` (a file name or a path relative to DIR) without
    `.gguf` and without a split model's part number; `file_key` stays an alias."""
    stem = file_key[: -len(GGUF)] if file_key.lower().endswith(GGUF) else file_key
    split = SPLIT_PART.match(stem)
    name = split["stem"] if split else stem
    return CatalogModel(name=name, path=str(path), aliases=(file_key,) if file_key != name else ())


def _scan_folder(folder: Path) -> dict[str, CatalogModel]:
    """DIR's models keyed by their path relative to DIR (as models.toml names them)."""
    listed: dict[str, CatalogModel] = {}
    files = (path for path in folder.rglob("*") if path.suffix.lower() == GGUF and path.is_file())
    for path in sorted(files, key=lambda path: path.relative_to(folder).as_posix()):
        if path.name.lower().startswith("mmproj"):
            continue  # a vision projector: loaded beside its model, never served alone
        split = SPLIT_PART.match(path.stem)
        if split and int(split["part"]) != 1:
            continue  # llama.cpp loads the other parts from the first
        file_key = path.relative_to(folder).as_posix()
        listed[file_key] = _named(path, file_key)
    return listed


def _apply_toml(listed: dict[str, CatalogModel], toml_path: Path, folder: Path) -> dict[str, CatalogModel]:
    """`listed` with models.toml's names and overrides applied."""
    try:
        import tomllib  # Python 3.11+; imported only when a models.toml exists
    except ImportError:
        raise CatalogError(f"{toml_path}: reading models.toml needs Python 3.11 or later") from None

    try:
        with toml_path.open("rb") as file:
            tables = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{toml_path}: {exc}") from None
    except OSError as exc:
        raise CatalogError(f"cannot read {toml_path}: {exc.strerror}") from None
    result = dict(listed)
    for file_key, table in tables.items():
        where = f'{toml_path} ["{file_key}"]'
        if not isinstance(table, dict):
            raise CatalogError(f'{toml_path}: key {file_key!r} is outside any table (put it under ["FILE.gguf"])')
        if file_key not in listed:
            # An unquoted [name.gguf] is a table `name` holding a table `gguf`: TOML's dotted keys.
            raise CatalogError(
                f"{where}: no such model file in {folder} "
                '(name a file by its path relative to it, in quotes: ["name.gguf"])'
            )
        unknown = sorted(set(table) - set(TOML_KEYS))
        if unknown:
            raise CatalogError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TOML_KEYS)})")
        result[file_key] = _override(listed[file_key], table, where, folder)
    return result


def _override(model: CatalogModel, table: dict[str, Any], where: str, folder: Path) -> CatalogModel:
    """`model` with one models.toml table's keys applied (the keys are known ones)."""
    changes: dict[str, Any] = {}
    if "alias" in table:
        alias = table["alias"]
        names = [alias] if isinstance(alias, str) else alias
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise CatalogError(f"{where}: alias must be a name or a non-empty list of names, not {alias!r}")
        # The first alias becomes the name; the file's own names keep working.
        changes["name"] = names[0]
        changes["aliases"] = tuple(n for n in dict.fromkeys([*names[1:], *model.all_names]) if n != names[0])
    for key in ("ctx_size", "parallel"):
        if key in table:
            value = table[key]
            # bool is an int in Python, and `true` is surely a mistake here
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CatalogError(f"{where}: {key} must be a whole number of at least 1, not {value!r}")
            changes[key] = value
    if "no_think" in table:
        if not isinstance(table["no_think"], bool):
            raise CatalogError(f"{where}: no_think must be true or false, not {table['no_think']!r}")
        changes["no_think"] = table["no_think"]
    if "chat_template" in table:
        changes["chat_template"] = _chat_template(table["chat_template"], where, folder)
    return replace(model, **changes)


def _chat_template(value: object, where: str, folder: Path) -> str:
    """A built-in template's name as is, or a Jinja file's path (relative to DIR if relative)."""
    from igllama.engine.template import builtin_template_names

    if not isinstance(value, str) or not value:
        raise CatalogError(f"{where}: chat_template must be a template name or a file, not {value!r}")
    builtins = builtin_template_names()
    if value in builtins:
        return value
    path = folder / value  # an absolute value stays absolute
    if not path.is_file():
        raise CatalogError(
            f"{where}: chat_template {value!r} is neither a built-in template nor a file "
            f"(built-ins: {', '.join(builtins)})"
        )
    return str(path)


def _unique(models: list[CatalogModel], folder: Path | None) -> list[CatalogModel]:
    """`models`, after checking that no name or alias picks two of them."""
    owners: dict[str, CatalogModel] = {}
    for model in models:
        for name in model.all_names:
            other = owners.setdefault(name, model)
            if other is not model:
                fix = f"give one an alias in {folder / MODELS_TOML}" if folder else "rename one of the files"
                raise CatalogError(f"two models answer to {name!r}: {other.path} and {model.path}; {fix}")
    return models
