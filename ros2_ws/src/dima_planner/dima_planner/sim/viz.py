"""Pictures of a closed-loop route: one BEV PNG, and an animation of front camera + BEV."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import SimLog, Simulator


def _bounds(sim: Simulator, margin: float = 25.0):
    e = sim.log.array("ego")
    route_xy, _ = sim.sc.route.at(np.linspace(sim.sc.route_s0, sim.sc.route_s1, 100))
    pts = np.concatenate([e[:, :2], route_xy])
    lo, hi = pts.min(0) - margin, pts.max(0) + margin
    c, half = (lo + hi) / 2, max(hi - lo) / 2
    return c - half, c + half


def plot_route(sim: Simulator, path: str | Path, title: str, result: dict | None = None,
               expert: SimLog | None = None) -> None:
    """BEV of the route: road, route, agents over time (fading), the plans (every 6th frame),
    the ego's track coloured by speed, collisions (x) and red flags (triangles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc, log = sim.sc, sim.log
    lo, hi = _bounds(sim)
    fig, ax = plt.subplots(figsize=(8, 8), dpi=110)
    ax.set_facecolor((0.55, 0.62, 0.5))
    shapes = [sc.net.drivable] if sc.net.drivable.geom_type == "Polygon" else list(sc.net.drivable.geoms)
    for poly in shapes:
        ax.fill(*poly.exterior.xy, color=(0.33, 0.33, 0.35), zorder=0)
        for hole in poly.interiors:
            ax.fill(*hole.xy, color=(0.55, 0.62, 0.5), zorder=0)
    rxy, _ = sc.route.at(np.linspace(sc.route_s0, sc.route_s1, 300))
    ax.plot(rxy[:, 0], rxy[:, 1], "--", color="white", lw=1, label="route (lane centre)", zorder=1)
    axy = log.array("agents_xy")  # (K, A, 2)
    for j, ag in enumerate(sc.agents[1:]):
        tr = axy[:, j]
        if not ((tr >= lo) & (tr <= hi)).all(1).any():
            continue
        col = "tab:orange" if ag.kind == "pedestrian" else ("0.15" if ag.parked else "tab:blue")
        ax.plot(tr[:, 0], tr[:, 1], color=col, lw=1.0, alpha=0.6, zorder=2)
        ax.plot(*tr[-1], "o" if ag.kind == "pedestrian" else "s", color=col, ms=4, zorder=2)
    if expert is not None:
        ee = expert.array("ego")
        ax.plot(ee[:, 0], ee[:, 1], color="white", lw=1, alpha=0.8, label="expert", zorder=3)
    for f in log.frames[::6]:
        if f["plan"] is not None:
            ax.plot(f["plan"][:, 0], f["plan"][:, 1], color="magenta", lw=0.8, alpha=0.7, zorder=4)
    ax.plot([], [], color="magenta", lw=0.8, label="plans (every 6th frame)")
    e = log.array("ego")
    sc_ = ax.scatter(e[:, 0], e[:, 1], c=e[:, 3], cmap="viridis", s=3, vmin=0, vmax=14, zorder=5)
    fig.colorbar(sc_, ax=ax, fraction=0.035, label="ego speed (m/s)")
    for ev in log.events:
        if ev.kind == "collision":
            ax.plot(ev.x, ev.y, "x", color="red", ms=14, mew=3, zorder=7)
            ax.annotate(f"collision {ev.agent_kind}\nt={ev.t:.1f} s" + ("" if ev.ego_fault else " (not ego)"),
                        (ev.x, ev.y), color="red", fontsize=8, xytext=(6, 6), textcoords="offset points")
        elif ev.kind == "red_flag":
            ax.plot(ev.x, ev.y, "^", color="orange", ms=7, zorder=6)
    off = log.array("offroad").astype(bool)
    if off.any():
        ax.plot(e[off, 0], e[off, 1], ".", color="red", ms=2, zorder=6, label="off-road")
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    if result is not None:
        title += (f"\nDS {result['driving_score']:.1f}  RC {result['route_completion']:.1f} %  "
                  f"collisions {result['collisions']}  red flags {result['red_flags']}  "
                  f"end: {result['end']}")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def bev_frame(sim: Simulator, size: int = 225, span: float = 60.0) -> np.ndarray:
    """A small ego-centred BEV (up = ego heading) of the current state, drawn with PIL."""
    from PIL import Image, ImageDraw

    st, sc = sim.state, sim.sc
    c, s = np.cos(st.yaw), np.sin(st.yaw)
    scale = size / span

    def px(pts):
        d = np.asarray(pts, float) - [st.x, st.y]
        fwd, left = d @ [c, s], d @ [-s, c]
        return [(float(size / 2 - l * scale), float(size * 0.7 - f * scale)) for f, l in zip(fwd, left)]

    img = Image.new("RGB", (size, size), (140, 158, 128))
    dr = ImageDraw.Draw(img)
    shapes = [sc.net.drivable] if sc.net.drivable.geom_type == "Polygon" else list(sc.net.drivable.geoms)
    for poly in shapes:
        dr.polygon(px(np.asarray(poly.exterior.coords)), fill=(84, 84, 90))
        for hole in poly.interiors:
            dr.polygon(px(np.asarray(hole.coords)), fill=(140, 158, 128))
    rxy, _ = sc.route.at(np.arange(sim.s_route, sc.route_s1, 1.0))
    if len(rxy) > 1:
        dr.line(px(rxy), fill=(230, 230, 230), width=1)
    xy, yaw = sim.traffic.poses()
    from .engine import box_polygon

    for i, ag in enumerate(sc.agents[1:], start=1):
        if np.hypot(xy[i, 0] - st.x, xy[i, 1] - st.y) > span:
            continue
        poly = box_polygon(xy[i, 0], xy[i, 1], yaw[i], ag.size[1], ag.size[0])
        col = (240, 150, 40) if ag.kind == "pedestrian" else ((30, 30, 30) if ag.parked else (60, 110, 220))
        dr.polygon(px(np.asarray(poly.exterior.coords)), fill=col)
    if sim.plan is not None:
        dr.line(px(sim.plan.xy), fill=(255, 0, 255), width=2)
    ego = box_polygon(st.x, st.y, st.yaw, sim.cfg.vehicle.length, sim.cfg.vehicle.width)
    dr.polygon(px(np.asarray(ego.exterior.coords)), fill=(40, 200, 80))
    dr.text((4, 4), f"t {sim.t:4.1f} s  v {st.v:4.1f} m/s", fill=(255, 255, 255))
    return np.asarray(img)


class VideoWriter:
    """Front camera beside the BEV, every `every`-th frame, written as GIF (or MP4) by imageio."""

    def __init__(self, path: str | Path, fps: float, every: int = 2):
        self.path, self.fps, self.every = Path(path), fps, every
        self.frames: list[np.ndarray] = []
        self._n = 0

    def add(self, sim: Simulator, images: dict[str, np.ndarray]) -> None:
        self._n += 1
        if (self._n - 1) % self.every:
            return
        front = images["CAM_FRONT"]
        bev = bev_frame(sim, size=front.shape[0], span=60.0)
        self.frames.append(np.concatenate([front, bev], 1))

    def close(self) -> Path | None:
        if not self.frames:
            return None
        import imageio.v3 as iio

        if self.path.suffix == ".mp4":
            iio.imwrite(self.path, np.stack(self.frames), fps=self.fps / self.every, codec="libx264")
        else:
            iio.imwrite(self.path, np.stack(self.frames), duration=1000.0 * self.every / self.fps, loop=0)
        return self.path
