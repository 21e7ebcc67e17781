"""Triton kernels (imported as ``aigp_kernels``). Each file holds a kernel and its eager reference.

Triton is optional: on a machine without it, callers use the eager references.
On CPU the kernels run under ``TRITON_INTERPRET=1`` (tests do this).
"""
