"""Action-constrained decoding of [ACT_ONLY] requests (paper §3.4: candidates from the policy itself).

A small or briefly trained policy does not reliably write the action JSON, so its [ACT_ONLY]
samples would all be parse failures and no DPO pair would come from its own distribution. With
the constraint on, the text of an [ACT_ONLY] completion is forced into the canonical form of
``pricing.parse.format_action``::

    {"discount_change": <number>}      <number> in ACTION_NUMBERS, then EOS

* the scaffold ``{"discount_change":`` is forced as the tokens the tokenizer itself gives it in a
  canonical action (the tokens SFT trained on), probability 1;
* every later token is chosen from the model's own logits restricted to the tokens that keep the
  text a prefix of a member of the (finite) language; temperature, top-k and top-p act after the
  mask, i.e. over the allowed tokens only (transformers runs custom logits processors before its
  warpers). Greedy decoding is the argmax over the allowed tokens;
* once the closing brace is written only EOS is allowed.

The language is ``format_action(a)`` for the actions a of one of two sets (``constrain_act_only``):

* ``action``: every a on the 0.01 grid in (-1, 1) (ACTION_TEXTS: ``-0.05``, ``0.00``, ``0.99``;
  always two decimals, no ``-0.00``). (-1, 1) is where ``parse_action`` reads a number literally
  (|x| >= 1 is ``ambiguous_unit``), and it bounds the completion length. Samples outside
  A_safe(d_{t-1}) are left for the candidates stage to reject and count;
* ``a_safe``: the 0.01 grid inside A_safe(d_{t-1}) (``pricing.action_grid``; d_{t-1} from the
  request's ``state["d_prev"]``): the policy's distribution conditioned on the safe actions. A
  near-random policy (the tiny model after a few SFT steps) puts ~90 % of its samples outside A_safe,
  so ``action`` leaves it almost no valid candidates and no DPO pairs; ``a_safe`` keeps every
  sample a candidate, still ranked by the model's own logits.

Either way a sampled text is the very text SFT trained on and DPO will train on, one per action,
and a sample always ends within ``min_new_tokens``.

Tokenizer-agnostic: each vocabulary entry's text is decoded once, and a token is allowed where
``state + text`` is a prefix of the language; the construction checks that the per-token texts of
every canonical action concatenate to the action (else the tokenizer cannot be constrained this
way and the error says so). The allowed set per state is computed on first use and cached.

vLLM gets the same language as a regex (``action_regex``) for its structured outputs.

Forced decisions (``force_decision``, full reasoning mode): a full answer is "reasoning, then the
action JSON on its last line" (the teacher's format, ``prompts.py``). When a completion holds no
action object (``decision_needed``: the model ran out of its budget mid-thought, or never wrote
the JSON), the backend continues that very completion with ``DECISION_SEPARATOR`` and then the
same constrained action language as above: the decision is still the model's own (its logits,
conditioned on the prompt and on its own reasoning), only its form is fixed. Backends reserve
``1 + min_new_tokens`` of ``max_new_tokens`` for it and report which completions were forced
(``last_forced``), so inference counts them next to parse failures instead of hiding them.
"""

from __future__ import annotations

import re
from functools import lru_cache

import torch

from aigp_train.config import RecipeError
from aigp_train.pricing import action_grid
from aigp_train.pricing.parse import ACTION_DECIMALS, NO_DECISION, format_action, parse_action

__all__ = ["ACTION_NUMBERS", "ACTION_REGEX", "ACTION_TEXTS", "DECISION_SEPARATOR", "ActionConstraint",
           "ActOnlyLogitsProcessor", "action_regex", "action_scaffold", "decision_needed", "request_language"]

# What goes between a full answer's reasoning and a forced decision: the JSON's own line.
DECISION_SEPARATOR = "\n"


