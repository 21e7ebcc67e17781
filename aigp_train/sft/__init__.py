"""Supervised fine-tuning (paper §3.2): data packing, the loss module, the loop, adapter export."""
