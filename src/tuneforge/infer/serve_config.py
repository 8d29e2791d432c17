"""What `tuneforge api` and `tuneforge webchat` read before loading a model: the config, the address to bind
(keys first, then LLaMA-Factory's API_HOST / API_PORT / API_KEY / API_MODEL_NAME environment variables, then
loopback defaults), and a warning when the address reaches beyond this machine."""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..config.parser import build_args, read_sources
from ..errors import ConfigError

logger = logging.getLogger("tuneforge")

ENV = {"host": "API_HOST", "port": "API_PORT", "api_key": "API_KEY", "api_model_name": "API_MODEL_NAME"}


@dataclass
class ServeSettings:
    host: str
    port: int
    api_key: str | None
    model_name: str
    max_batch_size: int
    max_concurrent: int


def parse_serve_args(argv: list[str], command: str, default_port: int):
    """(Args, ServeSettings) for `command`; a ConfigError for every mistake found before a model loads."""
    args, _ = build_args(read_sources(argv), with_training=False)
    if not args.model.model_name_or_path:
        raise ConfigError(
            f"{command}: model_name_or_path is not set; pass a Hugging Face folder, hub id, .gguf file or alias "
            f"(e.g. `tuneforge {command} --model_name_or_path saves/my-model`)"
        )
    serve, sources = args.serve, args.sources
    if command == "webchat":
        for key in ("api_key", "api_model_name"):
            if key in sources:
                raise ConfigError(f"{sources[key]}: {key} is for `tuneforge api`; the web chat page has no API key "
                                  "or model name (keep it on 127.0.0.1, or put it behind a proxy that checks users)")
    values = {}
    for key, env in ENV.items():
        if command == "webchat" and key in ("api_key", "api_model_name"):
            values[key] = None
            continue
        value = getattr(serve, key)
        if key not in sources and os.environ.get(env):
            value = os.environ[env]
        values[key] = value
    try:
        port = int(values["port"]) if values["port"] is not None else default_port
    except ValueError:
        raise ConfigError(f"{command}: port {values['port']!r} (from API_PORT) is not a number") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{command}: port {port} is out of range; use 1-65535")
    if serve.max_batch_size < 1 or serve.max_concurrent < 1:
        raise ConfigError(f"{command}: max_batch_size and max_concurrent must be at least 1")
    if args.generate.num_beams > 1:
        raise ConfigError(f"{command}: num_beams={args.generate.num_beams} cannot be served (beam search neither "
                          "streams nor batches); remove num_beams, or use `tuneforge chat` for beam search")
    adapter = (args.model.adapter_name_or_path or "").split(",")[-1].strip()
    name = values["api_model_name"] or Path((adapter or args.model.model_name_or_path).rstrip("/")).name
    settings = ServeSettings(values["host"], port, values["api_key"] or None, name, serve.max_batch_size,
                             serve.max_concurrent)
    return args, settings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, api_key: str | None, command: str) -> None:
    if not is_loopback(host):
        if command == "webui":
            logger.warning("webui binds to %s: anyone who can reach this machine can start runs, read and write "
                           "files and load models through the page; bind to 127.0.0.1 unless that is intended", host)
        elif "webchat" in command:
            logger.warning("%s binds to %s: anyone who can reach this machine can use the model through the page; "
                           "bind to 127.0.0.1 unless that is intended", command, host)
        elif api_key:
            logger.warning("%s binds to %s: it is reachable from other machines (clients need the api_key)",
                           command, host)
        else:
            logger.warning("%s binds to %s without an api_key: anyone who can reach this machine can use the "
                           "model; set api_key (or API_KEY), or bind to 127.0.0.1", command, host)
