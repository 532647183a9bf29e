"""VAD's training losses (stage 1, the vision branch), simplified where noted.

Targets are a collated batch (padded, with masks): agent_boxes (B, K, 7) x y z l w h yaw,
agent_labels (B, K), agent_mask (B, K), agent_fut_traj (B, K, 6, 2), agent_fut_mask
(B, K, 6), map_vectors (B, M, P, 2), map_labels (B, M), map_mask (B, M), ego_fut_traj
(B, 6, 2), ego_fut_mask (B, 6), command (B,).

Choices (vs VAD):
* detection: Hungarian matching on class probability + centre L1 (VAD: focal cost + box
  L1 on normalised boxes); loss = cross-entropy with a down-weighted "no object" class
  (VAD: focal) + L1 on (x, y, z, log l, log w, log h, sin, cos) of matched queries;
* map: Hungarian matching on class probability + mean point L1 (points normalised by the
  BEV half-ranges, as VAD normalises by pc_range), where a GT polyline may
  be traversed in either direction (VAD's permutation-invariant cost; the shifts of
  closed polygons are optional, `map_closed_shifts`); loss = CE + points L1;
* motion: winner-takes-all: for each matched GT agent the mode with the lowest masked
  ADE gets the L1 loss, and the mode logits get CE towards that winner;
* planning: L1 between the commanded trajectory and the GT, masked by ego_fut_mask;
* constraints use *GT* agents and map elements (VAD uses confident predictions, which
  are noise early in training on a small model):
  - ego-agent collision: at each step, for every GT agent whose future is valid,
    relu(dx_thr - |dx|) * [|dy| < dy_thr] + relu(dy_thr - |dy|) * [|dx| < dx_thr] with
    VAD's thresholds (1.0 m lateral, 3.0 m longitudinal), summed over agents, mean over steps;
  - ego-boundary overstep: relu(thr - distance(waypoint, nearest boundary segment)), thr 1.0 m;
  - ego-lane direction: for each step whose nearest divider segment lies within 2 m,
    |sin(angle between ego heading and the segment)| (dividers are undirected polylines).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..data.sample import AGENT_CLASSES, MAP_CLASSES

BOUNDARY = MAP_CLASSES.index("boundary")
DIVIDER = MAP_CLASSES.index("divider")
PED_CROSSING = MAP_CLASSES.index("ped_crossing")


@dataclass
class LossWeights:
    det_cls: float = 2.0
    det_box: float = 0.25
    map_cls: float = 0.8
    map_pts: float = 5.0  # on points normalised by the BEV range, as VAD
    motion_reg: float = 0.2
    motion_cls: float = 0.2
    plan: float = 1.0
    collision: float = 1.0
    boundary: float = 1.0
    direction: float = 0.5
    no_object: float = 0.1  # CE weight of the "no object" class
    map_closed_shifts: bool = False  # also match cyclic shifts of pedestrian crossings


def _box_target(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 7) x y z l w h yaw -> (..., 8) regression target matching AgentHead's output."""
    lwh = boxes[..., 3:6].clamp(min=0.05).log()
    return torch.cat([boxes[..., :3], lwh, boxes[..., 6:7].sin(), boxes[..., 6:7].cos()], -1)


def _match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r, c = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)


def _polyline_variants(pts: torch.Tensor, label: int, closed_shifts: bool) -> torch.Tensor:
    """(P, 2) -> (V, P, 2): equivalent orderings of one GT element."""
    variants = [pts, pts.flip(0)]
    if closed_shifts and label == PED_CROSSING:
        variants += [torch.roll(pts, s, 0) for s in range(1, pts.shape[0])]
        variants += [torch.roll(pts.flip(0), s, 0) for s in range(1, pts.shape[0])]
    return torch.stack(variants)


