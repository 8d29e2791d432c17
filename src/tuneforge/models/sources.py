"""Where a model comes from: a local folder, a GGUF file, a built-in alias or a hub id.

Everything downstream loads from a local folder, so resolution is the only place that knows about the hub,
PyPI-packaged aliases or GGUF files.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from tuneforge.errors import ModelError
from tuneforge.models.aliases import ALIASES, find_alias, materialize_alias
from tuneforge.models.gguf_conversion import model_cache_root
from tuneforge.offline import hub_is_offline

SourceKind = Literal["folder", "gguf", "alias", "hub"]

# namespace/name, the only form the hub accepts today (bare names like "gpt2" were moved into namespaces).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Only what loading a causal LM needs; skips duplicate formats (pytorch .bin next to safetensors, GGUF, ONNX).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk. `folder` holds config/tokenizer files; `gguf_file`, when set, is a GGUF in it."""

    kind: SourceKind
    name: str  # what the user wrote in model_name_or_path
    folder: Path
    gguf_file: Optional[str] = None
    hub_id: Optional[str] = None

    @property
    def gguf_path(self) -> Optional[Path]:
        return self.folder / self.gguf_file if self.gguf_file else None


def resolve_model_source(model_args) -> ModelSource:
    """Finds model_name_or_path on disk, converting an alias or downloading a hub id first when needed."""
    name = (model_args.model_name_or_path or "").strip()
    if not name:
        raise ModelError("model_name_or_path is empty; set it to a model folder, a .gguf file, a hub id or an alias")
    gguf_key = model_args.gguf_file
    local = Path(name).expanduser()

    if local.is_file():
        if local.suffix.lower() != ".gguf":
            raise ModelError(
                f"model_name_or_path '{name}' is a file but not a .gguf; point it at the model's folder instead"
            )
        return ModelSource("gguf", name, local.resolve().parent, gguf_file=local.name)
    if local.is_dir():
        folder = local.resolve()
        if gguf_key:
            if not (folder / gguf_key).is_file():
                raise ModelError(f"gguf_file '{gguf_key}' is not in {folder}; check the name of the .gguf file")
            return ModelSource("gguf", name, folder, gguf_file=gguf_key)
        if not (folder / "config.json").is_file():
            raise ModelError(_folder_without_config(folder))
        return ModelSource("folder", name, folder)

    alias = find_alias(name)
    if alias is not None:
        folder = materialize_alias(alias, model_cache_root(model_args.model_cache_dir))
        return ModelSource("alias", name, folder)
    if HUB_ID.match(name) and not name.startswith((".", "~")):
        return _download_from_hub(name, model_args)
    raise ModelError(_unknown_name(name))


def _folder_without_config(folder: Path) -> str:
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    if ggufs:
        return f"{folder} has no config.json but has {ggufs[0]}; set gguf_file: {ggufs[0]} to load it"
    return f"{folder} has no config.json, so it is not a Hugging Face model folder; point model_name_or_path at one"


def _unknown_name(name: str) -> str:
    hint = ""
    close = difflib.get_close_matches(name.lower(), list(ALIASES), n=1)
    if close:
        hint = f" (did you mean the alias '{close[0]}'?)"
    looks_like_path = os.sep in name or name.startswith((".", "~")) or name.lower().endswith(".gguf")
    what = "no such file or folder" if looks_like_path else "not a local path, a built-in alias or a hub id (org/name)"
    return (
        f"model_name_or_path '{name}': {what}{hint}; use an existing folder or .gguf file, an alias "
        f"({', '.join(ALIASES)}), or a hub id like HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def _download_from_hub(repo_id: str, model_args) -> ModelSource:
    """The local snapshot of a hub repo: from the hub cache, else downloaded (unless the hub is offline)."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_is_offline()
    common = dict(
        repo_id=repo_id,
        revision=model_args.model_revision,
        cache_dir=model_args.cache_dir,
        token=model_args.hf_hub_token,
        local_files_only=offline,
    )
    try:
        if model_args.gguf_file:
            # A GGUF repo often holds a dozen quantisations; fetch only the one asked for.
            path = Path(hf_hub_download(filename=model_args.gguf_file, **common))
            return ModelSource("gguf", repo_id, path.parent, gguf_file=path.name, hub_id=repo_id)
        folder = snapshot_download(allow_patterns=HUB_PATTERNS, **common)
    except LocalEntryNotFoundError as err:
        reason = "the hub is offline (HF_HUB_OFFLINE=1)" if offline else "the hub cannot be reached"
        raise ModelError(
            f"model '{repo_id}' is not on disk and {reason}; download it where there is network with "
            f"`hf download {repo_id}` (same cache_dir), or set model_name_or_path to a local folder or an alias"
        ) from err
    except GatedRepoError as err:
        raise ModelError(
            f"model '{repo_id}' is gated; accept its licence on the hub and set hf_hub_token (or run `hf auth login`)"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelError(
            f"model '{repo_id}' does not exist on the hub (or is private: set hf_hub_token); check model_name_or_path"
        ) from err
    except RevisionNotFoundError as err:
        raise ModelError(
            f"model '{repo_id}' has no revision '{model_args.model_revision}'; fix model_revision"
        ) from err
    except RemoteEntryNotFoundError as err:
        raise ModelError(f"model '{repo_id}' has no file '{model_args.gguf_file}'; fix gguf_file") from err
    except HFValidationError as err:
        raise ModelError(f"model_name_or_path '{repo_id}' is not a valid hub id: {err}") from err
    snapshot = Path(folder)
    if not (snapshot / "config.json").is_file():
        raise ModelError(
            f"hub model '{repo_id}' has no config.json; if the repo holds .gguf files, set gguf_file to one of them"
        )
    return ModelSource("hub", repo_id, snapshot, hub_id=repo_id)
