"""Base (non-instruct) models: how they are prompted, and which cells they cannot have.

A base model has no chat turns, so a card says ``chat_template = "none"`` and its tokenizer is given
``PLAIN_TEMPLATE`` at load time instead of whatever template the checkpoint ships (the hub's base Gemma-3 ships the
instruct template; applying it to a base model would measure a format the model never saw). Every reader of prompts
(extraction, the A/B readout, steering) goes through ``adapter.render``/``encode``, so swapping the template is the
whole change: CAA items read ``<bos>{question}\\n\\nAnswer:\\n(A`` -- the CAA papers' base-model "Answer:" format.
The line break before the letter keeps the boundary between prompt and answer a token boundary for every tokenizer
(Gemma merges ``:(`` into one token), which the A/B readout's separate tokenization of ``(A`` relies on.

Cells that need a chat turn are skipped with the reason instead of measuring nonsense: PV (a system-prompted
persona and its rollouts), Arditi and refusal (the direction is read at, and ablated against, the post-instruction
template tokens), and judged steering (open-ended answers to chat questions, scored by a judge).
"""

from __future__ import annotations

from typing import Any

from quant_harness.models.cards import ModelCard

PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ raise_exception('a base model (card chat_template = none) has no system role') }}"
    "{% elif message['role'] == 'user' %}"
    "{{ message['content'] }}{{ '\\n\\nAnswer:\\n' if (add_generation_prompt or not loop.last) else '' }}"
    "{% else %}{{ message['content'] }}{{ '\\n\\n' if not loop.last else '' }}"
    "{% endif %}{% endfor %}"
)
"""Plain-text prompt of a base model: BOS (where the tokenizer has one), the question, ``Answer:`` on its own line."""

CHAT_KINDS = {"refusal": "refusal cells ablate the Arditi direction read at the post-instruction template tokens",
              "steering": "judged steering cells score open-ended answers to chat questions"}
CHAT_METHODOLOGIES = {"pv": "PV extraction needs a system-prompted persona and chat rollouts",
                      "arditi": "Arditi extraction reads the last post-instruction template token"}


def is_base(card: ModelCard) -> bool:
    """Whether the card names a base model prompted in plain text."""
    return card.chat_template == "none"


def apply_template(card: ModelCard, tokenizer: Any) -> None:
    """Give a base model's tokenizer the plain-text template (replacing any it shipped with); no-op otherwise."""
    if is_base(card):
        tokenizer.chat_template = PLAIN_TEMPLATE


def skip_reason(card: ModelCard, kind: str, methodology: str = "") -> str | None:
    """Why a base model gets no cell of this kind / trait methodology, or None when it does."""
    if not is_base(card):
        return None
    why = CHAT_KINDS.get(kind) or CHAT_METHODOLOGIES.get(methodology)
    if why is None:
        return None
    return (f"{card.name} is a base model (card {card.source_file or card.name}: chat_template = none) and {why}; "
            "cell skipped")
