"""`tuneforge webchat`: a chat page in the browser over the same ChatEngine as `chat` and `api`.

Answers stream in as they are generated. The conversation lives in the browser session and every turn
sends all of it (as Messages) to the engine, with the page's system prompt and sampling settings; Stop
cancels the generation, Clear forgets the conversation. Tabs are independent sessions whose answers the
engine's scheduler batches together. Gradio is imported lazily, with telemetry, the version check, the share
tunnel and web fonts off, so neither the server nor the page reaches beyond the machine.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket

from ..data.conversation import Message
from ..errors import ConfigError, TuneforgeError
from .sampling import SamplingParams

logger = logging.getLogger("tuneforge")


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before the import: no telemetry, no version check
    try:
        import gradio
    except ImportError:
        raise ConfigError("webchat and webui need gradio: pip install 'tuneforge[webchat]'") from None
    return gradio


def _theme(gr):
    """The default look with system fonts: Gradio 5's stock theme has the browser fetch Google fonts (Gradio 6
    ships its fonts, and takes no theme in Blocks)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "SFMono-Regular", "monospace"])


def blocks_kwargs(gr) -> dict:
    return {"theme": _theme(gr)} if "theme" in inspect.signature(gr.Blocks).parameters else {}


def chatbot_kwargs(gr) -> dict:
    """Gradio 5 needs type="messages" for role/content dicts; Gradio 6 has no other kind."""
    return {"type": "messages"} if "type" in inspect.signature(gr.Chatbot).parameters else {}


def chat_turn(gr, engine, text, history, system, temperature, top_p, max_new_tokens, repetition_penalty):
    """One turn of a Gradio chat over `engine`: yields (box text, shown conversation, kept history) as the
    answer streams in. A failure takes the turn back and is raised as gr.Error; closing the generator (Stop,
    Clear, a closed tab) cancels the generation in the scheduler. Shared by webchat and the board's Chat tab."""
    g = engine.generate_args
    if not text or not text.strip():
        yield text, history, history
        return
    messages = [Message(m["role"], m["content"]) for m in history] + [Message("user", text)]
    asked = history + [{"role": "user", "content": text}]
    yield "", asked + [{"role": "assistant", "content": ""}], history
    params = SamplingParams(max_new_tokens, temperature=temperature, top_p=top_p,
                            top_k=g.top_k if temperature > 0 else 0, repetition_penalty=repetition_penalty)
    answer, stream = "", None
    try:
        prompt = engine.prompt_ids(messages, system or None)
        room = engine.context_length - len(prompt)
        if room <= 0:
            raise TuneforgeError(f"the conversation ({len(prompt)} tokens) fills the model's context "
                                 f"({engine.context_length}); press Clear to start a new one")
        params.max_new_tokens = min(params.max_new_tokens, room)
        stream = engine.stream_ids(prompt, params)
        for piece in stream:
            answer += piece
            done = asked + [{"role": "assistant", "content": answer}]
            yield "", done, done
    except Exception as e:  # noqa: BLE001 -- shown in the page; the server keeps serving
        if not isinstance(e, TuneforgeError):
            logger.exception("webchat: generation failed")
        yield text, history, history  # the turn is taken back and the text returned to the box
        raise gr.Error(str(e) or type(e).__name__) from e
    finally:
        if stream is not None:
            stream.close()  # also on Stop or Clear: cancels the generation in the scheduler


def build_page(engine, title: str = "tuneforge webchat", concurrency_limit: int | None = None):
    """The chat page (a gr.Blocks, not launched) over `engine`; its API names: /chat and /clear."""
    gr = _gradio()
    g, defaults = engine.generate_args, engine.default_params()
    most_tokens = max(defaults.max_new_tokens, min(engine.context_length, 8192))

    def respond(text, history, system, temperature, top_p, max_new_tokens, repetition_penalty):
        yield from chat_turn(gr, engine, text, history, system, float(temperature), float(top_p),
                             int(max_new_tokens), float(repetition_penalty))

    with gr.Blocks(title=title, analytics_enabled=False, **blocks_kwargs(gr)) as page:
        history = gr.State([])
        chatbot = gr.Chatbot(label="Conversation", height=480, **chatbot_kwargs(gr))
        with gr.Row():
            box = gr.Textbox(show_label=False, placeholder="Message (Enter sends)", scale=6, autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, min_width=80)
            stop = gr.Button("Stop", scale=1, min_width=80)
            clear = gr.Button("Clear", scale=1, min_width=80)
        with gr.Accordion("System prompt and sampling", open=False):
            system = gr.Textbox(label="System prompt (empty: the template's default)", lines=2,
                                value=getattr(engine.template, "default_system", None) or "")
            with gr.Row():
                temperature = gr.Slider(0, max(2.0, defaults.temperature), value=defaults.temperature, step=0.01,
                                        label="Temperature (0: greedy)")
                top_p = gr.Slider(0.01, 1.0, value=min(max(g.top_p, 0.01), 1.0), step=0.01, label="Top-p")
                max_new = gr.Slider(1, most_tokens, value=defaults.max_new_tokens, step=1, label="Max new tokens")
                penalty = gr.Slider(min(1.0, defaults.repetition_penalty), max(2.0, defaults.repetition_penalty),
                                    value=defaults.repetition_penalty, step=0.01, label="Repetition penalty")
        chatting = gr.on([box.submit, send.click], respond,
                         [box, history, system, temperature, top_p, max_new, penalty], [box, chatbot, history],
                         api_name="chat", concurrency_limit=concurrency_limit or engine.max_batch_size)
        stop.click(None, None, None, cancels=[chatting])
        clear.click(lambda: ("", [], []), None, [box, chatbot, history], api_name="clear", cancels=[chatting])
    return page


def launch(page, host: str, port: int, command: str = "webchat") -> str:
    """Starts serving `page` in the background on host:port (no share link, no SSR); returns its URL."""
    try:
        page.launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=True, show_error=True,
                    prevent_thread_lock=True, inbrowser=False)
    except OSError:
        raise ConfigError(_busy(host, port, command)) from None
    return page.local_url


def _busy(host: str, port: int, command: str = "webchat") -> str:
    return f"{command}: cannot listen on {host}:{port} (in use, or not an address of this machine); pick another port"


def _check_address(host: str, port: int, command: str = "webchat") -> None:
    """Fails before the model loads when host:port cannot be bound."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError:
            raise ConfigError(_busy(host, port, command)) from None


def run_webchat(argv: list[str]) -> int:
    from .engine import ChatEngine
    from .serve_config import parse_serve_args, warn_if_exposed

    args, settings = parse_serve_args(argv, "webchat", default_port=7860)
    _gradio()  # a missing gradio is reported before the model loads
    warn_if_exposed(settings.host, None, "webchat")
    _check_address(settings.host, settings.port)
    engine = ChatEngine.from_args(args, max_batch_size=settings.max_batch_size, max_waiting=settings.max_concurrent)
    try:
        serve_until_stopped(build_page(engine), settings.host, settings.port,
                            "tuneforge webchat: {url} (Ctrl-C to stop)")
    finally:
        engine.close()
    return 0


def serve_until_stopped(page, host: str, port: int, banner: str, command: str = "webchat") -> None:
    """Serves `page` on host:port, prints banner (with {url}), and blocks until Ctrl-C; webchat and webui."""
    url = launch(page, host, port, command)
    print(banner.format(url=url), flush=True)
    try:
        page.block_thread()
    finally:
        page.close()
