"""`dima bag eval`: score a recorded planner run against the GT written by `dima bag convert`.

Reads one or more rosbag2 directories (typically the converted input bag, which holds
/dima/gt/sample, and the recording of the node's outputs; one bag holding both works
too), matches each prediction (/dima/trajectory PlannedTrajectory or /dima/path Path,
base_link) to a keyframe by its header stamp (the node stamps outputs with the front
camera image it planned from; the GT carries the keyframe's CAM_FRONT stamp), converts
the waypoints to the keyframe's LiDAR frame and computes
`dima_planner.eval.metrics.planning_metrics` with the occupancy rebuilt from the agent
boxes stored in the GT message. No dataset is needed.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dima_planner.bags import bag_io
from dima_planner.data.occupancy import occupancy_from_boxes
from dima_planner.data.sample import FUTURE_STEPS
from dima_planner.eval.metrics import planning_metrics
from dima_planner.runtime.frames import base_link_to_lidar_xy
from dima_planner.runtime.sync import stamp_to_ns


class BagEvalError(RuntimeError):
    pass


@dataclass
class GtSample:
    token: str
    stamp_ns: int
    traj: np.ndarray  # (6, 2) LiDAR frame
    mask: np.ndarray  # (6,)
    lidar2ego: np.ndarray  # (4, 4)
    boxes: np.ndarray  # (6, K, 5)
    box_mask: np.ndarray  # (6, K) bool
    # The LiDAR frame at the front image's time -> the keyframe's LiDAR frame (the GT's).
    front_lidar2lidar: np.ndarray = field(default_factory=lambda: np.eye(4))

    def lidar_xy(self, base_xy: np.ndarray) -> np.ndarray:
        """(S, 2) base_link points of a plan made from the front image -> the GT's frame."""
        xy = base_link_to_lidar_xy(base_xy, self.lidar2ego)
        m = self.front_lidar2lidar
        return xy @ m[:2, :2].T + m[:2, 3]

    @property
    def valid(self) -> bool:
        return bool(np.all(self.mask > 0))


def gt_from_json(text: str) -> GtSample:
    d = json.loads(text)
    boxes = np.asarray(d["occ_boxes"], dtype=np.float64).reshape(FUTURE_STEPS, -1, 5)
    return GtSample(
        token=d["token"], stamp_ns=int(d["stamp_ns"]),
        traj=np.asarray(d["ego_fut_traj"], dtype=np.float64).reshape(FUTURE_STEPS, 2),
        mask=np.asarray(d["ego_fut_mask"], dtype=np.float64).reshape(FUTURE_STEPS),
        lidar2ego=np.asarray(d["lidar2ego"], dtype=np.float64).reshape(4, 4),
        boxes=boxes, box_mask=np.asarray(d["occ_mask"], dtype=bool).reshape(boxes.shape[:2]),
        front_lidar2lidar=np.asarray(d.get("front_lidar2lidar", np.eye(4)), dtype=np.float64).reshape(4, 4))


def _pose_xy(poses) -> np.ndarray:
    return np.array([[p.position.x, p.position.y] for p in poses], dtype=np.float64).reshape(-1, 2)


def read_bags(paths: list[str | Path], pred_topic: str,
              damaged: list[str] | None = None) -> tuple[dict[int, GtSample], dict[int, np.ndarray]]:
    """GT samples by stamp and predictions (base_link xy, (S, 2)) by stamp from the bags.
    A truncated or corrupt bag: BagEvalError, or with `damaged` (a list) its intact messages
    are used and the damage is appended there."""
    from .bag_salvage import BagDamagedError, open_bag, read_messages

    store = bag_io.make_typestore()
    gts: dict[int, GtSample] = {}
    preds: dict[int, np.ndarray] = {}
    for path in paths:
        path = Path(path)
        if not (path / "metadata.yaml").is_file():
            raise BagEvalError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
        try:
            reader = open_bag(path)  # a damaged MCAP: its intact messages, then BagDamagedError
        except ValueError as exc:
            raise BagEvalError(str(exc)) from None
        try:
            conns = [c for c in reader.connections if c.topic in (bag_io.GT_SAMPLE_TOPIC, pred_topic)]
            for c, _t, raw in read_messages(reader, path, connections=conns):
                msg = store.deserialize_cdr(raw, c.msgtype)
                if c.topic == bag_io.GT_SAMPLE_TOPIC:
                    try:
                        g = gt_from_json(msg.data)
                    except (KeyError, ValueError, TypeError) as exc:
                        raise BagEvalError(f"{path}: malformed {bag_io.GT_SAMPLE_TOPIC} message: {exc}") from None
                    gts[g.stamp_ns] = g
                elif c.msgtype in (bag_io.TYPES["trajectory"], bag_io.TYPES["path"]):
                    poses = msg.poses if c.msgtype == bag_io.TYPES["trajectory"] else [p.pose for p in msg.poses]
                    if msg.header.frame_id not in ("base_link", ""):
                        raise BagEvalError(f"{path}: {pred_topic} is in frame {msg.header.frame_id!r}; "
                                           "only base_link predictions are supported")
                    preds[stamp_to_ns(msg.header.stamp)] = _pose_xy(poses)  # last one wins
                else:
                    raise BagEvalError(f"{path}: {pred_topic} has unsupported type {c.msgtype}")
        except BagDamagedError as exc:  # what came before the damage is in gts / preds
            if damaged is None:
                raise BagEvalError(str(exc)) from None
            damaged.append(str(exc))
        finally:
            reader.close()
    return gts, preds