def _segments_distance(p: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of points p (T, 2) to segments a->b (S, 2). Returns (T, S) distances and (S, 2) directions."""
    ab = b - a
    t = ((p[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-6)[None]
    proj = a[None] + t.clamp(0, 1)[..., None] * ab[None]
    return (p[:, None] - proj).norm(dim=-1), ab


def planning_losses(pred: dict, batch: dict, w: LossWeights, map_scale: tuple[float, float] = (30.0, 30.0)
                    ) -> dict[str, torch.Tensor]:
    """All VAD losses. Returns a dict of weighted terms plus 'loss' (their sum).
    map_scale: metres that map to 1 in the map-points loss (the model's BEV half-ranges)."""
    dev = pred["plan"].device
    B = pred["plan"].shape[0]
    n_cls, n_map = len(AGENT_CLASSES), len(MAP_CLASSES)
    zero = pred["plan"].sum() * 0
    det_cls, det_box, map_cls, map_pts, mot_reg, mot_cls = [], [], [], [], [], []
    n_agents = n_maps = 0
    for b in range(B):
        # ---- detection + motion -------------------------------------------------------
        logits = pred["agent_logits"][b]
        am = batch["agent_mask"][b].bool()
        gt_boxes = batch["agent_boxes"][b][am].float()
        gt_labels = batch["agent_labels"][b][am].long()
        target_cls = torch.full((logits.shape[0],), n_cls, dtype=torch.long, device=dev)
        if gt_boxes.shape[0]:
            prob = logits.softmax(-1)
            cost = -prob[:, gt_labels] + 0.1 * torch.cdist(pred["agent_boxes"][b][:, :2], gt_boxes[:, :2], p=1)
            qi, gi = _match(cost)
            qi, gi = qi.to(dev), gi.to(dev)
            target_cls[qi] = gt_labels[gi]
            det_box.append(F.l1_loss(pred["agent_boxes"][b][qi], _box_target(gt_boxes[gi]), reduction="sum"))
            n_agents += len(qi)
            # winner-takes-all motion on matched agents with a valid future
            fut = batch["agent_fut_traj"][b][am][gi].float()  # (n, 6, 2)
            fmask = batch["agent_fut_mask"][b][am][gi].float()  # (n, 6)
            traj = pred["motion_traj"][b][qi]  # (n, M, 6, 2)
            err = (traj - fut[:, None]).norm(dim=-1)  # (n, M, 6)
            ade = (err * fmask[:, None]).sum(-1) / fmask.sum(-1, keepdim=True).clamp(min=1)
            best = ade.argmin(-1)
            has_fut = fmask.sum(-1) > 0
            if has_fut.any():
                win = traj[torch.arange(len(best), device=dev), best]  # (n, 6, 2)
                l1 = ((win - fut).abs().sum(-1) * fmask).sum(-1) / fmask.sum(-1).clamp(min=1)
                mot_reg.append(l1[has_fut].sum())
                mot_cls.append(F.cross_entropy(pred["motion_logits"][b][qi][has_fut], best[has_fut], reduction="sum"))
        cls_weight = torch.ones(n_cls + 1, device=dev)
        cls_weight[-1] = w.no_object
        det_cls.append(F.cross_entropy(logits, target_cls, weight=cls_weight))

        # ---- map --------------------------------------------------------------------------
        mlogits = pred["map_logits"][b]
        mm = batch["map_mask"][b].bool()
        gt_pts = batch["map_vectors"][b][mm].float()
        gt_lab = batch["map_labels"][b][mm].long()
        target_map = torch.full((mlogits.shape[0],), n_map, dtype=torch.long, device=dev)
        if gt_pts.shape[0]:
            scale = pred["map_points"].new_tensor(map_scale)
            pp = pred["map_points"][b] / scale  # (Q, P, 2), normalised
            gt_pts = gt_pts / scale
            best_var, costs = [], []
            for g in range(gt_pts.shape[0]):
                var = _polyline_variants(gt_pts[g], int(gt_lab[g]), w.map_closed_shifts)  # (V, P, 2)
                d = (pp[:, None] - var[None]).abs().sum(-1).mean(-1)  # (Q, V)
                dmin, arg = d.min(-1)
                costs.append(dmin)
                best_var.append((var, arg))
            cost = -mlogits.softmax(-1)[:, gt_lab] + 0.2 * torch.stack(costs, 1)
            qi, gi = _match(cost)
            target_map[qi.to(dev)] = gt_lab[gi.to(dev)]
            for q, g in zip(qi.tolist(), gi.tolist()):
                var, arg = best_var[g]
                map_pts.append(F.l1_loss(pp[q], var[arg[q]], reduction="none").sum(-1).mean())
            n_maps += len(qi)
        mw = torch.ones(n_map + 1, device=dev)
        mw[-1] = w.no_object
        map_cls.append(F.cross_entropy(mlogits, target_map, weight=mw))

    out: dict[str, torch.Tensor] = {}
    out["det_cls"] = w.det_cls * torch.stack(det_cls).mean()
    out["det_box"] = w.det_box * (torch.stack(det_box).sum() / max(n_agents, 1) if det_box else zero)
    out["motion_reg"] = w.motion_reg * (torch.stack(mot_reg).sum() / max(n_agents, 1) if mot_reg else zero)
    out["motion_cls"] = w.motion_cls * (torch.stack(mot_cls).sum() / max(n_agents, 1) if mot_cls else zero)
    out["map_cls"] = w.map_cls * torch.stack(map_cls).mean()
    out["map_pts"] = w.map_pts * (torch.stack(map_pts).sum() / max(n_maps, 1) if map_pts else zero)

    # ---- planning + constraints -----------------------------------------------------------
    plan = pred["plan"]
    gt = batch["ego_fut_traj"].float()
    emask = batch["ego_fut_mask"].float()
    out["plan"] = w.plan * ((plan - gt).abs().sum(-1) * emask).sum() / emask.sum().clamp(min=1)
    out["collision"] = w.collision * collision_loss(plan, batch, emask)
    out["boundary"] = w.boundary * boundary_loss(plan, batch, emask)
    out["direction"] = w.direction * direction_loss(plan, batch, emask)
    out["loss"] = sum(out.values())
    return out


def collision_loss(plan: torch.Tensor, batch: dict, emask: torch.Tensor, dx_thr: float = 1.0,
                   dy_thr: float = 3.0) -> torch.Tensor:
    """VAD's ego-agent constraint with GT agent futures, (B, 6, 2) plan."""
    fut = batch["agent_fut_traj"].float()  # (B, K, 6, 2)
    valid = batch["agent_fut_mask"].float() * batch["agent_mask"].float()[..., None]  # (B, K, 6)
    d = plan[:, None] - fut  # (B, K, 6, 2)
    dx, dy = d[..., 0].abs(), d[..., 1].abs()
    lat = F.relu(dx_thr - dx) * (dy < dy_thr).float()
    lon = F.relu(dy_thr - dy) * (dx < dx_thr).float()
    per_step = ((lat + lon) * valid).sum(1)  # (B, 6)
    return (per_step * emask).sum() / emask.sum().clamp(min=1)


def _segments(batch: dict, b: int, label: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    sel = batch["map_mask"][b].bool() & (batch["map_labels"][b] == label)
    if not sel.any():
        return None
    pts = batch["map_vectors"][b][sel].float()  # (E, P, 2)
    return pts[:, :-1].reshape(-1, 2), pts[:, 1:].reshape(-1, 2)


def boundary_loss(plan: torch.Tensor, batch: dict, emask: torch.Tensor, thr: float = 1.0) -> torch.Tensor:
    total, count = plan.sum() * 0, emask.sum().clamp(min=1)
    for b in range(plan.shape[0]):
        seg = _segments(batch, b, BOUNDARY)
        if seg is None:
            continue
        dist, _ = _segments_distance(plan[b], *seg)
        total = total + (F.relu(thr - dist.min(-1).values) * emask[b]).sum()
    return total / count


def direction_loss(plan: torch.Tensor, batch: dict, emask: torch.Tensor, thr: float = 2.0) -> torch.Tensor:
    total, count = plan.sum() * 0, emask.sum().clamp(min=1)
    start = torch.zeros_like(plan[:, :1])
    heading = plan - torch.cat([start, plan[:, :-1]], 1)  # (B, 6, 2) per-step motion
    for b in range(plan.shape[0]):
        seg = _segments(batch, b, DIVIDER)
        if seg is None:
            continue
        dist, ab = _segments_distance(plan[b].detach(), *seg)
        dmin, idx = dist.min(-1)
        lane = ab[idx]
        h = heading[b]
        moving = h.norm(dim=-1) > 0.2  # a standing ego has no heading
        cross = (h[:, 0] * lane[:, 1] - h[:, 1] * lane[:, 0]).abs()
        sin = cross / (h.norm(dim=-1) * lane.norm(dim=-1)).clamp(min=1e-6)
        use = (dmin < thr) & moving
        total = total + (sin * use.float() * emask[b]).sum()
    return total / count
