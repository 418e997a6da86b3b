"""Template + tokenize: ``Example`` -> token ids and unshifted labels (-100 where masked).

Loss mask: every assistant turn (content, tool calls and its end-of-turn token) is trained;
prompts (system, user, tool results) are masked unless ``train_on_prompt``; ``mask_history``
trains only the last kept assistant turn. An efficient-eos template (glm4) has no end-of-turn
token: the row ends with the eos (trained; ``cutoff_len`` keeps room for it) and the first token
of each later prompt is labelled eos when the turn before it is trained (its input id stays the
prompt's). Preference examples train the chosen/rejected turn only, feedback (KTO) examples their
one rated response. Pre-training text is ``bos + text + eos``, all trained, split into
``cutoff_len`` chunks.

Truncation rule (both template kinds; LLaMA-Factory instead shortens prompt and response in
proportion): whole turns are kept from the first while the row fits in ``cutoff_len``; a later
turn that does not fit is dropped with everything after it (the example counts as truncated). If
even the first turn does not fit, its prompt is kept whole and its response is cut to fit
(truncated). If the prompt alone fills ``cutoff_len`` the row cannot be used:
``RowError("too_long_prompt")``. Preference and feedback examples apply the rule to each side;
prompt-only examples longer than ``cutoff_len`` are ``too_long_prompt``.

Named templates render to segments (``templates.render``): each text segment is tokenized on its
own, as LLaMA-Factory tokenizes each element of its slots, and special segments (bos, eos, named
tokens) are inserted by id; the eos is the template's first stop word when it replaces the
tokenizer's (a token the vocabulary lacks is FAILED_PRECONDITION: this service never adds tokens).
All segments of a batch go in one call to the engine ``fast_bpe.select_engine`` picks (tiktoken
where it provably gives the HF tokenizer's ids, else the HF tokenizer). ``Encoder.start`` renders a
batch and hands its segments to a background thread (both engines release the GIL), so the caller
can read and normalise the next batch, or pack the previous one, while this one is tokenized;
``Pending.result`` assembles. The ``tokenizer`` template renders the whole conversation with the
tokenizer's Jinja ``chat_template`` and tokenizes it once with the HF tokenizer, so the ids equal
``apply_chat_template``; assistant spans come from rendering prefixes of the conversation (a
template whose rendering of a prefix is not a prefix of the full rendering is refused).

It knows nothing about files, packing or storage.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import FailedPrecondition
from services.data import templates as tpl
from services.data.fast_bpe import select_engine
from services.data.formats import Example, RowError

IGNORE = -100


@dataclass
class Sequence:
    """One token row: ids, labels, and the text it was tokenized from."""

    ids: list[int]
    labels: list[int]
    text: str = ""
    truncated: bool = False
    name: str = ""


@dataclass
class Encoded:
    """An encoded example: rows (pretrain chunks / one sft row), a pair, a rated response
    (feedback) or a prompt."""

    kind: str
    sequences: list[Sequence] = field(default_factory=list)
    reference: str = ""
    desirable: bool | None = None  # feedback (KTO) examples: the response's rating

    @property
    def truncated(self) -> bool:
        return any(s.truncated for s in self.sequences)


@dataclass(frozen=True)
class EncodeOptions:
    template: str = ""
    cutoff_len: int = 2048
    train_on_prompt: bool = False
    mask_history: bool = False
    default_system: str | None = None
    tool_format: str = ""
    enable_thinking: bool = True
    preserve_thinking: bool = False

    def render_options(self) -> tpl.RenderOptions:
        return tpl.RenderOptions(
            default_system=self.default_system,
            tool_format=self.tool_format,
            enable_thinking=self.enable_thinking,
            preserve_thinking=self.preserve_thinking,
            mask_history=self.mask_history,
        )


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """A forked child has none of the parent's threads: let it start its own pool."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def _tokenizer_pool() -> ThreadPoolExecutor:
    """Threads that run the Rust tokenizer (GIL released) beside the Python stages."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tokenize")
        return _POOL


class Pending:
    """A batch being tokenized in the background; ``result`` waits and assembles it."""

    def __init__(self, future: Future | None, finish: Callable[[Any], list]) -> None:
        self._future = future
        self._finish = finish

    def result(self) -> list[Encoded | RowError]:
        return self._finish(self._future.result() if self._future is not None else None)


class Encoder:
    """Holds a tokenizer and the options; ``encode`` (or ``start``) a batch of examples at a time."""

    def __init__(self, tokenizer: Any, options: EncodeOptions) -> None:
        self.tokenizer = tokenizer
        self.options = options
        tpl.check_tool_format(options.tool_format)
        self._backend = tokenizer.backend_tokenizer
        self.engine = select_engine(tokenizer)  # tiktoken where proven equal, else the backend
        self.template = tpl.get_template(options.template)
        self._bos_id = tokenizer.bos_token_id
        self._eos_id = tokenizer.eos_token_id
        self._eos = tokenizer.eos_token or ""
        if self.template is not None:
            self._check_special_tokens(self.template)

    def _token_id(self, text: str) -> int | None:
        """The id of the token spelled ``text`` in the vocabulary (added tokens included)."""
        found = self._backend.token_to_id(text)
        return found

    def _check_special_tokens(self, t: tpl.Template) -> None:
        """Resolve the template's eos (LLaMA-Factory's ``replace_eos``) and its named tokens."""
        slots = (t.user, t.assistant, t.system, t.function, t.observation, t.prefix)
        specials = {s for slot in slots for s in slot if isinstance(s, tpl.Special)}
        if self.options.tool_format and not t.efficient_eos:  # the override's function slot
            specials.add(tpl.EOS)
        uses_eos = t.efficient_eos or tpl.EOS in specials
        if t.eos_text is not None and uses_eos:
            eos_id = self._token_id(t.eos_text)
            if eos_id is None:
                raise FailedPrecondition(
                    f"template {t.name!r} ends turns with {t.eos_text!r}, which is not in this "
                    "tokenizer's vocabulary (LLaMA-Factory would add it and resize the "
                    "embeddings; the data service never changes a vocabulary): use the model "
                    "this template belongs to, or another template",
                    reason="TEMPLATE_TOKEN_MISSING",
                )
            self._eos_id, self._eos = eos_id, t.eos_text
        if uses_eos and self._eos_id is None:
            raise FailedPrecondition(
                f"template {t.name!r} ends turns with the tokenizer's eos token, and this "
                "tokenizer has none; set eos_token in its tokenizer_config.json",
                reason="NO_EOS_TOKEN",
            )
        for s in specials:
            if s.kind == "token" and self._token_id(s.text) is None:
                raise FailedPrecondition(
                    f"template {t.name!r} needs the token {s.text!r}, which is not in this "
                    "tokenizer's vocabulary",
                    reason="TEMPLATE_TOKEN_MISSING",
                )

    def end_token_ids(self) -> tuple[int, ...]:
        """The ids that end a response under this template and tokenizer (where a reward model
        reads a sequence: ``services.common.scored_position``): the template's end-of-turn token
        (its first stop word when it replaces the eos), its stop words that are one token each,
        and the tokenizer's eos. The tokenizer's Jinja template names none of its own: the eos."""
        ids = {self._eos_id, self.tokenizer.eos_token_id}
        if self.template is not None:
            ids |= {self._token_id(word) for word in self.template.stop_words}
        return tuple(sorted(i for i in ids if i is not None))

    def check_jinja(self) -> None:
        if self.template is None and not getattr(self.tokenizer, "chat_template", None):
            raise FailedPrecondition(
                "the tokenizer has no chat_template; name a template "
                f"({', '.join(tpl.TEMPLATES)}) in tokenization.template.name",
                reason="NO_CHAT_TEMPLATE",
            )

    def encode(self, examples: list[Example]) -> list[Encoded | RowError]:
        return self.start(examples).result()

    def start(self, examples: list[Example]) -> Pending:
        """Render ``examples`` now and tokenize them in the background."""
        if not examples:
            return Pending(None, lambda _: [])
        if examples[0].kind == "pretrain":
            texts = [e.text for e in examples]
            return Pending(
                self._submit(texts),
                lambda ids: [self._pretrain(t, i) for t, i in zip(texts, ids, strict=True)],
            )
        if self.template is None:
            self.check_jinja()
            done = [self._safe(self._jinja, e) for e in examples]
            return Pending(None, lambda _: done)
        plans, pieces = self._plan(examples)
        return Pending(self._submit(pieces), lambda ids: self._assemble_all(plans, ids))

    def _submit(self, texts: list[str]) -> Future:
        return _tokenizer_pool().submit(self._tokenize, texts)

    def _safe(self, fn, example: Example) -> Encoded | RowError:
        try:
            return fn(example)
        except RowError as exc:
            return exc

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.engine.encode_batch(texts)

    def _pretrain(self, text: str, ids: list[int]) -> Encoded:
        full = ([self._bos_id] if self._bos_id is not None else []) + ids
        if self._eos_id is not None:
            full.append(self._eos_id)
        n = self.options.cutoff_len
        chunks = [full[i : i + n] for i in range(0, len(full), n)]
        return Encoded(
            "pretrain", [Sequence(c, list(c), text if len(chunks) == 1 else "") for c in chunks]
        )

    # --- named templates --------------------------------------------------------------------

    def _parts(self, e: Example) -> list[list[tpl.Segment]]:
        """The parts of one example: sft: prompt, response, prompt, response...; preference:
        prompt, chosen, rejected; feedback: prompt, response; prompt: the prompt."""
        t, ro = self.template, self.options.render_options()
        if e.kind == "sft":
            return [part for pair in tpl.render_turns(t, e, ro) for part in pair]
        if e.kind == "preference":
            prompt, chosen = tpl.render_oneturn(t, e, e.chosen, ro)
            _, rejected = tpl.render_oneturn(t, e, e.rejected, ro)
            return [prompt, chosen, rejected]
        if e.kind == "feedback":
            return list(tpl.render_oneturn(t, e, e.response, ro))
        return [tpl.render_oneturn(t, e, None, ro)[0]]

    def _special(self, s: tpl.Special) -> tuple[int, str] | None:
        """(id, text) of a special segment; None for a bos the tokenizer does not have."""
        if s.kind == "bos":
            if self._bos_id is None:
                return None
            return self._bos_id, self.tokenizer.bos_token or ""
        if s.kind == "eos":
            return self._eos_id, self._eos
        return self._token_id(s.text), s.text

    def _plan(self, examples: list[Example]) -> tuple[list, list[str]]:
        """Per example: (example, its parts as lists of text indices / token ids, their texts)
        or (example, RowError); and every text segment to tokenize, in order."""
        plans, pieces = [], []
        for e in examples:
            try:
                parts = self._parts(e)
            except RowError as exc:
                plans.append((e, exc, None))
                continue
            ops, texts = [], []
            for part in parts:
                part_ops, text = [], []
                for seg in part:
                    if isinstance(seg, str):
                        if seg:
                            part_ops.append(("t", len(pieces)))
                            pieces.append(seg)
                            text.append(seg)
                    else:
                        found = self._special(seg)
                        if found is not None:
                            part_ops.append(("i", found[0]))
                            text.append(found[1])
                ops.append(part_ops)
                texts.append("".join(text))
            plans.append((e, ops, texts))
        return plans, pieces

    def _assemble_all(self, plans: list, ids: list[list[int]]) -> list[Encoded | RowError]:
        out: list[Encoded | RowError] = []
        for e, ops, texts in plans:
            if isinstance(ops, RowError):
                out.append(ops)
                continue
            seg = [
                [tok for kind, v in part for tok in (ids[v] if kind == "t" else (v,))]
                for part in ops
            ]
            out.append(
                self._safe(lambda ex, seg=seg, texts=texts: self._assemble(ex, seg, texts), e)
            )
        return out

    def _assemble(self, e: Example, seg: list[list[int]], texts: list[str]) -> Encoded:
        o = self.options
        if e.kind == "sft":
            turns = [(seg[i], seg[i + 1]) for i in range(0, len(seg), 2)]
            return Encoded("sft", [self._turns(turns, "".join(texts))])
        prompt = seg[0]
        if e.kind == "prompt":
            if len(prompt) > o.cutoff_len:
                raise RowError("too_long_prompt", "", f"the prompt has {len(prompt)} tokens")
            return Encoded(
                "prompt", [Sequence(prompt, [IGNORE] * len(prompt), texts[0])], e.reference
            )
        names = ("chosen", "rejected") if e.kind == "preference" else ("",)
        seqs = []
        for name, response, text in zip(names, seg[1:], texts[1:], strict=True):
            s = self._turns([(prompt, response)], texts[0] + text, train_prompt=False)
            s.name = name
            seqs.append(s)
        return Encoded(e.kind, seqs, desirable=e.desirable)

    def _turns(
        self, turns: list[tuple[list[int], list[int]]], text: str, train_prompt=None
    ) -> Sequence:
        o = self.options
        train_prompt = o.train_on_prompt if train_prompt is None else train_prompt
        efficient_eos = self.template.efficient_eos
        budget, kept, truncated = o.cutoff_len - efficient_eos, [], False
        for prompt, response in turns:
            if len(prompt) + len(response) <= budget:
                kept.append((prompt, response))
                budget -= len(prompt) + len(response)
                continue
            truncated = True
            if not kept:
                if len(prompt) >= budget:
                    raise RowError("too_long_prompt", "", f"the prompt has {len(prompt)} tokens")
                kept.append((prompt, response[: budget - len(prompt)]))
            break
        ids: list[int] = []
        labels: list[int] = []
        last = len(kept) - 1
        for i, (prompt, response) in enumerate(kept):
            ids += prompt
            if train_prompt:
                labels += prompt
            elif efficient_eos and i > 0 and not o.mask_history:  # the previous turn's end
                labels += [self._eos_id] + [IGNORE] * (len(prompt) - 1)
            else:
                labels += [IGNORE] * len(prompt)
            ids += response
            trained = not o.mask_history or i == last
            labels += response if trained else [IGNORE] * len(response)
        if efficient_eos:  # the last turn's end
            ids.append(self._eos_id)
            labels.append(self._eos_id)
            text += self._eos
        return Sequence(ids, labels, text, truncated)

    # --- the tokenizer's Jinja template ---------------------------------------------------

    def _render(self, messages: list[dict], tools: list[dict], generation: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tools=tools or None, tokenize=False, add_generation_prompt=generation
            )
        except Exception as exc:  # jinja2 TemplateError and raise_exception() in templates
            raise RowError("template_error", "", f"the chat template refused it: {exc}") from None

    def _jinja(self, e: Example) -> Encoded:
        msgs = tpl.jinja_messages(e, self.options.default_system)
        if e.kind == "prompt":
            text = self._render(msgs, e.tools, generation=True)
            ids = self._backend.encode(text, add_special_tokens=False).ids
            if len(ids) > self.options.cutoff_len:
                raise RowError("too_long_prompt", "", f"the prompt has {len(ids)} tokens")
            return Encoded("prompt", [Sequence(ids, [IGNORE] * len(ids), text)], e.reference)
        if e.kind in ("preference", "feedback"):
            seqs = []
            responses = (
                (("chosen", e.chosen), ("rejected", e.rejected))
                if e.kind == "preference"
                else (("", e.response),)
            )
            for name, m in responses:
                s = self._jinja_sequence([*msgs, tpl.jinja_message(m)], e.tools, only_last=True)
                s.name = name
                seqs.append(s)
            return Encoded(e.kind, seqs, desirable=e.desirable)
        return Encoded("sft", [self._jinja_sequence(msgs, e.tools)])

    def _jinja_sequence(
        self, msgs: list[dict], tools: list[dict], only_last: bool = False
    ) -> Sequence:
        o = self.options
        text = self._render(msgs, tools)
        spans = []  # (start, end) characters of each assistant turn
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            before = self._render(msgs[:i], tools, generation=True)
            upto = self._render(msgs[: i + 1], tools)
            if not (text.startswith(before) and text.startswith(upto) and len(upto) >= len(before)):
                raise FailedPrecondition(
                    "the tokenizer's chat_template does not render a conversation's prefix as a "
                    "prefix of the whole; use a named template",
                    reason="TEMPLATE_NOT_INCREMENTAL",
                )
            end = len(upto.rstrip())
            spans.append((len(before), max(end, len(before))))
        enc = self._backend.encode(text, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
        turn_tokens = [_token_range(offsets, s, e) for s, e in spans]
        if only_last:
            turn_tokens = turn_tokens[-1:]
        # whole turns while they fit, else cut the first turn's response
        keep, truncated = len(ids), False
        if len(ids) > o.cutoff_len:
            truncated = True
            fitting = [end for _, end in turn_tokens if end <= o.cutoff_len]
            if fitting and not only_last:
                keep = fitting[-1]
                turn_tokens = [t for t in turn_tokens if t[1] <= keep]
            else:
                first_start = turn_tokens[0][0] if turn_tokens else len(ids)
                if first_start >= o.cutoff_len:
                    raise RowError("too_long_prompt", "", f"the prompt has {first_start} tokens")
                keep = o.cutoff_len
                turn_tokens = [(turn_tokens[0][0], min(turn_tokens[0][1], keep))]
        ids = ids[:keep]
        labels = list(ids) if o.train_on_prompt and not only_last else [IGNORE] * len(ids)
        chosen = turn_tokens[-1:] if o.mask_history else turn_tokens
        for start, end in chosen:
            labels[start:end] = ids[start:end]
        if o.mask_history and o.train_on_prompt:
            for start, end in turn_tokens[:-1]:
                labels[start:end] = [IGNORE] * (end - start)
        return Sequence(ids, labels, text, truncated)


def _token_range(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """First and one-past-last token whose characters overlap [start, end)."""
    first = last = None
    for j, (a, b) in enumerate(offsets):
        if b > a and a < end and b > start:
            if first is None:
                first = j
            last = j + 1
        elif a >= end:
            break
    if first is None:
        return (0, 0)
    return (first, last)


def trained_spans(labels: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of positions whose label is not IGNORE."""
    spans, start = [], None
    for i, label in enumerate(labels):
        if label != IGNORE and start is None:
            start = i
        elif label == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(labels)))
    return spans