def action_scaffold() -> tuple[str, str]:
    """(text before the number, text after it) of the canonical action JSON, from format_action."""
    text = format_action(0.0)
    number = f"{0.0:.{ACTION_DECIMALS}f}"
    cut = text.rindex(number)
    return text[:cut], text[cut + len(number):]


_PREFIX, _SUFFIX = action_scaffold()
_SCALE = 10 ** ACTION_DECIMALS
# The canonical texts themselves: format_action of every action on the 0.01 grid in (-1, 1): +-1.00
# reads as ambiguous_unit (one point or one whole list price?), so the language never writes it.
ACTION_TEXTS = frozenset(format_action(k / _SCALE) for k in range(-_SCALE + 1, _SCALE))
ACTION_NUMBERS = tuple(sorted(t[len(_PREFIX):len(t) - len(_SUFFIX)] for t in ACTION_TEXTS))


def _escape(text: str) -> str:
    """Regex metacharacters escaped, nothing else (re.escape also escapes the space, an escape
    not every structured-output regex engine accepts)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


# The same language for vLLM's structured outputs (tests check it against ACTION_TEXTS): 0.00 .. 0.99
# with or without a minus, except -0.00 (format_action writes 0.00). No lookarounds:
# structured-output engines compile regexes to automata and reject them.
_D = ACTION_DECIMALS
_NONZERO = "|".join("0" * j + "[1-9]" + "[0-9]" * (_D - 1 - j) for j in range(_D))  # D digits, not all 0
ACTION_REGEX = (_escape(_PREFIX) + rf"(?:0\.[0-9]{{{_D}}}|-0\.(?:{_NONZERO}))" + _escape(_SUFFIX))


def request_language(mode: str, state: dict, pricing) -> frozenset[str]:
    """The action texts one [ACT_ONLY] request may produce under ``mode`` (``action`` or ``a_safe``)."""
    if mode == "action":
        return ACTION_TEXTS
    if mode != "a_safe":
        raise RecipeError(f"constrain_act_only must be none, action or a_safe, got {mode!r}.")
    if pricing is None:
        raise RecipeError("constrain_act_only: a_safe needs the recipe's pricing block (pass pricing to make_backend).")
    if "d_prev" not in state:
        raise ValueError("constrain_act_only: a_safe needs d_prev in each [ACT_ONLY] request's state (the prompts' "
                         "state has it); use constrain_act_only: action for requests without one.")

    return frozenset(format_action(a) for a in action_grid(float(state["d_prev"]), pricing, 10.0 ** -ACTION_DECIMALS))


def decision_needed(text: str, state: dict, pricing) -> bool:
    """True when a full-mode completion holds no action object at all (``parse.NO_DECISION``), so a
    forced decision would be its only one; after an unreadable or ambiguous action object a forced
    one would be a second (``several_actions``). ``state["d_prev"]`` is the request's d_{t-1}."""
    if "d_prev" not in state:
        raise ValueError("force_decision needs d_prev in each request's state (the prompts' state has it).")
    return parse_action(text, float(state["d_prev"]), pricing).failure in NO_DECISION


def action_regex(language: frozenset[str]) -> str:
    """vLLM structured-output regex of ``language``: ACTION_REGEX for all of it, else an alternation."""
    if language == ACTION_TEXTS:
        return ACTION_REGEX
    numbers = sorted(t[len(_PREFIX):len(t) - len(_SUFFIX)] for t in language)
    return _escape(_PREFIX) + "(?:" + "|".join(_escape(n) for n in numbers) + ")" + _escape(_SUFFIX)


