"""The model catalog in memory: which models `-m` files and a --models-dir offer, under
which names, with DIR/models.toml's overrides, and each refusal as one line.

The .gguf files are a few fake bytes: `scan` lists files, it never opens them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from igllama.catalog import CatalogError, CatalogModel, is_multi, scan
from igllama.config import ServerConfig


def touch(folder: Path, *relative: str) -> list[Path]:
    """Fake model files under `folder` (subfolders made as needed)."""
    paths = []
    for name in relative:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not really a model")
        paths.append(path)
    return paths


def scan_dir(folder: Path, toml: str | None = None, *models: str) -> list[CatalogModel]:
    if toml is not None:
        (folder / "models.toml").write_text(toml)
    first, *rest = models or ("",)
    return scan(ServerConfig(model=first, models=tuple(rest), models_dir=str(folder)))


def catalog_error(folder: Path, toml: str) -> str:
    with pytest.raises(CatalogError) as caught:
        scan_dir(folder, toml)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- one model: the id it always had


def test_one_model_keeps_its_file_name_with_the_extension() -> None:
    config = ServerConfig(model="/models/gemma-3-270m-q4_k_m.gguf")
    assert not is_multi(config)
    assert scan(config) == [CatalogModel(name="gemma-3-270m-q4_k_m.gguf", path="/models/gemma-3-270m-q4_k_m.gguf")]


def test_one_model_with_an_alias_is_named_by_it() -> None:
    assert scan(ServerConfig(model="/models/a.gguf", alias="mine")) == [
        CatalogModel(name="mine", path="/models/a.gguf")
    ]


# -- several model files


def test_model_files_are_named_without_the_extension(tmp_path: Path) -> None:
    a, b = touch(tmp_path, "one/a.gguf", "two/b.gguf")
    config = ServerConfig(model=str(a), models=(str(b),))
    assert is_multi(config)
    assert scan(config) == [
        CatalogModel(name="a", path=str(a), aliases=("a.gguf",)),
        CatalogModel(name="b", path=str(b), aliases=("b.gguf",)),
    ]


def test_two_model_files_with_one_file_name_clash(tmp_path: Path) -> None:
    a, b = touch(tmp_path, "one/x.gguf", "two/x.gguf")
    with pytest.raises(CatalogError) as caught:
        scan(ServerConfig(model=str(a), models=(str(b),)))
    message = str(caught.value)
    assert "'x'" in message and str(a) in message and str(b) in message and "\n" not in message


# -- a models directory


def test_a_models_dir_lists_every_gguf_in_it_and_its_subfolders_sorted(tmp_path: Path) -> None:
    touch(tmp_path, "zeta.gguf", "qwen/coder-0.5b.gguf", "alpha.gguf", "README.md", "qwen/notes.txt")
    assert is_multi(ServerConfig(model="", models_dir=str(tmp_path)))
    assert scan_dir(tmp_path) == [
        CatalogModel(name="alpha", path=str(tmp_path / "alpha.gguf"), aliases=("alpha.gguf",)),
        CatalogModel(name="qwen/coder-0.5b", path=str(tmp_path / "qwen/coder-0.5b.gguf"),
                     aliases=("qwen/coder-0.5b.gguf",)),
        CatalogModel(name="zeta", path=str(tmp_path / "zeta.gguf"), aliases=("zeta.gguf",)),
    ]


def test_vision_projectors_are_not_served(tmp_path: Path) -> None:
    touch(tmp_path, "gemma/model.gguf", "gemma/mmproj-model-f16.gguf", "MMPROJ.gguf")
    assert [model.name for model in scan_dir(tmp_path)] == ["gemma/model"]


def test_a_split_model_is_one_entry_loaded_from_its_first_part(tmp_path: Path) -> None:
    touch(tmp_path, "big-00002-of-00003.gguf", "big-00001-of-00003.gguf", "big-00003-of-00003.gguf", "small.gguf")
    big, small = scan_dir(tmp_path)
    assert big == CatalogModel(name="big", path=str(tmp_path / "big-00001-of-00003.gguf"),
                               aliases=("big-00001-of-00003.gguf",))
    assert small.name == "small"


def test_model_files_come_first_and_a_file_also_in_the_dir_is_served_once(tmp_path: Path) -> None:
    outside, inside = touch(tmp_path, "elsewhere/solo.gguf", "dir/shared.gguf")
    models = scan_dir(tmp_path / "dir", None, str(outside), str(inside))
    assert [(model.name, model.path) for model in models] == [("solo", str(outside)), ("shared", str(inside))]


def test_model_files_with_an_empty_dir_are_served(tmp_path: Path) -> None:
    (model,) = touch(tmp_path, "a.gguf")
    (tmp_path / "empty").mkdir()
    assert [m.name for m in scan_dir(tmp_path / "empty", None, str(model))] == ["a"]


def test_a_dir_without_models_is_refused(tmp_path: Path) -> None:
    touch(tmp_path, "mmproj-f16.gguf", "notes.txt")
    with pytest.raises(CatalogError, match=f"^no .gguf files in {tmp_path}$"):
        scan_dir(tmp_path)


@pytest.mark.parametrize(("make", "why"), [("missing", "not found"), ("file", "not a directory")])
def test_a_models_dir_that_is_not_a_directory_is_refused(tmp_path: Path, make: str, why: str) -> None:
    target = tmp_path / "models"
    if make == "file":
        target.write_text("")
    with pytest.raises(CatalogError, match=f"^--models-dir {target}: {why}$"):
        scan(ServerConfig(model="", models_dir=str(target)))


def test_the_same_name_in_two_models_is_refused_with_a_way_out(tmp_path: Path) -> None:
    touch(tmp_path, "a.gguf", "b.gguf")
    message = catalog_error(tmp_path, '["b.gguf"]\nalias = "a"\n')
    assert "two models answer to 'a'" in message
    assert str(tmp_path / "a.gguf") in message and str(tmp_path / "b.gguf") in message
    assert f"give one an alias in {tmp_path / 'models.toml'}" in message


# -- models.toml


def test_an_alias_renames_a_model_and_its_file_names_still_pick_it(tmp_path: Path) -> None:
    touch(tmp_path, "SmolLM2-135M-Instruct.Q4_1.gguf", "qwen/coder.gguf")
    models = scan_dir(tmp_path, '["SmolLM2-135M-Instruct.Q4_1.gguf"]\nalias = "smol"\n'
                                '["qwen/coder.gguf"]\nalias = ["coder", "qwen-coder"]\n')
    assert [(model.name, model.aliases) for model in models] == [
        ("smol", ("SmolLM2-135M-Instruct.Q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")),
        ("coder", ("qwen-coder", "qwen/coder", "qwen/coder.gguf")),
    ]


def test_overrides_reach_the_model_and_others_keep_the_flags(tmp_path: Path) -> None:
    touch(tmp_path, "a.gguf", "b.gguf", "templates/mine.jinja")
    a, b = scan_dir(tmp_path, '["a.gguf"]\nctx_size = 2048\nparallel = 2\nchat_template = "chatml"\nno_think = true\n'
                              '["b.gguf"]\nchat_template = "templates/mine.jinja"\nno_think = false\n')
    assert (a.ctx_size, a.parallel, a.chat_template, a.no_think) == (2048, 2, "chatml", True)
    assert (b.ctx_size, b.parallel, b.chat_template, b.no_think) == (None, None, str(tmp_path / "templates/mine.jinja"),
                                                                     False)


TOML_ERRORS: list[tuple[str, list[str]]] = [
    ('["a.gguf"\nalias = "x"\n', ["models.toml: ", "line 1"]),
    ('["nope.gguf"]\nalias = "x"\n', ['["nope.gguf"]', "no such model file", '["name.gguf"]']),
    ("[a.gguf]\nalias = 'x'\n", ['["a"]', "no such model file"]),
    ('alias = "x"\n', ["key 'alias' is outside any table"]),
    ('["a.gguf"]\ncontext = 2048\n', ['["a.gguf"]', "unknown key 'context'", "alias, ctx_size, parallel"]),
    ('["a.gguf"]\nctx_size = "2048"\n', ['["a.gguf"]', "ctx_size must be a whole number", "'2048'"]),
    ('["a.gguf"]\nctx_size = 0\n', ['["a.gguf"]', "ctx_size must be a whole number of at least 1, not 0"]),
    ('["a.gguf"]\nparallel = true\n', ['["a.gguf"]', "parallel must be a whole number", "True"]),
    ('["a.gguf"]\nparallel = -1\n', ['["a.gguf"]', "parallel", "not -1"]),
    ('["a.gguf"]\nno_think = "yes"\n', ['["a.gguf"]', "no_think must be true or false"]),
    ('["a.gguf"]\nalias = []\n', ['["a.gguf"]', "alias must be a name or a non-empty list"]),
    ('["a.gguf"]\nalias = 3\n', ['["a.gguf"]', "alias must be", "not 3"]),
    ('["a.gguf"]\nchat_template = "no-such-format"\n',
     ['["a.gguf"]', "chat_template 'no-such-format' is neither", "built-ins: ", "chatml"]),
]


@pytest.mark.parametrize(("toml", "words"), TOML_ERRORS, ids=[toml.splitlines()[-1] for toml, _ in TOML_ERRORS])
def test_a_bad_models_toml_is_one_line_naming_the_table_and_key(tmp_path: Path, toml: str, words: list[str]) -> None:
    touch(tmp_path, "a.gguf")
    message = catalog_error(tmp_path, toml)
    assert message.startswith(str(tmp_path / "models.toml")), message
    for word in words:
        assert word in message, message


