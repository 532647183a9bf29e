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


class MLLMCheckpointError(ValueError):
    """An MLLM checkpoint directory cannot be used (the message names the file and why)."""


def read_mllm_config(directory: str | Path):
    """The MLLMConfig of an MLLM checkpoint, after checking that both its files are there."""
    from ...config import ConfigError, load_yaml
    from .config import MLLMConfig

    directory = Path(directory).expanduser()
    missing = [name for name in (MLLM_CONFIG, MLLM_WEIGHTS) if not (directory / name).is_file()]
    if missing:
        why = f"has no {missing[0]}" if directory.is_dir() else "is not a directory"
        raise MLLMCheckpointError(f"MLLM checkpoint {str(directory)!r} {why}")
    try:
        return load_yaml(MLLMConfig, directory / MLLM_CONFIG)
    except (ConfigError, OSError, ValueError) as e:
        raise MLLMCheckpointError(f"MLLM checkpoint config {directory / MLLM_CONFIG} is invalid: {e}") from None


def load_mllm_weights(branch: Any, directory: str | Path) -> None:
    """Load an MLLM checkpoint's trainable weights into `branch` (MLLMBranch)."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser() / MLLM_WEIGHTS
    if not path.is_file():
        raise MLLMCheckpointError(f"MLLM checkpoint {str(path.parent)!r} has no {MLLM_WEIGHTS}")
    try:
        branch.load_trainable_state_dict(load_file(str(path)))
    except Exception as e:  # wrong shapes or keys, a damaged file
        raise MLLMCheckpointError(f"MLLM checkpoint weights {path} do not fit the branch: "
                                  f"{type(e).__name__}: {e}") from None
