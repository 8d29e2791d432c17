"""`tuneforge chat`: answer one `query`, or talk in a terminal REPL that keeps the conversation's history.

The header goes to stderr so that `tuneforge chat ... query="..." > answer.txt` captures only the answer.
User errors (bad keys, missing model) propagate as TuneforgeError for the CLI to print on one line.
"""

from __future__ import annotations

import sys

from ..config.parser import build_args, read_sources
from ..data.conversation import Message
from ..errors import ConfigError

HELP = "type `clear` to forget the conversation, `exit` (or Ctrl-D) to quit"


def run_chat(argv: list[str]) -> int:
    args, _ = build_args(read_sources(argv), with_training=False)
    if not args.model.model_name_or_path:
        raise ConfigError(
            "chat: model_name_or_path is not set; pass a Hugging Face folder, hub id, .gguf file or alias "
            "(e.g. `tuneforge chat model_name_or_path=saves/my-model`)"
        )
    from .engine import ChatEngine

    engine = ChatEngine.from_args(args)
    try:
        print(_header(args), file=sys.stderr, flush=True)
        if args.generate.query is not None:
            _print_answer(engine, [Message("user", args.generate.query)])
            return 0
        return _repl(engine)
    finally:
        engine.close()  # its scheduler thread must not be inside torch when the interpreter exits


def _header(args) -> str:
    parts = [f"model: {args.model.model_name_or_path}"]
    if args.model.adapter_name_or_path:
        parts.append(f"adapter: {args.model.adapter_name_or_path}")
    parts.append(f"template: {args.data.template}")
    mode = "sampling" if args.generate.do_sample else ("beam search" if args.generate.num_beams > 1 else "greedy")
    parts.append(mode)
    return "tuneforge chat | " + " | ".join(parts)


def _print_answer(engine, messages: list[Message]) -> str:
    pieces = []
    stream = engine.stream(messages)
    try:
        for piece in stream:
            print(piece, end="", flush=True)
            pieces.append(piece)
    finally:
        stream.close()  # on Ctrl-C, stops the generation thread now rather than when garbage-collected
    print(flush=True)
    return "".join(pieces)


def _repl(engine) -> int:
    if sys.stdin.isatty():
        try:
            import readline  # noqa: F401  -- arrow keys and line history for input()
        except ImportError:
            pass
    print(HELP, file=sys.stderr, flush=True)
    history: list[Message] = []
    while True:
        try:
            line = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        except UnicodeDecodeError:
            # Terminals set to a non-UTF-8 locale can send bytes Python cannot decode; ask again.
            print("could not decode the input; set the terminal's encoding to UTF-8 and retype it", file=sys.stderr)
            continue
        command = line.strip()
        if not command:
            continue
        if command == "exit":
            return 0
        if command == "clear":
            history = []
            print("History cleared.", flush=True)
            continue
        messages = history + [Message("user", line)]
        print("Assistant: ", end="", flush=True)
        try:
            answer = _print_answer(engine, messages)
        except KeyboardInterrupt:
            # The interrupted turn is left out of the history: a half answer would skew the next one.
            print("\n[interrupted]", flush=True)
            continue
        history = messages + [Message("assistant", answer)]
