"""A conversation through a named template: ``Example`` -> segments per message, LLaMA-Factory's way.

The conversation is first put in LLaMA-Factory's roles: user, assistant, function (an assistant
turn that calls tools: its text, then the calls in the tool format) and observation (tool
results; consecutive results are joined as LLaMA-Factory's OpenAI reader joins them). Each message
becomes the segments of its slot; the first also carries the prefix and the system block (the
system prompt followed directly by the tool text), or, for templates without a system role, the
system block opens the first user turn. Then:

* ``render_turns`` (SFT) pairs each prompt message with its response, as ``encode_multiturn``;
* ``render_oneturn`` (preference, feedback, prompt) returns everything before the last message as
  one prompt and the last as the response, as ``encode_oneturn``.

Reasoning templates follow LLaMA-Factory's ``ReasoningTemplate``: with ``enable_thinking`` off the
thoughts are removed from every turn and an empty thought closes the prompt (untrained); with it
on, a turn without a thought gets an empty one at the start of its response (trained). In SFT,
history thoughts are kept unless ``mask_history`` (and not ``preserve_thinking``) drops them; in
one-turn examples they are dropped unless ``preserve_thinking``.

One deliberate difference: an example whose tool list is empty gets no system block of its own
(LLaMA-Factory writes an empty one when the record's ``tools`` column holds ``[]``).

It knows nothing about tokenizers (a ``Special`` stays a marker; ``encode.py`` resolves it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from services.data.formats import Example, Message, ToolCall
from services.data.templates.base import EOS, Segment, Template, fill
from services.data.templates.tools import calls_text, tools_text

# how LLaMA-Factory's OpenAI reader joins consecutive tool results into one observation
TOOL_RESULTS_JOINER = "\n</tool_response>\n<tool_response>\n"


@dataclass(frozen=True)
class RenderOptions:
    default_system: str | None = None  # replaces the template's default system prompt
    tool_format: str = ""  # replaces the template's tool format
    enable_thinking: bool = True
    preserve_thinking: bool = False
    mask_history: bool = False


@dataclass
class _Msg:
    role: str  # user | assistant | function | observation
    content: str
    calls: list[ToolCall] = field(default_factory=list)


def conversation(messages: list[Message]) -> list[_Msg]:
    """Messages in LLaMA-Factory's roles (tool results merged, tool-calling turns as functions)."""
    out: list[_Msg] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.role == "tool":
            results = []
            while i < len(messages) and messages[i].role == "tool":
                results.append(messages[i].content)
                i += 1
            out.append(_Msg("observation", TOOL_RESULTS_JOINER.join(results)))
            continue
        if m.role == "assistant" and m.tool_calls:
            out.append(_Msg("function", m.content, list(m.tool_calls)))
        else:
            out.append(_Msg(m.role, m.content))
        i += 1
    return out


class _Renderer:
    def __init__(self, t: Template, example: Example, opts: RenderOptions) -> None:
        self.t = t
        self.opts = opts
        if opts.tool_format:  # LLaMA-Factory's tool_format: plain function slot, that format
            self.fmt = opts.tool_format
            self.function = ("{content}",) if t.efficient_eos else ("{content}", EOS)
        else:
            self.fmt = t.tool_format
            self.function = t.function
        base = opts.default_system if opts.default_system is not None else t.default_system
        self.system = example.system or base
        if not example.tools:
            self.tool_text = ""
        elif t.tools_slot:  # LLaMA-Factory writes the record's raw tools text here; the
            # record's tools are parsed by now, so they are written back as compact JSON
            raw = json.dumps(example.tools, ensure_ascii=False)
            self.tool_text = str(fill(t.tools_slot, raw)[0])
        else:
            self.tool_text = tools_text(self.fmt, example.tools)

    def encode(self, msgs: list[_Msg]) -> list[list[Segment]]:
        t = self.t
        out = []
        for i, m in enumerate(msgs):
            segs: list[Segment] = []
            opening = ""
            if i == 0:
                segs += t.prefix
                if self.system or self.tool_text:
                    block = fill(t.system, self.system + self.tool_text)
                    if t.system_in_user:
                        opening = str(block[0])
                    else:
                        segs += block
            if m.role == "user":
                segs += fill(t.user, opening + m.content)
            elif m.role == "assistant":
                segs += fill(t.assistant, m.content)
            elif m.role == "observation":
                segs += fill(t.observation, m.content)
            else:
                segs += fill(self.function, m.content + calls_text(self.fmt, m.calls))
            out.append(segs)
        return out

    # --- thinking ---------------------------------------------------------------------------

    def has_thought(self, m: _Msg) -> bool:
        text = m.content + "".join(c.arguments for c in m.calls)
        start, end = (w.strip() for w in self.t.thought_words)
        return start in text or end in text

    def drop_thought(self, m: _Msg) -> None:
        start, end = (re.escape(w) for w in self.t.thought_words)
        m.content = re.sub(f"{start}(.*?){end}", "", m.content, flags=re.S).lstrip("\n")


