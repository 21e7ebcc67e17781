"""What a pricing prompt shows its reader (``PromptView``), and the randomness keyed on a request.

Both stand-ins read only this: the structured state fields the prompt renders, and the knowledge-base
and diagnosis sections of its text; never the simulator's hidden state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from aigp_train.llm.prompts import COMPACT_TASK
from aigp_train.llm.state_fields import STATE_FIELDS


def keyed_rng(seed: int, request_id: str, sample: int, stream: str) -> np.random.Generator:
    """A generator keyed on (seed, request, sample, stream): independent of batching and sharding."""
    digest = hashlib.sha256(f"{seed}|{request_id}|{sample}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))



# ---------------------------------------------------------------------------
# What the prompt shows
# ---------------------------------------------------------------------------

# Keys of the request state that the prompt renders besides STATE_FIELDS (the history table,
# the price-sales prediction table with its elasticity, the calendar line). Anything else in
# the state (base_units, has_diagnosis, ...) is bookkeeping the operator never sees.
_SHOWN_EXTRA = ("sku_id", "category", "day_of_week", "is_promotion", "history", "prediction", "elasticity")


def prompt_sections(text: str) -> dict[str, str]:
    """The ``## <heading>`` sections of a pricing prompt's text: lower-cased heading -> body."""
    sections: dict[str, list[str]] = {}
    body: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("## "):
            body = sections.setdefault(line[3:].strip().lower(), [])
        elif body is not None:
            body.append(line)
    return {head: "\n".join(lines) for head, lines in sections.items()}


def section(sections: dict[str, str], prefix: str) -> str | None:
    return next((body for head, body in sections.items() if head.startswith(prefix)), None)


FLAGS_LINE = re.compile(r"^Flags:\s*(?P<flags>.*?)\.?\s*$", re.MULTILINE)


def diagnosis_flags(diagnosis: str | None) -> list[str] | None:
    """The findings on the diagnosis report's ``Flags:`` line ([] for "none"); None without a report."""
    if diagnosis is None:
        return None
    m = FLAGS_LINE.search(diagnosis)
    if m is None:
        return []
    return [f.strip() for f in m.group("flags").split(",") if f.strip() and f.strip().lower() != "none"]


@dataclass(frozen=True)
class PromptView:
    """What a pricing prompt shows its reader, and nothing else: the structured state it renders,
    its knowledge-base entries ([] when the prompt has none: the w/o-KB ablation or a cut) and its
    diagnosis report (None when absent: the w/o-Diag ablation or a budget cut)."""

    state: dict
    kb: list[str]
    diagnosis: str | None
    compact: bool = False  # the prompt's task asks for short steps (prompt.layout compact)

    @property
    def has_kb(self) -> bool:
        # build_prompt sets the benchmark only when the knowledge base is part of the prompt
        return self.state.get("kb_benchmark_price") is not None

    def kb_states(self, phrase: str) -> bool:
        """The prompt's knowledge base states a rule containing ``phrase``."""
        return any(phrase in line.lower() for line in self.kb)


def prompt_view(state: dict, messages: list[dict]) -> PromptView:
    """The view of one prompt: its rendered state fields, and the KB and diagnosis sections read
    from its text (a request without messages shows neither section's text)."""
    shown = {f.key: state.get(f.key) for f in STATE_FIELDS}
    shown.update({k: state[k] for k in _SHOWN_EXTRA if k in state})
    text = "\n".join(str(m["content"]) for m in messages if m.get("role") == "user")
    sections = prompt_sections(text)
    kb, diagnosis = section(sections, "knowledge base"), section(sections, "diagnosis report")
    for name, shown_in_state, found in (("Knowledge base", shown["kb_benchmark_price"] is not None, kb),
                                        ("Diagnosis report", state.get("has_diagnosis"), diagnosis)):
        if text and shown_in_state and found is None:  # a prompt layout the stand-in cannot read
            raise ValueError(f"the prompt's state says it shows the {name.lower()}, but its text has no '## {name}' "
                             f"section: the stand-in teacher reads that heading (see llm/prompts.py build_messages).")
    kb_lines = [line[2:].strip() for line in (kb or "").splitlines() if line.startswith("- ")]
    task = sections.get("task", "")
    return PromptView(shown, kb_lines, diagnosis, compact=task.startswith(COMPACT_TASK))

