import logging

logger = logging.getLogger("llama_cpp")
