"""The MLLM branch's checkpoint: its trainable weights (LoRA, Q-Formers, heads) and config.

The LLM itself is never saved: it is reloaded from its own folder. Stage-2 training writes
this next to the planner checkpoint; `dima_mllm_node` and Dual inference read it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...config import to_dict

MLLM_WEIGHTS, MLLM_CONFIG = "mllm.safetensors", "mllm.yaml"


def save_mllm_checkpoint(directory: str | Path, branch: Any) -> Path:
    """Write an MLLMBranch's trainable weights and config into `directory`."""
    import yaml
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in branch.trainable_state_dict().items()}
    save_file(state, str(directory / MLLM_WEIGHTS))
    os.chmod(directory / MLLM_WEIGHTS, 0o644)  # shared and committed like model.safetensors
    (directory / MLLM_CONFIG).write_text(yaml.safe_dump(to_dict(branch.cfg), sort_keys=False))
    return directory
