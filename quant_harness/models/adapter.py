"""What extraction, steering, ablation, the A/B readout and SAE encoding need to know about one model, in one place.

The seven study models differ in ways that silently break a measurement written for one of them
(``../shared/data/model_twins/README.md``):

- **Chat templates.** Gemma-2 rejects a system role, Mistral's Dec-2023 template rejects anything but alternating
  user/assistant turns; Gemma-3 and Mistral's current template fold the system text into the first user turn
  themselves. ``render`` folds the system prompt into the first user turn (``"{system}\\n\\n{user}"``, what Gemma-3
  and Mistral do) wherever the template rejects it or drops its text, and says which mode it used. Qwen2.5 injects its
  own default system prompt when none is given and Llama-3 always writes a dated system header: ``render`` reports
  that text as ``implicit_system``, apart from the caller's own system text.
- **Answer tokens.** ``"(A"`` is one token for Llama-3, Qwen2.5 and OLMo-2, ``"(", "A"`` for Gemma and
  ``"▁(", "A"`` for Mistral. ``answer_plan`` spells each answer with the tokenizer (tokenized apart from the prompt,
  as ``encode`` tokenizes a response) and splits off the tokens the answers share.
- **BOS.** Gemma, Llama and Mistral tokenizers add a BOS to plain text, Qwen and OLMo add none (OLMo's template writes
  its own). ``text_ids`` reads raw text as the tokenizer's own convention does.
- **Norm placement.** Gemma-2/3 and OLMo-2 normalise the attention and MLP outputs before adding them to the residual
  stream ("post-norms"); Llama, Qwen and Mistral have a module *named* ``post_attention_layernorm`` that is their
  pre-MLP norm. ``block_structure`` finds out from one forward pass of block 0 which child module writes each
  sublayer's contribution to the residual stream (the last module of each chain of children), never from names.
- **Decoder blocks** are found by steering-vectors' layer matcher (through bnb/GPTQ wrappers and Gemma-3's
  multimodal ``model.language_model.layers``).

Logit soft-capping (Gemma-2) and the embedding scale (Gemma) are applied inside the HF forward: every readout here
reads the model's own logits or block outputs and never recomputes logits from hidden states.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quant_harness.errors import CellError

if TYPE_CHECKING:
    import torch

SYSTEM_NONE = "none"
"""The prompt has no system message."""
SYSTEM_NATIVE = "native"
"""The template took the system message, and its text is in the render."""
SYSTEM_FOLDED = "folded"
"""The template rejects a system role (or drops its text): it was folded into the first user turn by us."""
FOLD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Rendered:
    """A prompt as the model sees it, with how its system message was handled."""

    text: str
    """Chat template with the generation header, then the prefill."""
    system: str
    """``none``, ``native`` or ``folded``."""
    implicit_system: str
    """Natural-language text the template put before the first user turn that the caller did not write (Qwen's default
    system prompt, Llama-3's dated header); "" when none. Never the caller's system text."""
    fold_reason: str = ""
    """Why the system message was folded (the template's error, or that it dropped the text)."""


def _messages(prompt: Any) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in prompt.messages]


def fold_system(messages: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The system messages' text prepended to the first user turn (``system\\n\\nuser``), and no system message."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    users = [i for i, m in enumerate(rest) if m["role"] == "user"]
    text = FOLD_SEPARATOR.join(system)
    if not users:
        return [{"role": "user", "content": text}, *rest]
    rest[users[0]]["content"] = text + FOLD_SEPARATOR + rest[users[0]]["content"]
    return rest


def _apply(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


_TAG = re.compile(r"<\|?/?[A-Za-z_]+\|?>|\[/?INST\]|<<?/?SYS>>?")
_ROLE_LINE = re.compile(r"^\s*(system|user|assistant|model)\s*$", re.MULTILINE)


_SPECIALS: dict[int, tuple[Any, re.Pattern[str] | None]] = {}


def _specials(tokenizer: Any) -> re.Pattern[str] | None:
    """One pattern matching the tokenizer's special and added tokens (longest first), built once per tokenizer."""
    held = _SPECIALS.get(id(tokenizer))
    if held is None or held[0] is not tokenizer:
        tokens = {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
        tokens |= {str(t) for t in getattr(tokenizer, "get_added_vocab", dict)()}
        ordered = sorted((t for t in tokens if t), key=len, reverse=True)
        held = (tokenizer, re.compile("|".join(map(re.escape, ordered))) if ordered else None)
        _SPECIALS[id(tokenizer)] = held
    return held[1]


def _strip_markup(tokenizer: Any, text: str) -> str:
    """``text`` without special tokens, role tags (``<|user|>``, ``[INST]``) and lines that only name a role."""
    if not text.strip():
        return ""
    pattern = _specials(tokenizer)
    if pattern is not None:
        text = pattern.sub("\n", text)
    text = _TAG.sub("\n", text)
    text = _ROLE_LINE.sub("", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def implicit_system(tokenizer: Any, text: str, messages: Sequence[dict[str, str]]) -> str:
    """Natural-language text in ``text`` before the first user turn's content that no message wrote."""
    first_user = next((m["content"] for m in messages if m["role"] == "user"), None)
    cut = text.find(first_user) if first_user else -1
    head = text[:cut] if cut >= 0 else text
    for m in messages:
        if m["role"] == "system" and m["content"]:
            head = head.replace(m["content"], "\n")
    return _strip_markup(tokenizer, head)


def render(tokenizer: Any, prompt: Any) -> Rendered:
    """``prompt`` (``.messages`` of (role, content), ``.prefill``) through the tokenizer's chat template.

    A system message is kept where the template takes it and writes its text; where the template raises (Gemma-2's
    "System role not supported", Mistral 2023's "Conversation roles must alternate") or drops the text, it is folded
    into the first user turn instead. Any other template error is raised.
    """
    from jinja2.exceptions import TemplateError

    messages = _messages(prompt)
    system = [m["content"] for m in messages if m["role"] == "system"]
    mode, reason = SYSTEM_NONE, ""
    if system:
        try:
            text = _apply(tokenizer, messages)
            if all(s in text for s in system):
                mode = SYSTEM_NATIVE
            else:
                reason = "the template dropped the system text"
        except TemplateError as e:
            reason = f"the template rejects a system role: {e}"
        if mode != SYSTEM_NATIVE:
            messages = fold_system(messages)
            mode = SYSTEM_FOLDED
            text = _apply(tokenizer, messages)
    else:
        text = _apply(tokenizer, messages)
    return Rendered(text + prompt.prefill, mode, implicit_system(tokenizer, text, messages), reason)


def render_info(tokenizer: Any, prompts: Sequence[Any]) -> dict[str, Any]:
    """What a record says about how a set of prompts was rendered: system modes, implicit system texts, fold reasons
    (from the distinct conversation shapes among the first prompts; a template treats every prompt of a shape alike)."""
    seen = [render(tokenizer, p) for p in prompts[:8]]
    out: dict[str, Any] = {"system": sorted({r.system for r in seen}),
                           "implicit_system": sorted({r.implicit_system for r in seen if r.implicit_system})}
    reasons = sorted({r.fold_reason for r in seen if r.fold_reason})
    if reasons:
        out["fold_reason"] = reasons
    return out


def encode(tokenizer: Any, prompt: Any, response: str = "") -> tuple[list[int], int]:
    """Token ids of the rendered prompt (+ response) and the prompt's length; the two are tokenized apart so the
    boundary holds. The template writes any BOS itself, so none is added."""
    ids = list(tokenizer(render(tokenizer, prompt).text, add_special_tokens=False).input_ids)
    n_prompt = len(ids)
    if response:
        ids += list(tokenizer(response, add_special_tokens=False).input_ids)
    return ids, n_prompt


# --- answers --------------------------------------------------------------------------------------------------------


def answer_ids(tokenizer: Any, answer: str) -> list[int]:
    """The tokens of ``answer`` as a continuation (tokenized apart from the prompt, no special tokens)."""
    return [int(i) for i in tokenizer(answer, add_special_tokens=False).input_ids]


@dataclass(frozen=True)
class AnswerPlan:
    """How to score answers (e.g. ``"(A"``/``"(B"``) as continuations: the tokens they share, then each one's own."""

    shared: tuple[int, ...]
    """Leading tokens every answer starts with (Gemma ``(``, Mistral ``▁(``, SmolLM2 ``(``; none for Llama-3)."""
    tails: dict[str, tuple[int, ...]]
    """Per answer, its tokens after ``shared`` (Llama-3 ``(A``; Gemma ``A``)."""

    @property
    def single_token(self) -> bool:
        """Every answer differs from the others in exactly one token: one forward pass scores them all."""
        return all(len(t) == 1 for t in self.tails.values())


def answer_plan(tokenizer: Any, answers: Sequence[str]) -> AnswerPlan:
    """Tokens of each answer, split into the prefix they share and their own tails; answers that tokenize the same
    (or one a prefix of another) cannot be told apart, which is an error."""
    ids = {a: answer_ids(tokenizer, a) for a in answers}
    n = 0
    first = ids[answers[0]]
    while n < len(first) and all(len(v) > n and v[n] == first[n] for v in ids.values()):
        n += 1
    tails = {a: tuple(v[n:]) for a, v in ids.items()}
    if any(not t for t in tails.values()) or len(set(tails.values())) < len(tails):
        raise CellError(f"the tokenizer spells the answers {dict(ids)}: they cannot be told apart as continuations")
    return AnswerPlan(tuple(first[:n]), tails)


# --- raw text -------------------------------------------------------------------------------------------------------


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front of plain text (Gemma, Llama, Mistral: yes; Qwen, OLMo: no)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_specials = list(tokenizer("a", add_special_tokens=True).input_ids)
    return bool(with_specials) and with_specials[0] == bos


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Raw text (no chat template) as the model reads it: a BOS first where the tokenizer adds one, no EOS."""
    ids = [int(i) for i in tokenizer(text, add_special_tokens=False).input_ids]
    return [int(tokenizer.bos_token_id), *ids] if adds_bos(tokenizer) else ids


# --- blocks ---------------------------------------------------------------------------------------------------------


def decoder_blocks(model: Any) -> list[torch.nn.Module]:
    """The model's decoder blocks, found by steering-vectors' layer matcher (works through bnb/GPTQ wrappers)."""
    from steering_vectors import guess_and_enhance_layer_config
    from steering_vectors.layer_matching import collect_matching_layers

    config = guess_and_enhance_layer_config(model, layer_type="decoder_block")
    names = collect_matching_layers(model, config["decoder_block"])
    modules = dict(model.named_modules())
    return [modules[n] for n in names]


@dataclass(frozen=True)
class BlockStructure:
    """How a decoder block writes to the residual stream, found from what it computes (names are only labels)."""

    writers: tuple[str, ...]
    """Children whose output no other child reads: what the block adds to its residual stream (Llama: ``self_attn``,
    ``mlp``; Gemma-2/3, OLMo-2: ``post_attention_layernorm``, ``post_feedforward_layernorm``)."""
    post_norms: tuple[tuple[str, str], ...]
    """(norm, sublayer) where a parameter-light child reads a sublayer's output directly: a post-sublayer norm."""
    reads_input: tuple[str, ...]
    """Children that read the block's input directly (pre-norms; OLMo-2's ``self_attn``)."""

    @property
    def post_norm(self) -> bool:
        return bool(self.post_norms)

    def describe(self) -> str:
        if not self.post_norms:
            return "pre-norm blocks: " + ", ".join(self.writers) + " write to the residual stream"
        pairs = ", ".join(f"{n} <- {s}" for n, s in self.post_norms)
        return f"post-sublayer norms ({pairs}): " + ", ".join(self.writers) + " write to the residual stream"


class _Stop(Exception):
    pass


_STRUCTURES: weakref.WeakKeyDictionary[Any, BlockStructure] = weakref.WeakKeyDictionary()


def _first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    import torch

    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    return next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)


def _is_norm_like(module: Any) -> bool:
    """A module whose parameters are all vectors (a norm's weight/bias), none a matrix: it mixes no dimensions."""
    params = list(module.parameters())
    return bool(params) and all(p.ndim <= 1 for p in params)


def block_structure(model: Any) -> BlockStructure:
    """Which children of block 0 read which tensors, from one forward pass on two tokens stopped after block 0.

    A child whose output tensor is the very tensor another child reads feeds that child; children whose output no
    child reads are what the block writes to its residual stream. Cached per model object.
    """
    import torch

    if model in _STRUCTURES:
        return _STRUCTURES[model]
    block = decoder_blocks(model)[0]
    children = dict(block.named_children())
    seen_in: dict[str, Any] = {}
    seen_out: dict[str, Any] = {}
    block_in: list[Any] = []
    handles = []

    def child_hook(name: str) -> Any:
        def fn(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            seen_in[name] = _first_tensor(args, kwargs)
            seen_out[name] = output[0] if isinstance(output, tuple) else output
        return fn

    def block_pre(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        block_in.append(_first_tensor(args, kwargs))

    def block_post(*_: Any) -> None:
        raise _Stop

    # the tensors themselves are held (not their ids), so identity is never confused by a freed tensor's reused id
    for name, child in children.items():
        handles.append(child.register_forward_hook(child_hook(name), with_kwargs=True))
    handles.append(block.register_forward_pre_hook(block_pre, with_kwargs=True))
    handles.append(block.register_forward_hook(block_post))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            getattr(model, "base_model", model)(input_ids=torch.tensor([[1, 2]], device=device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    ran = [n for n in children if n in seen_out]

    def readers(t: Any) -> list[str]:
        return [c for c in ran if seen_in.get(c) is not None and seen_in[c] is t]

    writers = tuple(n for n in ran if not readers(seen_out[n]))
    post = tuple((c, n) for n in ran if not _is_norm_like(children[n])
                 for c in readers(seen_out[n]) if _is_norm_like(children[c]))
    reads_input = tuple(readers(block_in[0])) if block_in else ()
    if not writers:
        raise CellError("block 0's children all feed one another: cannot tell what it writes to the residual stream")
    _STRUCTURES[model] = BlockStructure(writers, post, reads_input)
    return _STRUCTURES[model]


class ModelAdapter:
    """One loaded model and its tokenizer, with the facts above bound to them."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def render(self, prompt: Any) -> Rendered:
        return render(self.tokenizer, prompt)

    def encode(self, prompt: Any, response: str = "") -> tuple[list[int], int]:
        return encode(self.tokenizer, prompt, response)

    def answer_plan(self, answers: Sequence[str]) -> AnswerPlan:
        return answer_plan(self.tokenizer, answers)

    def text_ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    @property
    def adds_bos(self) -> bool:
        return adds_bos(self.tokenizer)

    def blocks(self) -> list[torch.nn.Module]:
        return decoder_blocks(self.model)

    def structure(self) -> BlockStructure:
        return block_structure(self.model)