class ActionConstraint:
    """Token-level automaton of the action languages (subsets of ACTION_TEXTS) for one tokenizer;
    build once per backend."""

    def __init__(self, tokenizer, eos_id: int) -> None:
        self.eos_id = int(eos_id)
        special = set(tokenizer.all_special_ids) | {self.eos_id}
        vocab_size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(vocab_size)], skip_special_tokens=False,
                                       clean_up_tokenization_spaces=False)
        self.token_text = {i: t for i, t in enumerate(texts) if i not in special and t}
        self._by_first: dict[str, list[int]] = {}
        for i, t in self.token_text.items():
            self._by_first.setdefault(t[0], []).append(i)

        encodings = [tokenizer.encode(t, add_special_tokens=False) for t in sorted(ACTION_TEXTS)]
        for text, ids in zip(sorted(ACTION_TEXTS), encodings):
            if "".join(self.token_text.get(i, "\x00") for i in ids) != text:
                raise RecipeError(f"constrain_act_only: the tokenizer's per-token texts of {ids} do not concatenate "
                                  f"to {text!r}, so allowed tokens cannot be read from its vocabulary; set "
                                  f"backend.*.constrain_act_only: none for this tokenizer.")
        # Forced scaffold: the longest token prefix every canonical action shares that stays in the scaffold.
        forced: list[int] = []
        for column in zip(*encodings):
            spelled = "".join(self.token_text[i] for i in forced + [column[0]])
            if len(set(column)) > 1 or not _PREFIX.startswith(spelled):
                break
            forced.append(column[0])
        self.forced = forced
        self.start = "".join(self.token_text[i] for i in forced)
        # Longest path: one character per token after the forced part, then EOS.
        self.min_new_tokens = len(forced) + max(len(t) for t in ACTION_TEXTS) - len(self.start) + 1

    @lru_cache(maxsize=None)
    def _prefixes(self, language: frozenset[str]) -> frozenset[str]:
        return frozenset(t[:k] for t in language for k in range(len(t) + 1))

    @lru_cache(maxsize=None)
    def allowed(self, state: str, language: frozenset[str] = ACTION_TEXTS) -> tuple[int, ...]:
        """Token ids that may follow the text ``state`` (a prefix of a text of ``language``)."""
        if state in language:
            return (self.eos_id,)
        prefixes = self._prefixes(language)
        if state not in prefixes:
            raise ValueError(f"constrained decoding left the action language at {state!r} (a bug, not model output).")
        next_chars = sorted({t[len(state)] for t in language if t.startswith(state) and len(t) > len(state)})
        return tuple(i for ch in next_chars for i in self._by_first.get(ch, ())
                     if state + self.token_text[i] in prefixes)

    def next_allowed(self, generated: list[int], language: frozenset[str] = ACTION_TEXTS) -> tuple[int, ...] | None:
        """Allowed ids after the generated ids of one row; None once the row has ended (EOS)."""
        n = len(self.forced)
        if len(generated) < n:
            if generated != self.forced[:len(generated)]:
                raise ValueError(f"constrained decoding: generated {generated} left the forced scaffold {self.forced}.")
            return (self.forced[len(generated)],)
        state = self.start
        for i in generated[n:]:
            if i == self.eos_id:
                return None
            state += self.token_text[i]
        return self.allowed(state, language)


class ActOnlyLogitsProcessor:
    """Masks the logits of the constrained rows to ``ActionConstraint`` tokens (other rows untouched).

    ``rows`` maps indices into the generate batch (num_return_sequences already expanded) to their
    language; ``prompt_len`` is the padded prompt length (left padding: generation starts there).
    """

    def __init__(self, constraint: ActionConstraint, rows: dict[int, frozenset[str]], prompt_len: int) -> None:
        self.constraint, self.rows, self.prompt_len = constraint, rows, prompt_len
        self._index: dict[tuple[int, ...], torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = scores.clone()
        for row, language in self.rows.items():
            allowed = self.constraint.next_allowed(input_ids[row, self.prompt_len:].tolist(), language)
            if allowed is None:  # finished: generate pads this row from now on
                continue
            if allowed not in self._index:
                self._index[allowed] = torch.tensor(allowed, dtype=torch.long, device=scores.device)
            index = self._index[allowed]
            masked[row] = float("-inf")
            masked[row, index] = scores[row, index]
        return masked
