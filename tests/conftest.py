import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Tests never read or fill the user's tokenized-data cache.
os.environ.setdefault("TUNEFORGE_DATA_CACHE", tempfile.mkdtemp(prefix="tuneforge-test-data-"))

import pytest  # noqa: E402

from tests.tiny import chatml_tokenizer, save_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def chatml_tok():
    return chatml_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))