def render_turns(t: Template, example: Example, opts: RenderOptions) -> list[tuple[list, list]]:
    """(prompt segments, response segments) of every assistant turn of an SFT conversation."""
    r = _Renderer(t, example, opts)
    msgs = conversation(example.messages)
    discard_history = t.reasoning and opts.mask_history and not opts.preserve_thinking
    if t.reasoning:
        if not opts.enable_thinking:
            for m in msgs[1::2]:
                r.drop_thought(m)
        if discard_history:
            for m in msgs[1:-2:2]:
                r.drop_thought(m)
    encoded = r.encode(msgs)
    pairs = [(encoded[i], encoded[i + 1]) for i in range(0, len(encoded) - 1, 2)]
    if t.reasoning:
        indices = [len(pairs) - 1] if discard_history else range(len(pairs))
        for k in indices:
            if not r.has_thought(msgs[2 * k + 1]):
                _add_empty_thought(t, pairs[k], opts.enable_thinking)
    return pairs


def render_oneturn(
    t: Template, example: Example, response: Message | None, opts: RenderOptions
) -> tuple[list[Segment], list[Segment]]:
    """(prompt, response) of a one-turn example: the history and the last user or tool turn as
    the prompt, ``response`` (an empty assistant turn when None) as the response."""
    r = _Renderer(t, example, opts)
    last = Message("assistant", "") if response is None else response
    msgs = conversation([*example.messages, last])
    if t.reasoning:
        if not opts.preserve_thinking:
            for m in msgs[1:-2:2]:
                r.drop_thought(m)
        if not opts.enable_thinking:
            r.drop_thought(msgs[-1])
    encoded = r.encode(msgs)
    pair = ([s for segs in encoded[:-1] for s in segs], encoded[-1])
    if t.reasoning and not r.has_thought(msgs[-1]):
        _add_empty_thought(t, pair, opts.enable_thinking)
    return pair


def _add_empty_thought(t: Template, pair: tuple[list, list], enable_thinking: bool) -> None:
    """An empty thought: untrained at the end of the prompt, or trained at the response's start."""
    prompt, response = pair
    if enable_thinking:
        response.insert(0, t.empty_thought())
    else:
        prompt.append(t.empty_thought())


# --- the tokenizer's own Jinja template ---------------------------------------------------------


def jinja_messages(example: Example, default_system: str | None) -> list[dict]:
    """OpenAI-style messages for ``apply_chat_template`` (system first when there is one)."""
    out: list[dict] = []
    system = example.system if example.system is not None else default_system
    if system:
        out.append({"role": "system", "content": system})
    out += [jinja_message(m) for m in example.messages]
    return out


def jinja_message(m: Message) -> dict:
    item: dict = {"role": m.role, "content": m.content}
    if m.tool_calls:
        item["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
            for c in m.tool_calls
        ]
    return item
