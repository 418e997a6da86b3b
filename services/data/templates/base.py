"""What a named chat template is: slots of text and special tokens, and the table of templates.

A slot is a tuple of segments; a segment is text (``{content}`` marks where a turn's text goes)
or a ``Special``: the tokenizer's bos or eos token, or a token named by its text. Each segment is
tokenized on its own, as LLaMA-Factory tokenizes each element of its slots: with sentencepiece
vocabularies a text tokenized alone can differ from the same text tokenized after a special
token, so the boundaries are part of the template.

``define`` fills in LLaMA-Factory's defaults (``register_template``): the assistant slot is
``{content}`` + eos (or ``{content}`` alone for an "efficient eos" template), the system slot is
``{content}``, an observation (tool result) reuses the user slot, a function call reuses the
assistant slot with the ``default`` tool format, and a template with ``replace_eos`` ends turns
with its first stop word instead of the tokenizer's eos.

It knows nothing about tokenizers or records (``render`` turns an ``Example`` into segments).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Special:
    """A token inserted by id, never tokenized: ``bos``, ``eos`` or the token spelled ``text``."""

    kind: str  # "bos" | "eos" | "token"
    text: str = ""


BOS = Special("bos")
EOS = Special("eos")


def token(text: str) -> Special:
    return Special("token", text)


Segment = str | Special
Slot = tuple[Segment, ...]

# how a reasoning template treats thinking content: "" (not a reasoning template), "think"
# (LLaMA-Factory's ReasoningTemplate), "think_close" (GLM-4.7: an empty thought is the closing
# tag alone)
REASONING_KINDS = ("", "think", "think_close")


@dataclass(frozen=True)
class Template:
    """One named template (see the module docstring for the slots' defaults)."""

    name: str
    family: str
    user: Slot
    assistant: Slot
    system: Slot
    function: Slot
    observation: Slot
    prefix: Slot = ()
    default_system: str = ""
    stop_words: tuple[str, ...] = ()
    replace_eos: bool = False
    efficient_eos: bool = False
    tool_format: str = "default"
    tools_slot: Slot = ()  # a template whose tool list is a slot, not a tool format (phi4_mini)
    system_in_user: bool = False  # no system role: the system block opens the first user turn
    reasoning: str = ""
    thought_words: tuple[str, str] = ("<think>\n", "\n</think>\n\n")
    tool_call_words: tuple[str, str] = ("<tool_call>", "</tool_call>")
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def eos_text(self) -> str | None:
        """The token that ends turns when the template replaces the tokenizer's eos."""
        return self.stop_words[0] if self.replace_eos and self.stop_words else None

    def empty_thought(self) -> str:
        if self.reasoning == "think_close":
            return self.thought_words[1]
        return self.thought_words[0] + self.thought_words[1]


TEMPLATES: dict[str, Template] = {}


def _slot(value: str | Slot | None) -> Slot | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def define(
    name: str,
    family: str,
    *,
    user: str | Slot | None = None,
    assistant: str | Slot | None = None,
    system: str | Slot | None = None,
    function: str | Slot | None = None,
    observation: str | Slot | None = None,
    prefix: str | Slot = (),
    tool_format: str | None = None,
    efficient_eos: bool = False,
    **options,
) -> Template:
    """Register a template with LLaMA-Factory's defaults for the slots not given."""
    if name in TEMPLATES:
        raise ValueError(f"template {name!r} is defined twice")
    plain = ("{content}",) if efficient_eos else ("{content}", EOS)
    user_slot = _slot(user) or ("{content}",)
    assistant_slot = _slot(assistant) or plain
    template = Template(
        name=name,
        family=family,
        user=user_slot,
        assistant=assistant_slot,
        system=_slot(system) or ("{content}",),
        # LLaMA-Factory: a template that names no function slot calls tools with the default
        # format through its assistant slot
        function=_slot(function) or assistant_slot,
        observation=_slot(observation) or user_slot,
        prefix=_slot(prefix) or (),
        tool_format=tool_format or "default",
        efficient_eos=efficient_eos,
        **options,
    )
    if template.reasoning not in REASONING_KINDS:
        raise ValueError(f"template {name!r}: unknown reasoning kind {template.reasoning!r}")
    TEMPLATES[name] = template
    return template


def fill(slot: Slot, content: str) -> list[Segment]:
    """The slot with ``{content}`` replaced (once per text segment, never inside ``content``)."""
    return [s.replace("{content}", content, 1) if isinstance(s, str) else s for s in slot]
