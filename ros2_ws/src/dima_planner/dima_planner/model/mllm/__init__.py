"""The MLLM branch of DiMA: Q-Formers over BEAM tokens, a LoRA-tuned LLM, driving QA,
surrogate tasks and distillation into the vision planner."""
from .batch import EditBatch, MLLMTargets, QABatch
from .branch import MLLMBranch
from .config import BUILTIN_SMOLLM2, MLLMConfig
from .llm import LLMNotFoundError, load_llm, resolve_llm_path
from .losses import distillation_loss
from .qformer import BEAMQFormers, QFormer

__all__ = [
    "MLLMBranch", "MLLMConfig", "QABatch", "EditBatch", "MLLMTargets", "BUILTIN_SMOLLM2",
    "LLMNotFoundError", "load_llm", "resolve_llm_path", "distillation_loss", "QFormer", "BEAMQFormers",
]
