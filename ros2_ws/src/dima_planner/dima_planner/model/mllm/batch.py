"""What the trainer hands the MLLM branch besides the BEAM tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dima_planner.qa.scene_edit import SceneEdit
from dima_planner.qa.types import QAPair


@dataclass
class QABatch:
    """QA rows; row i asks about batch element sample_index[i]."""

    questions: list[str]
    answers: list[str]
    sample_index: list[int]

    def __post_init__(self) -> None:
        if not (len(self.questions) == len(self.answers) == len(self.sample_index)):
            raise ValueError("QABatch: questions, answers and sample_index must have equal lengths")

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    def from_pairs(cls, per_sample: Sequence[Sequence[QAPair]], max_per_sample: int | None = None,
                   rng: np.random.Generator | None = None) -> "QABatch":
        """One list of QA pairs per batch element; optionally a random subset of each."""
        qs, as_, idx = [], [], []
        for i, pairs in enumerate(per_sample):
            pairs = list(pairs)
            if max_per_sample is not None and len(pairs) > max_per_sample:
                pick = (rng or np.random.default_rng()).choice(len(pairs), max_per_sample, replace=False)
                pairs = [pairs[k] for k in sorted(pick)]
            for p in pairs:
                qs.append(p.question)
                as_.append(p.answer)
                idx.append(i)
        return cls(qs, as_, idx)


@dataclass
class EditBatch:
    """Scene edits; edit e modifies batch element sample_index[e]."""

    sample_index: torch.Tensor  # (E,) long
    is_insert: torch.Tensor  # (E,) bool; False = remove
    descriptor: torch.Tensor  # (E, D) insert descriptors (zeros for removals)
    token_index: torch.Tensor  # (E,) long, agent token removed (-1 for inserts)
    traj: torch.Tensor  # (E, 6, 2) edited ego future
    traj_mask: torch.Tensor  # (E, 6)
    command: torch.Tensor  # (E,) long
    questions: list[str]
    answers: list[str]

    def __len__(self) -> int:
        return len(self.questions)

    @classmethod
    def from_edits(cls, edits: Sequence[SceneEdit | None], descriptor_dim: int) -> "EditBatch | None":
        """edits[i] edits batch element i (None = no edit for it); None if nothing remains."""
        keep = [(i, e) for i, e in enumerate(edits) if e is not None]
        if not keep:
            return None
        desc = np.zeros((len(keep), descriptor_dim), np.float32)
        for k, (_, e) in enumerate(keep):
            if e.kind == "insert":
                if e.descriptor is None or e.descriptor.shape != (descriptor_dim,):
                    raise ValueError(f"insert edit needs a descriptor of shape ({descriptor_dim},)")
                desc[k] = e.descriptor
        return cls(
            sample_index=torch.tensor([i for i, _ in keep], dtype=torch.long),
            is_insert=torch.tensor([e.kind == "insert" for _, e in keep]),
            descriptor=torch.from_numpy(desc),
            token_index=torch.tensor([e.token_index for _, e in keep], dtype=torch.long),
            traj=torch.from_numpy(np.stack([e.traj for _, e in keep]).astype(np.float32)),
            traj_mask=torch.from_numpy(np.stack([e.traj_mask for _, e in keep]).astype(np.float32)),
            command=torch.tensor([e.command for _, e in keep], dtype=torch.long),
            questions=[e.qa.question for _, e in keep],
            answers=[e.qa.answer for _, e in keep],
        )


@dataclass
class MLLMTargets:
    """Supervision for one batch; every field is optional and its loss is skipped if absent."""

    ego_fut_traj: torch.Tensor | None = None  # (B, 6, 2) absolute, LiDAR frame
    ego_fut_mask: torch.Tensor | None = None  # (B, 6)
    command: torch.Tensor | None = None  # (B,) long
    future_bev: torch.Tensor | None = None  # (B, S, H*W, C): scene-encoder BEV of t+1..t+S
    future_bev_mask: torch.Tensor | None = None  # (B, S), 0 where that future frame is missing
    planner_ego_feature: torch.Tensor | None = None  # (B, planner_dim), with grad (distillation)
    edits: EditBatch | None = None

    @classmethod
    def from_samples(cls, samples: Sequence, **kw) -> "MLLMTargets":
        """Trajectory/command targets from data.sample.Sample objects; other fields via kw."""
        return cls(
            ego_fut_traj=torch.from_numpy(np.stack([s.ego_fut_traj for s in samples]).astype(np.float32)),
            ego_fut_mask=torch.from_numpy(np.stack([s.ego_fut_mask for s in samples]).astype(np.float32)),
            command=torch.tensor([int(s.command) for s in samples], dtype=torch.long),
            **kw,
        )
