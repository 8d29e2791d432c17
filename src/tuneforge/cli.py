"""One entry point: tuneforge train | chat | api | webchat | webui | export | estimate | data preview | env | version."""

from __future__ import annotations

import logging
import os
import sys

from .errors import TuneforgeError

USAGE = """usage: tuneforge COMMAND [CONFIG.yaml] [key=value ...] [--key value ...] [--debug] [--verbose]
       tuneforge COMMAND --help

commands:
  train     fine-tune (stage pt or sft; lora, qlora, freeze or full)
  chat      talk to a model (+ adapter) in the terminal; --query "text" answers once
  api       serve a model over the OpenAI API (chat, completions, score) on 127.0.0.1:8000
  webchat   chat with a model in the browser on 127.0.0.1:7860
  webui     the board in the browser: train, watch, evaluate, chat and export (127.0.0.1:7860)
  export    merge adapters into the model; safetensors, or GGUF for llama.cpp and Ollama
  estimate  peak memory and time per epoch of a training config, before any weight loads (--json)
  data      data preview CONFIG.yaml: summary and tokenized examples (--num N, --json)
  env       versions, hardware and the GEMM peak behind MFU (--remeasure)
  version   the tuneforge version
"""


COMMANDS_WITH_HELP = ("train", "chat", "api", "webchat", "webui", "export", "estimate", "data", "env", "version")


# Third-party notices that call for no action by a tuneforge user; --verbose shows them.
NOTICES = {
    "DeepSpeed": "Setting accelerator to CPU",  # DeepSpeed found no GPU: expected on a CPU machine
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",  # an optional faster kernel
}


def _quiet_libraries(verbose: bool = False) -> None:
    import warnings

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[%(levelname)s] %(message)s")
    if verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    for name in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name, text in NOTICES.items():
        logging.getLogger(name).addFilter(lambda record, text=text: text not in record.getMessage())
    # Deprecation notices are addressed to library developers, not to someone running a fine-tune.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _dispatch(command: str, argv: list[str]) -> int:
    if command == "train":
        from .config.precheck import check_train_config

        check_train_config(argv)  # config mistakes in well under a second, before torch loads
        from .train.launch import maybe_relaunch
        from .train.runner import run_train

        code = maybe_relaunch(argv)
        if code is not None:
            return code
        run_train(argv)
        return 0
    if command == "chat":
        from .infer.chat import run_chat

        return run_chat(argv)
    if command == "api":
        from .infer.api.app import run_api

        return run_api(argv)
    if command == "webchat":
        from .infer.webchat import run_webchat

        return run_webchat(argv)
    if command == "webui":
        from .webui.command import run_webui

        return run_webui(argv)
    if command == "export":
        from .export.command import run_export

        return run_export(argv)
    if command == "estimate":
        from .estimate.command import run_estimate

        return run_estimate(argv)
    if command == "data":
        from .data.preview import run_data

        return run_data(argv)
    if command == "env":
        from .envinfo import print_env

        return print_env(argv)
    if command == "version":
        from . import __version__

        print(__version__)
        return 0
    print(USAGE)
    return 0 if command in ("help", "-h", "--help") else 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    if not argv:
        print(USAGE)
        return 2
    if argv[0] in COMMANDS_WITH_HELP and ("--help" in argv[1:] or "-h" in argv[1:]):
        from .help import command_help

        print(command_help(argv[0]))
        return 0
    _quiet_libraries(verbose)
    try:
        return _dispatch(argv[0], argv[1:])
    except TuneforgeError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
