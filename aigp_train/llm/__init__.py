"""The LLM side: model recipes and construction (``models``), the tokenizer and the
``[ACT_ONLY]`` control token (``tokenizer``), generation backends (``backends``), the sharded
resumable generation runner (``generation``), and ``aigp recipe check`` (``recipe_check``).

Submodules are imported on use; this package import is cheap.
"""
