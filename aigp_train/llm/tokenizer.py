"""Tokenizers and the ``[ACT_ONLY]`` control token (paper §3.4, decision-only mode).

``load_tokenizer(model_recipe)`` loads the tokenizer from the local folder named by
``model.tokenizer_path`` (no hub at run time: for the real Qwen models point it at the checkpoint
folder; the tiny model's is shipped in ``recipes/models/tiny-tokenizer/``, built by
``scripts/build_tiny_tokenizer.py``).

``[ACT_ONLY]`` is a real special token for every model: one id, never split, never merged with its
neighbours, kept by save/load. The choice (docs/models.md):

* the tiny tokenizer has it built in (id 3), inside the model's vocabulary;
* for a Qwen tokenizer it is *added* as a special token when missing. Its id lands in the spare
  embedding rows Qwen already pads its vocabulary with (151,669 tokens, 151,936 embedding rows), so
  no resize is needed and LoRA adapters stay loadable on the stock checkpoint by transformers and
  vLLM. A model without spare rows is an error here, naming the fix, never a silent resize that
  would leave adapters and base checkpoint with different shapes.
"""

from __future__ import annotations

from typing import Any

from aigp_train.config import RecipeError
from aigp_train.llm.models import resolve_path

__all__ = ["ACT_ONLY", "CHAT_TEMPLATE", "EOS_TOKEN", "IM_START", "PAD_TOKEN", "QWEN_SPLIT_REGEX", "act_only_id",
           "load_tokenizer"]

ACT_ONLY = "[ACT_ONLY]"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"  # end of a chat turn: generation stops here
PAD_TOKEN = "<|endoftext|>"

# Qwen2/Qwen3's pre-tokenizer split (tokenizer.json of the Qwen checkpoints): contractions, letter
# runs, single digits, punctuation runs, newlines, spaces.
QWEN_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                    r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen's ChatML layout. {% generation %} marks assistant content so that
# apply_chat_template(..., return_assistant_tokens_mask=True) gives the SFT loss mask.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def load_tokenizer(model_recipe: Any):
    """The tokenizer of ``model_recipe``, with ``[ACT_ONLY]`` present as one special token."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - transformers (heavy): `aigp prompts` imports this module

    if not model_recipe.tokenizer_path:
        raise RecipeError(f"model.tokenizer_path is empty for {model_recipe.name}: set it to a local folder holding "
                          f"its tokenizer.json (e.g. the checkpoint folder); there is no hub access at run time.")
    path = resolve_path(model_recipe.tokenizer_path)
    if not (path / "tokenizer.json").is_file():
        raise RecipeError(f"model.tokenizer_path {model_recipe.tokenizer_path} of {model_recipe.name} has no "
                          f"tokenizer.json (looked in {path}). Point it at the checkpoint folder.")
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if ACT_ONLY not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [ACT_ONLY]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = PAD_TOKEN if PAD_TOKEN in tok.get_vocab() else tok.eos_token
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    act_only_id(tok, model_recipe)  # checks the embedding has a row for it
    return tok


def act_only_id(tokenizer, model_recipe: Any | None = None) -> int:
    """The id of ``[ACT_ONLY]``; checks it encodes to exactly one token and, given the model recipe,
    that the embedding has a row for it (and for every other token of the tokenizer)."""
    ids = tokenizer.encode(ACT_ONLY, add_special_tokens=False)
    if len(ids) != 1:
        raise RecipeError(f"{ACT_ONLY} encodes to {len(ids)} tokens {ids}; it must be one special token. "
                          f"Rebuild the tokenizer (scripts/build_tiny_tokenizer.py) or load it with load_tokenizer().")
    if model_recipe is not None:
        vocab_rows = int(model_recipe.config["vocab_size"])
        if len(tokenizer) > vocab_rows:
            raise RecipeError(
                f"{model_recipe.name}: the tokenizer has {len(tokenizer)} tokens ({ACT_ONLY} = id {ids[0]}) but the "
                f"embedding has {vocab_rows} rows (model.config.vocab_size). Use a model whose vocabulary is padded "
                f"(Qwen3: 151936 rows) or raise vocab_size and train the new rows; we do not resize silently.")
    return ids[0]
