"""Synthetic world generator writing the real nuScenes v1.0 layout (devkit-loadable)."""
from .config import SCENARIOS, SynthConfig
from .generate import GenerationError, generate
from .validate import DatarootError, validate_dataroot

__all__ = ["SynthConfig", "generate", "validate_dataroot", "DatarootError", "GenerationError", "SCENARIOS"]
