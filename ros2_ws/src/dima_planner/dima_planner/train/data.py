"""Training data: each sample with its temporal queue, per-process batches that resume at any step."""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch

from ..data.inputs import batch_inputs
from ..data.nuscenes_dataset import DatasetConfig, NuScenesPlanningDataset, collate
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


def collate_pairs(items, use_ego_status: bool = False, use_can_bus: bool | None = None) -> dict[str, Any]:
    """Batch of TemporalPairs items, as the step consumes it (CPU tensors):

    inputs   VisionPlanner.forward's keyword arguments (data/inputs.batch_inputs), with
             `history`: one dict per queue slot, oldest first, of images, lidar2img,
             prev2cur (from the slot before), can_bus and valid (B,); a missing frame is
             filled with the current one and marked invalid (the BEV chain restarts after it)
    targets  the planning losses' targets: every tensor of data.collate but the images
    samples, future  stage 2 only: the Samples (QA, edits) and the next keyframes' images
             (float, [0, 1]), lidar2img, can_bus and mask for the future BEV targets, None
             where no item has a next keyframe."""
    batch = collate([it[0] for it in items])
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
    out = {"inputs": batch_inputs(batch, "cpu", use_ego_status, use_can_bus),
           "targets": {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and not k.endswith("images")}}
    if len(items[0]) == 3:  # stage 2
        steps = max(1, max(len(it[2]) for it in items))
        fut = future_frames([(it[0], it[2]) for it in items], steps)
        out["samples"] = fut["samples"]
        out["future"] = None if not bool(fut["mask"].any()) else {
            "images": fut["images"].float() / 255.0, "lidar2img": fut["lidar2img"].float(), "mask": fut["mask"],
            "can_bus": fut["can_bus"].float()}
    return out


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors (nested in dicts and lists) on `device`; everything else as it is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list) and batch and isinstance(batch[0], (dict, torch.Tensor)):
        return [to_device(v, device) for v in batch]
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


def build_datasets(cfg) -> tuple[NuScenesPlanningDataset, NuScenesPlanningDataset | None]:
    """cfg.data's train split and validation split (None where val_split is empty)."""
    size = list(cfg.model.image_size)
    mk = lambda split: NuScenesPlanningDataset(DatasetConfig(  # noqa: E731
        dataroot=cfg.data.dataroot, version=cfg.data.version, split=split, image_size=size,
        image_fit=cfg.model.image_fit))
    return mk(cfg.data.train_split), (mk(cfg.data.val_split) if cfg.data.val_split else None)


def batches(dataset, cfg, future_steps: int | None, step: int, total: int, rank: int = 0,
            world: int = 1) -> tuple[TemporalPairs, torch.utils.data.DataLoader]:
    """This process's batches from `step` to `total` (collate_pairs), and the samples they come from."""
    pairs = TemporalPairs(dataset, cfg.data.cache_images, future_steps, cfg.data.queue_length)
    sampler = ResumableBatches(len(pairs), cfg.data.batch_size, cfg.seed, step, total, rank, world)
    collate_fn = partial(collate_pairs, use_ego_status=cfg.model.use_ego_status, use_can_bus=cfg.model.can_bus)
    return pairs, torch.utils.data.DataLoader(pairs, batch_sampler=sampler, collate_fn=collate_fn,
                                              num_workers=cfg.data.num_workers)
