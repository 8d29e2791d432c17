"""`tuneforge webui [--host 127.0.0.1] [--port 7860] [--lang en|zh] [--workdir .]`: the board in the browser."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .labels import LANGUAGES


def _options(argv: list[str]) -> dict:
    opts = {"host": "127.0.0.1", "port": "7860", "lang": "en", "workdir": "."}
    i = 0
    while i < len(argv):
        item = argv[i].lstrip("-")
        key, _, value = item.partition("=")
        if key not in opts:
            raise ConfigError(f"webui: unknown option {argv[i]!r}; it takes --host, --port, --lang and --workdir")
        if not value:
            if i + 1 >= len(argv):
                raise ConfigError(f"webui: --{key} needs a value")
            value, i = argv[i + 1], i + 1
        opts[key] = value
        i += 1
    try:
        opts["port"] = int(opts["port"])
    except ValueError:
        raise ConfigError(f"webui: port {opts['port']!r} is not a number") from None
    if not 0 < opts["port"] < 65536:
        raise ConfigError(f"webui: port {opts['port']} is out of range; use 1-65535")
    workdir = Path(opts["workdir"]).expanduser()
    if not workdir.is_dir():
        raise ConfigError(f"webui: --workdir {opts['workdir']} is not a folder; give the folder runs, data and "
                          "saves/ are read from and written to")
    opts["workdir"] = str(workdir)
    if opts["lang"] not in LANGUAGES:
        raise ConfigError(f"webui: lang {opts['lang']!r}: choose one of {', '.join(LANGUAGES)}")
    return opts


def run_webui(argv: list[str]) -> int:
    from ..infer.serve_config import warn_if_exposed
    from ..infer.webchat import _check_address, _gradio, serve_until_stopped
    from .actions import Board
    from .board import build_board

    opts = _options(argv)
    _gradio()
    warn_if_exposed(opts["host"], None, "webui")
    _check_address(opts["host"], opts["port"], "webui")
    board = Board(opts["workdir"])
    try:
        serve_until_stopped(build_board(board, lang=opts["lang"]), opts["host"], opts["port"],
                            f"tuneforge webui: {{url}} (working folder {board.workdir}; Ctrl-C to stop)", "webui")
    finally:
        board.close()
    return 0
