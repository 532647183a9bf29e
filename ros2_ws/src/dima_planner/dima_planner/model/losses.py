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
* planning: L1 between the commanded trajectory's per-step offsets and the GT's, masked by
  ego_fut_mask (VAD regresses offsets; `plan_target: positions` = L1 on cumulative positions);
* constraints, as VAD, on the model's own *predicted* agents and map (detached):
  agents whose best class probability is >= 0.5 with their most likely motion mode, map
  elements with probability >= 0.5 (`constraint_source: gt` uses the annotations instead):
  - ego-agent collision: at each step, the nearest agent within 3 m:
    relu(1.5 - |dx|) + relu(3.0 - |dy|) (VAD's x / y / distance thresholds), mean over steps;
  - ego-boundary overstep: relu(1.0 - distance(waypoint, nearest boundary segment));
  - ego-lane direction (map direction): for each step whose nearest divider segment lies
    within 2 m, |sin(angle between ego heading and the segment)| (dividers are undirected).
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
class PlannerLossWeights:
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
    # Constraint losses on the model's predicted agents / map (VAD) or on the annotations ("gt").
    # "gt": tiny_cpu_stage2.yaml, which its shipped checkpoint was trained with.
    constraint_source: str = "gt"
    agent_score_thr: float = 0.5  # VAD's agent_thresh / map_thresh
    map_score_thr: float = 0.5
    # Planning L1 on per-step offsets (VAD) or cumulative positions (tiny_cpu_stage2.yaml).
    plan_target: str = "positions"

    def __post_init__(self) -> None:
        if self.constraint_source not in ("pred", "gt"):
            raise ValueError(f"losses.constraint_source must be 'pred' or 'gt', got {self.constraint_source!r}")
        if self.plan_target not in ("offsets", "positions"):
            raise ValueError(f"losses.plan_target must be 'offsets' or 'positions', got {self.plan_target!r}")


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


def planning_losses(pred: dict, batch: dict, w: PlannerLossWeights, map_scale: tuple[float, float] = (30.0, 30.0)
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
    if w.plan_target == "offsets":
        diff = _offsets(plan) - _offsets(gt)
    else:
        diff = plan - gt
    out["plan"] = w.plan * (diff.abs().sum(-1) * emask).sum() / emask.sum().clamp(min=1)
    scene = batch if w.constraint_source == "gt" else predicted_scene(pred, w.agent_score_thr, w.map_score_thr)
    out["collision"] = w.collision * collision_loss(plan, scene, emask)
    out["boundary"] = w.boundary * boundary_loss(plan, scene, emask)
    out["direction"] = w.direction * direction_loss(plan, scene, emask)
    out["loss"] = sum(out.values())
    return out


def _offsets(traj: torch.Tensor) -> torch.Tensor:
    """(B, T, 2) positions -> per-step offsets (the first from the origin)."""
    return traj - torch.cat([torch.zeros_like(traj[:, :1]), traj[:, :-1]], 1)


@torch.no_grad()
def predicted_scene(pred: dict, agent_thr: float = 0.5, map_thr: float = 0.5) -> dict[str, torch.Tensor]:
    """The model's own agents and map as constraint targets (VAD): confident agent queries with
    their most likely motion mode, confident map queries; detached."""
    n_cls, n_map = len(AGENT_CLASSES), len(MAP_CLASSES)
    score, _ = pred["agent_logits"].float().softmax(-1)[..., :n_cls].max(-1)  # (B, Na)
    mode = pred["motion_logits"].argmax(-1)  # (B, Na)
    traj = pred["motion_traj"].float()  # (B, Na, M, 6, 2)
    idx = mode[..., None, None, None].expand(-1, -1, 1, *traj.shape[-2:])
    fut = traj.gather(2, idx)[:, :, 0]  # (B, Na, 6, 2)
    agent_mask = score >= agent_thr
    mprob = pred["map_logits"].float().softmax(-1)[..., :n_map]
    mscore, mlabel = mprob.max(-1)
    return {"agent_fut_traj": fut, "agent_fut_mask": agent_mask[..., None].float().expand(-1, -1, fut.shape[2]),
            "agent_mask": agent_mask, "map_vectors": pred["map_points"].float(), "map_labels": mlabel,
            "map_mask": mscore >= map_thr}


def collision_loss(plan: torch.Tensor, batch: dict, emask: torch.Tensor, x_thr: float = 1.5,
                   y_thr: float = 3.0, dis_thr: float = 3.0) -> torch.Tensor:
    """VAD's ego-agent constraint (PlanCollisionLoss), (B, 6, 2) plan: per step the nearest
    valid agent within dis_thr, relu(x_thr - |dx|) + relu(y_thr - |dy|)."""
    fut = batch["agent_fut_traj"].float()  # (B, K, 6, 2)
    if fut.shape[1] == 0:
        return plan.sum() * 0
    valid = (batch["agent_fut_mask"].float() * batch["agent_mask"].float()[..., None]) > 0  # (B, K, 6)
    d = plan[:, None] - fut  # (B, K, 6, 2)
    dist = d.detach().norm(dim=-1).masked_fill(~valid, float("inf"))
    dmin, k = dist.min(1)  # (B, 6)
    near = d.gather(1, k[:, None, :, None].expand(-1, 1, -1, 2))[:, 0]  # (B, 6, 2)
    per_step = (F.relu(x_thr - near[..., 0].abs()) + F.relu(y_thr - near[..., 1].abs())) * (dmin < dis_thr).float()
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
