"""Generation backends behind one interface (see ``base``): hf, vllm, scripted stand-in.

Only ``base`` and ``factory`` are imported here; each backend module is imported when
``make_backend`` builds it, so importing this package never pulls transformers weights code or vllm.
"""

from aigp_train.llm.backends.base import (
    Backend,
    BackendConfig,
    GenerationRequest,
    HFBackendConfig,
    SamplingConfig,
    VLLMBackendConfig,
)
from aigp_train.llm.backends.factory import make_backend

__all__ = ["Backend", "BackendConfig", "GenerationRequest", "HFBackendConfig", "SamplingConfig",
           "VLLMBackendConfig", "make_backend"]
