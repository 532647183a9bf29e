"""Driving question answering for the MLLM branch: QA generated from annotations,
the DriveLM-nuScenes loader and scene-editing edits."""
from .types import QAPair, QA_CATEGORIES
from .generate import QAGenConfig, generate_qa, planning_qa, lead_agent
from .drivelm import load_drivelm, DriveLMFormatError
from .scene_edit import SceneEdit, make_insert_edit, make_remove_edit, agent_descriptor

__all__ = [
    "QAPair", "QA_CATEGORIES", "QAGenConfig", "generate_qa", "planning_qa", "lead_agent",
    "load_drivelm", "DriveLMFormatError", "SceneEdit", "make_insert_edit", "make_remove_edit",
    "agent_descriptor",
]
