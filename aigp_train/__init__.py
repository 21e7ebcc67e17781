"""aigp-train: train and run AIGP, an LLM pricing policy aligned to long-term value (KDD 2026)."""

__version__ = "0.1.0"
