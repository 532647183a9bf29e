"""Vision planner (VAD-style): scene encoder producing BEAM tokens + planning transformer."""
from .config import ModelConfig, preset
from .planner import BeamTokens, SceneEncoding, VisionPlanner

__all__ = ["ModelConfig", "preset", "BeamTokens", "SceneEncoding", "VisionPlanner"]
