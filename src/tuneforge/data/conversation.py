"""The one shape every dataset format is converted into before templating."""

from __future__ import annotations

from dataclasses import dataclass, field

# Roles after normalisation. "function_call" is an assistant turn that calls a tool, "observation" is the
# tool's answer (a user-side turn).
USER, ASSISTANT, FUNCTION, OBSERVATION = "user", "assistant", "function_call", "observation"
PROMPT_ROLES = (USER, OBSERVATION)
RESPONSE_ROLES = (ASSISTANT, FUNCTION)


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Conversation:
    """messages alternate prompt-side (user/observation) and response-side (assistant/function_call) turns,
    starting with a prompt-side turn. For sft the last message is a response. For kto it is too: messages
    end with the completion, and kto_tag says whether that completion is desirable. For pairwise and
    unsupervised rows the last message is a prompt; pairwise candidate responses live in chosen/rejected."""

    messages: list[Message] = field(default_factory=list)
    system: str | None = None
    tools: str | None = None  # JSON text: a list of function schemas
    chosen: Message | None = None
    rejected: Message | None = None
    kto_tag: bool | None = None  # desirable (True) or undesirable (False) completion, kept in messages[-1]
    text: str | None = None  # plain document for stage pt
    source: str = ""  # "dataset_name:row" for error messages
    extra: str | None = None  # prompt rows: JSON of the row's other columns (reward functions read them)

    def to_dict(self) -> dict:
        def msg(m):
            return None if m is None else {"role": m.role, "content": m.content}

        return {
            "messages": [msg(m) for m in self.messages],
            "system": self.system,
            "tools": self.tools,
            "chosen": msg(self.chosen),
            "rejected": msg(self.rejected),
            "kto_tag": self.kto_tag,
            "text": self.text,
            "source": self.source,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Conversation":
        def msg(m):
            return None if m is None else Message(m["role"], m["content"])

        return cls(
            messages=[msg(m) for m in d.get("messages") or []],
            system=d.get("system"),
            tools=d.get("tools"),
            chosen=msg(d.get("chosen")),
            rejected=msg(d.get("rejected")),
            kto_tag=d.get("kto_tag"),
            text=d.get("text"),
            source=d.get("source", ""),
            extra=d.get("extra"),
        )
