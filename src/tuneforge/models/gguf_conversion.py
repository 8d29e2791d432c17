"""Turns a GGUF file into a plain safetensors Hugging Face folder, once, in a cache.

transformers can read a GGUF directly, but it dequantises every tensor on every load (about a minute even for
135M parameters) and a model loaded that way refuses `save_pretrained`. Converting once into a cache folder makes
every later load a fast safetensors read, and lets bitsandbytes quantise the weights like any other checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional

from tuneforge.errors import ModelError

logger = logging.getLogger(__name__)

# Bump when the folder layout or the conversion changes, so that older cache folders are not reused silently.
CONVERTER_VERSION = 2
COMPLETE_MARKER = "tuneforge_source.json"
DEFAULT_CACHE = Path("~/.cache/tuneforge/models")


def model_cache_root(model_cache_dir: Optional[str] = None) -> Path:
    """The cache for converted models: the model_cache_dir key, else TUNEFORGE_MODEL_CACHE, else the default."""
    chosen = model_cache_dir or os.environ.get("TUNEFORGE_MODEL_CACHE") or str(DEFAULT_CACHE)
    return Path(chosen).expanduser().resolve()


def cache_key(parts: Iterable[object]) -> str:
    """A short stable digest of everything that identifies the source (file sizes, package versions, ...)."""
    text = json.dumps([CONVERTER_VERSION, *[str(p) for p in parts]])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def cached_conversion(
    cache_root: Path,
    name: str,
    key_parts: Iterable[object],
    locate_gguf: Callable[[Path], Path],
    source_label: Optional[str] = None,
) -> Path:
    """Returns `<cache_root>/<name>-<key>`, converting a GGUF into it first if it is not there yet.

    `locate_gguf(scratch_dir)` returns the GGUF file; it may build it inside scratch_dir (chunked packages), so
    a cache hit never pays for that. A file lock keeps two processes from converting the same model at once
    (each would spend a minute of CPU for nothing); the folder only appears, by rename, once it is complete.
    """
    from filelock import FileLock

    target = cached_folder(cache_root, name, key_parts)
    if is_complete(target):
        return target
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(
            f"cannot create the model cache {cache_root} ({err.strerror}); set model_cache_dir or "
            "TUNEFORGE_MODEL_CACHE to a writable folder"
        ) from err
    with FileLock(str(cache_root / f".{target.name}.lock")):
        if is_complete(target):
            return target
        # Under the lock, any temporary folder for this target was left by an interrupted conversion.
        for stale in cache_root.glob(f".tmp-{target.name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # a folder without the marker is not ours to trust
            shutil.rmtree(target)
        temp = cache_root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        scratch = Path(f"{temp}-source")
        try:
            scratch.mkdir()
            convert_gguf_to_folder(locate_gguf(scratch), temp, source_label=source_label)
            os.replace(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def cached_folder(cache_root: Path, name: str, key_parts: Iterable[object]) -> Path:
    return cache_root / f"{safe_name(name)}-{cache_key(key_parts)}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def convert_gguf_to_folder(gguf_path: Path, out_dir: Path, source_label: Optional[str] = None) -> Path:
    """Writes config, float32 safetensors weights, tokenizer and generation config. transformers reads the
    chat template from the GGUF metadata (tokenizer.chat_template) when the file has one.

    Float32 keeps the dequantised values exactly; bfloat16 would round them a second time.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    started = time.perf_counter()
    logger.info("converting %s to safetensors in %s (once; later loads reuse it)", gguf_path, out_dir.parent)
    folder, file_name = str(gguf_path.parent), gguf_path.name
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as err:
        raise ModelError(
            f"transformers cannot read the GGUF file {gguf_path}: {err}; use a Hugging Face folder of the same "
            "model instead (model_name_or_path)"
        ) from err
    context = getattr(gguf_model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > 10 * context:  # unset: transformers' "very large" placeholder
        tokenizer.model_max_length = context

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights we write are plain float32, not GGUF-quantised
    config.dtype = torch.float32
    config._name_or_path = ""
    # The GGUF-loaded model is flagged as quantised and refuses save_pretrained; a fresh model of the same
    # config that takes over its tensors is an ordinary checkpoint.
    plain_model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain_model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not _is_tied_copy(plain_model, k)]
    if missing or unexpected:
        raise ModelError(
            f"the GGUF file {gguf_path} does not match its architecture (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); use a Hugging Face folder of the same model instead"
        )
    del gguf_model
    plain_model.tie_weights()
    plain_model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    plain_model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _make_readable(out_dir)

    size = gguf_path.stat().st_size
    record = {
        "converted_from": source_label or str(gguf_path),
        "gguf_bytes": size,
        "converter_version": CONVERTER_VERSION,
        "seconds": round(time.perf_counter() - started, 1),
    }
    # Written last: its presence is what marks the folder complete.
    (out_dir / COMPLETE_MARKER).write_text(json.dumps(record, indent=2))
    logger.info("converted %s in %.0f s", gguf_path.name, record["seconds"])
    return out_dir


def _is_tied_copy(model, key: str) -> bool:
    """True for the output head's weight when it is tied to the input embeddings (stored once in GGUF)."""
    if not getattr(model.config, "tie_word_embeddings", False):
        return False
    head = model.get_output_embeddings()
    return head is not None and key.endswith("weight") and key.startswith(_module_name(model, head))


def _module_name(model, module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return "\0"


def _make_readable(folder: Path) -> None:
    """The weights are written owner-only; a cache shared by a team should follow the umask like other files."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)
