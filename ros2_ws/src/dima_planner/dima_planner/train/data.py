"""Training data: each sample with its temporal queue, per-process batches that resume at any step."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.nuscenes_dataset import collate
from ..data.inputs import batch_inputs
from ..model.joint import future_frames


class TemporalPairs(torch.utils.data.Dataset):
    """Each item: (sample, history, [future]) where history holds the `queue_length - 1`
    keyframes of the same scene before it, oldest first, None where the scene had not
    started; with `future_steps` not None also the list of up to that many next keyframes
    (stage 2's future BEV targets)."""

    def __init__(self, dataset, cache_images: bool, future_steps: int | None = None, queue_length: int = 2):
        self.ds = dataset
        self.index = {tok: i for i, tok in enumerate(dataset.tokens)}
        self.prev = [self.index.get(r["prev_token"]) if r["prev_token"] else None for r in dataset.records]
        self.next: dict[int, int] = {p: i for i, p in enumerate(self.prev) if p is not None}
        self.future_steps = future_steps
        self.queue_length = queue_length
        self.cache: dict[int, Any] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.ds)

    def _get(self, i: int):
        if self.cache is None:
            return self.ds[i]
        if i not in self.cache:
            self.cache[i] = self.ds[i]
        return self.cache[i]

    def __getitem__(self, i: int):
        hist, j = [], i
        for _ in range(self.queue_length - 1):
            j = self.prev[j] if j is not None else None
            hist.append(self._get(j) if j is not None else None)
        item = (self._get(i), hist[::-1])
        if self.future_steps is None:
            return item
        nxt, j = [], i
        while len(nxt) < self.future_steps and j in self.next:
            j = self.next[j]
            nxt.append(self._get(j))
        return (*item, nxt)


def collate_pairs(items) -> dict[str, Any]:
    """Batch of TemporalPairs items: the current frames (data.collate) plus `history`, one
    dict per queue slot (oldest first) with uint8 images (B, 6, 3, H, W), lidar2img,
    prev2cur (from the slot before), can_bus and valid (B,); a missing frame is filled with
    the current one and marked invalid (the BEV chain restarts after it)."""
    cur = [it[0] for it in items]
    batch = collate(cur)
    batch["history"] = []
    for k in range(len(items[0][1])):
        frames = [it[1][k] if it[1][k] is not None else it[0] for it in items]
        batch["history"].append({
            "images": torch.from_numpy(np.stack([s.images for s in frames])).permute(0, 1, 4, 2, 3),
            "lidar2img": torch.from_numpy(np.stack([s.lidar2img for s in frames])),
            "prev2cur": torch.from_numpy(np.stack([s.prev2cur for s in frames])),
            "can_bus": torch.from_numpy(np.stack([s.can_bus for s in frames])),
            "valid": torch.tensor([it[1][k] is not None for it in items]),
        })
    if len(items[0]) == 3:  # stage 2: the Samples (QA, edits) and the future keyframes
        steps = max(1, max(len(it[2]) for it in items))
        batch["stage2"] = future_frames([(it[0], it[2]) for it in items], steps)
    return batch


class ResumableBatches(torch.utils.data.Sampler):
    """This process's batches of `batch_size` from a per-epoch permutation seeded by
    (seed, epoch), starting at any step: the data position is just the step number. The
    world's step consumes world * batch_size samples; rank r takes slice r of it."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, total_steps: int,
                 rank: int = 0, world: int = 1):
        step_size = batch_size * world
        if n < step_size:
            raise ValueError(f"the training split has {n} samples, fewer than batch_size {batch_size} x "
                             f"{world} process(es)")
        self.n, self.bs, self.seed, self.start, self.total = n, batch_size, seed, start_step, total_steps
        self.rank, self.world = rank, world
        self.per_epoch = n // step_size

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self):
        step_size = self.bs * self.world
        for step in range(self.start, self.total):
            epoch, k = divmod(step, self.per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.n, generator=g)
            world_batch = perm[k * step_size:(k + 1) * step_size]
            yield world_batch[self.rank * self.bs:(self.rank + 1) * self.bs].tolist()


def model_inputs(batch: dict[str, Any], device: torch.device, use_ego_status: bool,
                 use_can_bus: bool | None = None) -> dict[str, torch.Tensor]:
    """Collated batch -> VisionPlanner.forward keyword arguments (data/inputs.py)."""
    return batch_inputs(batch, device, use_ego_status, use_can_bus)


def targets(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and not k.endswith("images")}


def future_inputs(batch: dict[str, Any], device: torch.device, steps: int) -> dict[str, torch.Tensor] | None:
    """Stage 2: the next keyframes' images (float, [0, 1]) and validity for future BEV targets."""
    fut = batch["stage2"]
    if steps <= 0 or not bool(fut["mask"].any()):
        return None
    return {"images": fut["images"][:, :steps].to(device).float() / 255.0,
            "lidar2img": fut["lidar2img"][:, :steps].to(device).float(), "mask": fut["mask"][:, :steps].to(device),
            "can_bus": fut["can_bus"][:, :steps].to(device).float()}
