"""An Ollama Modelfile (and a short README) beside an exported GGUF file.

Ollama formats prompts with Go templates, not Jinja. The Go template is derived from the training template
itself: a conversation of marker strings is rendered, and the text between markers gives the pieces that
open the conversation (with and without a system prompt) and follow each user and assistant message. The
derived template is checked by rendering conversations both ways; a template it cannot express (one whose
turns depend on their position) gets no TEMPLATE line, and Ollama then falls back to the chat template
embedded in the GGUF file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..data.conversation import Message

logger = logging.getLogger("tuneforge")

S, U1, A1, U2 = "\x01SYS\x01", "\x01USER1\x01", "\x01ASSISTANT1\x01", "\x01USER2\x01"


@dataclass
class TurnPieces:
    head_system: str  # before the system prompt
    after_system: str  # between the system prompt and the first user message
    head_plain: str  # before the first user message when there is no system prompt
    after_user: str  # after a user message (ends with the assistant's header: the prompt ends here)
    before_assistant: str  # what a past assistant message starts with beyond that (e.g. a space or newline)
    after_assistant: str  # after an assistant message (up to the next user message)

    def render(self, system: str | None, messages: list[Message]) -> str:
        """What the Go template produces (for the self-check)."""
        out = self.head_system + system + self.after_system if system else self.head_plain
        for m in messages:
            if m.role == "user":
                out += m.content + self.after_user
            else:
                out += self.before_assistant + m.content + self.after_assistant
        return out

    def go_template(self) -> str:
        """The Go template. No `{{-` trim markers: they would also eat the newlines that end the pieces."""
        def lit(text: str) -> str:  # Go template text: literal except "{{", written as a string action
            return text.replace("{{", '{{ "{{" }}')

        return (
            "{{ if .System }}" + lit(self.head_system) + "{{ .System }}" + lit(self.after_system)
            + "{{ else }}" + lit(self.head_plain) + "{{ end }}"
            + "{{ range .Messages }}"
            + '{{ if eq .Role "user" }}{{ .Content }}' + lit(self.after_user)
            + '{{ else if eq .Role "assistant" }}' + lit(self.before_assistant) + "{{ .Content }}"
            + lit(self.after_assistant)
            + "{{ end }}{{ end }}"
        )


def _between(text: str, start: str, end: str | None) -> str | None:
    i = text.find(start)
    if i < 0:
        return None
    i += len(start)
    if end is None:
        return text[i:]
    j = text.find(end, i)
    return None if j < 0 else text[i:j]


def turn_pieces(template, tokenizer, bos_added: str = "") -> TurnPieces | None:
    """The Go template's pieces for `template`, or None when it cannot be expressed that way.
    `bos_added`: the BOS text the runtime adds by itself (removed from the start of the pieces)."""
    try:
        full = template.render_prompt([Message("user", U1), Message("assistant", A1), Message("user", U2)], S,
                                      None, tokenizer)
        plain = template.render_prompt([Message("user", U1)], None, None, tokenizer)
    except Exception:  # noqa: BLE001 -- a template that cannot render plain turns gets no Go template
        return None
    head_system = full[: full.find(S)] if S in full else None
    parts = [_between(full, S, U1), _between(full, U1, A1), _between(full, A1, U2), _between(full, U2, None)]
    head_plain = plain[: plain.find(U1)] if U1 in plain else None
    # Between a user message and the assistant's reply there may be more than at the end of a prompt (Llama 2's
    # space after [/INST], GLM-4's newline after <|assistant|>): that rest opens each past reply.
    if head_system is None or head_plain is None or None in parts or not parts[1].startswith(parts[3]):
        return None
    strip = (lambda t: t[len(bos_added):] if bos_added and t.startswith(bos_added) else t)
    pieces = TurnPieces(strip(head_system), parts[0], strip(head_plain), parts[3], parts[1][len(parts[3]):],
                        parts[2])
    check = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "你好")]
    for system in ("Be brief.", None):
        expected = template.render_prompt(check, system, None, tokenizer)
        if strip(expected) != pieces.render(system, check):
            return None
    return pieces


def modelfile(gguf_name: str, pieces: TurnPieces | None, stops: list[str], system: str | None,
              temperature: float | None = None) -> str:
    lines = [f"FROM ./{gguf_name}", ""]
    if pieces is not None:
        lines += ['TEMPLATE """' + pieces.go_template() + '"""', ""]
    # Ollama's Modelfile parser takes quoted text literally (no backslash escapes): text with a double quote
    # goes in triple quotes, and text holding triple quotes cannot be written at all.
    if system and '"""' not in system:
        lines += ['SYSTEM """' + system + '"""', ""]
    elif system:
        logger.warning('the default system prompt holds """, which a Modelfile cannot quote; it is left out')
    for stop in stops:
        if '"""' in stop or (stop.endswith('"') and '"' in stop[:-1]):
            logger.warning("stop %r cannot be quoted in a Modelfile; it is left out", stop)
        else:
            lines.append(f'PARAMETER stop """{stop}"""' if '"' in stop else f'PARAMETER stop "{stop}"')
    if temperature is not None:
        lines.append(f"PARAMETER temperature {temperature}")
    return "\n".join(lines).rstrip() + "\n"


def readme(gguf_name: str, name: str, quantization: str, source: str) -> str:
    return f"""# {name}

Exported by `tuneforge export` from {source} as one GGUF file ({quantization}), with the tokenizer and the
chat template used in training inside it.

## llama.cpp

```bash
llama-cli -m {gguf_name} -cnv            # chat, formatted with the embedded chat template
llama-server -m {gguf_name} --jinja      # OpenAI-compatible server on http://127.0.0.1:8080
```

## Ollama

```bash
ollama create {name} -f Modelfile
ollama run {name}
```

The Modelfile sets the prompt format, the stop tokens and the default system prompt of the training template.
"""