def match(gts: dict[int, GtSample], preds: dict[int, np.ndarray], tolerance_ns: int):
    """Pairs (gt, pred xy) whose stamps differ by at most tolerance_ns (nearest wins)."""
    if not preds:
        return []
    pstamps = np.array(sorted(preds), dtype=np.int64)
    pairs = []
    for stamp, g in sorted(gts.items()):
        i = int(np.searchsorted(pstamps, stamp))
        cands = [j for j in (i - 1, i) if 0 <= j < len(pstamps)]
        j = min(cands, key=lambda j: abs(int(pstamps[j]) - stamp))
        if abs(int(pstamps[j]) - stamp) <= tolerance_ns:
            pairs.append((g, preds[int(pstamps[j])]))
    return pairs


def evaluate(paths: list[str | Path], pred_topic: str = bag_io.TRAJECTORY_TOPIC, tolerance_ms: float = 1.0,
             convention: str = "vad") -> dict:
    damaged: list[str] = []
    gts, preds = read_bags(paths, pred_topic, damaged)
    if damaged and not (gts and preds):
        raise BagEvalError("; ".join(damaged))
    if not gts:
        raise BagEvalError(f"no {bag_io.GT_SAMPLE_TOPIC} messages in {[str(p) for p in paths]} "
                           "(evaluate against the bag written by `dima bag convert`)")
    if not preds:
        raise BagEvalError(f"no {pred_topic} messages in {[str(p) for p in paths]}")
    pairs = match(gts, preds, int(tolerance_ms * 1e6))
    short = [g.token for g, p in pairs if len(p) < FUTURE_STEPS]
    pairs = [(g, p) for g, p in pairs if len(p) >= FUTURE_STEPS]
    if not pairs:
        raise BagEvalError(f"none of the {len(preds)} predictions matches a GT keyframe stamp within "
                           f"{tolerance_ms} ms ({len(gts)} keyframes)")
    pred = np.stack([g.lidar_xy(p[:FUTURE_STEPS]) for g, p in pairs])
    gt = np.stack([g.traj for g, _ in pairs])
    occ = np.stack([occupancy_from_boxes(g.boxes, g.box_mask) for g, _ in pairs])
    mask = np.stack([g.mask > 0 for g, _ in pairs])
    valid = mask if convention == "uniad" else mask.all(axis=1)
    metrics = planning_metrics(pred, gt, occ, valid, convention=convention)
    metrics.update({"gt_keyframes": len(gts), "predictions": len(preds), "matched": len(pairs),
                    "too_short": len(short), "pred_topic": pred_topic, "damaged": damaged})
    return metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bags", nargs="+", help="rosbag2 directories: the converted bag (GT) and the recording")
    parser.add_argument("--pred-topic", default=bag_io.TRAJECTORY_TOPIC,
                        help=f"{bag_io.TRAJECTORY_TOPIC} (PlannedTrajectory) or {bag_io.PATH_TOPIC} (Path)")
    parser.add_argument("--tolerance-ms", type=float, default=1.0, help="stamp matching tolerance")
    parser.add_argument("--convention", choices=("vad", "uniad"), default="vad")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def run(args: argparse.Namespace) -> int:
    try:
        m = evaluate(args.bags, args.pred_topic, args.tolerance_ms, args.convention)
    except BagEvalError as exc:
        print(f"dima bag eval: error: {exc}", file=sys.stderr)
        return 2
    print(f"matched {m['matched']} of {m['gt_keyframes']} keyframes ({m['predictions']} predictions, "
          f"{m['num_samples']} evaluated, convention {m['convention']})")
    print("L2 (m)        1s {l2_1s:.3f}  2s {l2_2s:.3f}  3s {l2_3s:.3f}  avg {l2_avg:.3f}".format(**m))
    print("collision (%) 1s {:.3f}  2s {:.3f}  3s {:.3f}  avg {:.3f}".format(
        *(100 * m[k] for k in ("col_1s", "col_2s", "col_3s", "col_avg"))))
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=2))
    for damage in m["damaged"]:  # scored on the intact messages before it
        print(f"dima bag eval: error: {damage}", file=sys.stderr)
    return 1 if m["damaged"] else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dima bag eval", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
