"""Generate a synthetic world in the nuScenes v1.0 layout (tables, JPEGs, .pcd.bin, maps)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from PIL import Image
from shapely.geometry import box as shapely_box
from tqdm import tqdm

from dima_planner.config import to_dict
from dima_planner.data.geometry import RIG_HW, ego_matrix, pose_matrix, rig_records, rigid_inverse, scale_intrinsics
from dima_planner.data.splits import INCOMPLETE_FILE

from . import agents as ag_mod
from . import lidar
from .config import GENERATOR_VERSION, SynthConfig
from .nuscenes_writer import (CAMERA_CHANNELS, CAMERA_OFFSETS, KIND_CATEGORY, Tokens,
                              calibrated_sensors, data_filename, static_tables, write_tables, yaw_quat)
from .render import GroundBatch, RenderBox, Renderer, ground_batch
from .roads import RoadNetwork, Town, build_network, drivable_mask, map_vectors
from .towns import ScenePlace, scene_places, world_towns

META_NAME = "dima_meta.json"
OWNED = ("samples", "sweeps", "maps", META_NAME)  # what a regeneration may delete
EPOCH_US = 1533151600000000  # 2018-08-01, like the nuScenes Boston logs
KEYFRAME_S = 0.5
DYNAMIC = ("instance", "ego_pose", "scene", "sample", "sample_data", "sample_annotation")
_WORKER: dict = {}


def _init_worker(cfg, root, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    _WORKER["gen"] = _Generator(cfg, root, progress=False)


def _die_with_parent(parent_pid: int) -> None:
    """A scene worker ends with the generating process: killed (SIGKILL, OOM) it cannot clean
    up its pool, and an orphaned worker would go on writing into the world that the next
    run is deleting and regenerating."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_scene(i: int):
    return _WORKER["gen"].scene_records(i)


class GenerationError(RuntimeError):
    """The dataroot cannot be (re)generated safely."""


def generate(cfg: SynthConfig, dataroot: str | Path, progress: bool = True, force: bool = False) -> Path:
    """Write the world to dataroot; reuse it when it already holds this exact config."""
    root = Path(dataroot)
    meta_path = root / META_NAME
    partial = (root / INCOMPLETE_FILE).exists()  # an earlier generation was killed: redo it
    if meta_path.exists() and not force and not partial:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("config_hash") == cfg.config_hash():
            from .validate import validate_dataroot
            validate_dataroot(root, cfg.version)
            return root
    if root.exists() and any(root.iterdir()):
        if not meta_path.exists() and not partial:
            raise GenerationError(
                f"{root} is not empty and has no {META_NAME}: refusing to overwrite what may be real "
                f"nuScenes data; choose an empty or new --out directory")
        mark_incomplete(root)  # before anything is deleted: from here on the world is partial
        for name in (*OWNED, _meta_version(meta_path, cfg.version), cfg.version):
            p = root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    mark_incomplete(root)
    _Generator(cfg, root, progress, workers=max(1, min(cfg.workers, cfg.num_scenes))).run()
    (root / INCOMPLETE_FILE).unlink()  # after dima_meta.json: the world is complete
    return root


def mark_incomplete(root: Path) -> None:
    """Durably mark `root` as a world being written (data.splits refuses to load it)."""
    with open(root / INCOMPLETE_FILE, "w") as f:
        f.write("dima synth is writing this world; it is incomplete until this file is gone\n")
        f.flush()
        os.fsync(f.fileno())


def _meta_version(meta_path: Path, default: str) -> str:
    """The table version a previous (possibly interrupted or corrupt) world recorded."""
    try:
        return json.loads(meta_path.read_text()).get("version", default)
    except (OSError, ValueError, AttributeError):
        return default


class _Generator:
    def __init__(self, cfg: SynthConfig, root: Path, progress: bool, workers: int = 1, town: str = ""):
        self.cfg, self.root, self.progress, self.workers = cfg, root, progress, workers
        self.tok = Tokens(cfg.seed)
        self.rig = rig_records()
        self.W, self.H = cfg.image_size
        self.K = {}
        for ch in CAMERA_CHANNELS:
            self.K[ch] = scale_intrinsics(np.array(self.rig[ch]["camera_intrinsic"], float), RIG_HW, (self.H, self.W))
        self.cam2ego = {ch: pose_matrix(self.rig[ch])
                        for ch in (*CAMERA_CHANNELS, "LIDAR_TOP")}
        self.renderers = {ch: Renderer(self.K[ch], self.W, self.H) for ch in CAMERA_CHANNELS}
        self.beams, self.rings = lidar.beam_directions(cfg.lidar_beams, cfg.lidar_azimuth_step_deg)
        self.tables: dict[str, list[dict]] = {k: [] for k in ("instance", "calibrated_sensor", "ego_pose", "log",
                                                              "scene", "sample", "sample_data",
                                                              "sample_annotation", "map")}
        self.tables.update(static_tables(self.tok))
        self.towns = world_towns(cfg)
        self.places = scene_places(cfg)
        self._nets: dict[str, tuple[RoadNetwork, dict]] = {}
        self._use_town(next((t for t in self.towns if t.name == town), self.towns[0]))
        self.cat_token = {c["name"]: c["token"] for c in self.tables["category"]}
        self.attr_token = {a["name"]: a["token"] for a in self.tables["attribute"]}

    # ------------------------------------------------------------------ top level
    def run(self) -> None:
        cfg = self.cfg
        n = cfg.num_scenes
        scene_meta = []
        places = self.places
        for log_idx in range(max(p.log for p in places) + 1):
            self._add_log(log_idx, places)
        for town in self.towns:
            self._use_town(town)  # every town is in the world: its map too, held-out ones included
            self._write_maps(town, [lg["token"] for lg in self.tables["log"] if lg["location"] == town.name])
        bar = tqdm(total=n * self._frames_per_scene(), desc="dima synth", unit="img", disable=not self.progress)
        results: dict[int, tuple[dict, list[str]]] = {}
        if self.workers <= 1 or n == 1:
            for i in range(n):
                results[i] = self.scene_records(i, bar)
        else:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(self.cfg, self.root, os.getpid())) as pool:
                futs = {pool.submit(_worker_scene, i): i for i in range(n)}
                for fut in as_completed(futs):
                    results[futs[fut]] = fut.result()
                    bar.update(self._frames_per_scene())
        bar.close()
        for i in range(n):  # merge in scene order: tables are identical for any worker count
            recs, tags = results[i]
            for name, rows in recs.items():
                self.tables[name].extend(rows)
            scenario = cfg.scenarios[i % len(cfg.scenarios)]
            scene_meta.append({"name": f"scene-{i + 1:04d}", "token": self.tok("scene", i),
                               "split": places[i].split, "town": places[i].town.name, "scenario": scenario,
                               "tags": tags})
        write_tables(self.root / cfg.version, self.tables)
        towns = [{"name": t.name, "role": t.role, "scenes": sum(p.town == t for p in places),
                  "junctions": len(self._nets[t.name][0].nodes), "extent_m": list(self._nets[t.name][0].extent),
                  "map_vectors": f"maps/dima_vectors/{t.name}.json",
                  "map_mask": f"maps/{self.tok('map', t.name)}.png"} for t in self.towns]
        meta = {"generator": "dima_planner.synth", "generator_version": GENERATOR_VERSION,
                "config_hash": cfg.config_hash(), "config": to_dict(cfg), "version": cfg.version,
                "seed": cfg.seed, "scale": cfg.scale, "image_size": [self.W, self.H],
                # The split is location-disjoint: a town's role is the split of all its scenes;
                # held-out towns have none (data/splits.py checks this when it reads the world).
                "towns": towns, "scenes": scene_meta}
        # Written last: its presence (with the hash) marks a complete world.
        (self.root / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))

    def scene_records(self, i: int, bar=None) -> tuple[dict, list[str]]:
        """Generate scene i's files; return its new table rows and tags."""
        saved = {k: self.tables[k] for k in DYNAMIC}
        for k in DYNAMIC:
            self.tables[k] = []
        try:
            place = self.places[i]
            self._use_town(place.town)
            tags = self._scene(i, place.log, self.cfg.scenarios[i % len(self.cfg.scenarios)], bar)
            return {k: self.tables[k] for k in DYNAMIC}, tags
        finally:
            for k in DYNAMIC:
                self.tables[k] = saved[k]

    def _frames_per_scene(self) -> int:
        k = int(round(self.cfg.scene_seconds / KEYFRAME_S))
        sw = int(round(self.cfg.camera_hz * KEYFRAME_S)) - 1 if self.cfg.camera_sweeps else 0
        return len(CAMERA_CHANNELS) * (k + (k - 1) * sw)

    def _write_maps(self, town: Town, log_tokens: list[str]) -> None:
        """The town's drivable mask (nuScenes map table, one per location) and its map vectors."""
        net = self._nets[town.name][0]
        maps = self.root / "maps"
        (maps / "dima_vectors").mkdir(parents=True, exist_ok=True)
        map_token = self.tok("map", net.location)
        Image.fromarray(drivable_mask(net)).save(maps / f"{map_token}.png", optimize=True)
        (maps / "dima_vectors" / f"{net.location}.json").write_text(json.dumps(map_vectors(net)))
        self.tables["map"].append({"token": map_token, "log_tokens": log_tokens, "category": "semantic_prior",
                                   "filename": f"maps/{map_token}.png"})

    def _use_town(self, town: Town) -> None:
        """Make `town` the one scenes are simulated and drawn in (its network built once)."""
        if town.name not in self._nets:
            net = build_network(town)
            # Precomputed drawable ground: hole-free layers then markings, with their bounds.
            mark_polys = [m.polygon for m in net.markings]
            draw = {"layers": net.ground_layers, "mark_polys": mark_polys,
                    "mark_colors": [m.color for m in net.markings],
                    "mark_centres": np.array([p.mean(0) for p in mark_polys]),
                    "buildings": [RenderBox(b.center[0], b.center[1], 0.0, b.yaw, b.size[0], b.size[1], b.size[2],
                                            b.color) for b in net.buildings],
                    "bld_centres": np.array([b.center for b in net.buildings]).reshape(-1, 2)}
            self._nets[town.name] = (net, draw)
        self.net, draw = self._nets[town.name]
        for k, v in draw.items():
            setattr(self, k, v)

    def _add_log(self, log_idx: int, places: list[ScenePlace]) -> None:
        self.tables["log"].append(self._log_record(log_idx, places))
        self.tables["calibrated_sensor"].extend(
            calibrated_sensors(self.tok, self.tables["log"][-1]["token"], self.rig, self.K))

    def _log_record(self, log_idx: int, places: list[ScenePlace]) -> dict:
        date = f"2018-08-{1 + log_idx % 28:02d}"
        logfile = f"dima-{date}-10-{log_idx % 60:02d}-00-0400"
        token = self.tok("log", log_idx)
        town = next(p.town for p in places if p.log == log_idx)
        return {"token": token, "logfile": logfile, "vehicle": "dima-n015",
                "date_captured": date, "location": town.name}

    # ------------------------------------------------------------------ one scene
    def _scene(self, i: int, log_idx: int, scenario: str, bar) -> list[str]:
        cfg, tok = self.cfg, self.tok
        rng = np.random.default_rng([cfg.seed, 7, i])
        agents = ag_mod.make_scene_agents(self.net, cfg, scenario, rng)
        times = ag_mod.simulate(agents, cfg.scene_seconds + 0.5)
        log = self._log_record(log_idx, self.places)
        t_us0 = EPOCH_US + i * 3_600_000_000 + int(rng.integers(0, 1_000_000))
        n_kf = int(round(cfg.scene_seconds / KEYFRAME_S))
        t0 = 0.1  # first lidar keyframe, seconds into the simulation (cameras fire just before)
        kf_t = [t0 + KEYFRAME_S * k + float(rng.uniform(-0.0015, 0.0015)) for k in range(n_kf)]
        return self.write_scene(i, log, agents, times, scenario, kf_t, t_us0, rng, bar)

    def write_scene(self, i: int, log: dict, agents: list, times: np.ndarray, scenario: str, kf_t: list[float],
                    t_us0: int, rng: np.random.Generator, bar=None, name: str = "") -> list[str]:
        """Write scene i (its files and table rows) from recorded trajectories: agents[0] is the
        ego, every agent carries xy / yaw / speed on `times`; keyframes (LiDAR) at kf_t seconds,
        cameras just before each, timestamps from t_us0. `dima synth` writes its scripted
        scenes through this, `dima dagger` the closed-loop drives it records."""
        cfg, tok = self.cfg, self.tok
        ego, others = agents[0], agents[1:]
        cs_tok = {ch: tok("calibrated_sensor", log["token"], ch) for ch in (*CAMERA_CHANNELS, "LIDAR_TOP")}
        scene_tok = tok("scene", i)
        n_kf = len(kf_t)
        us = lambda t: t_us0 + int(round(t * 1e6))  # noqa: E731
        sample_toks = [tok("sample", i, k) for k in range(n_kf)]
        for k in range(n_kf):
            self.tables["sample"].append({
                "token": sample_toks[k], "timestamp": us(kf_t[k]), "scene_token": scene_tok,
                "prev": sample_toks[k - 1] if k > 0 else "", "next": sample_toks[k + 1] if k + 1 < n_kf else ""})
        # ---- LIDAR_TOP keyframes + annotations
        lidar_recs, ann_info = [], []
        for k in range(n_kf):
            t = kf_t[k]
            ex, ey, eyaw, _ = ag_mod.interp_state(ego, times, t)
            states = [ag_mod.interp_state(a, times, t) for a in others]
            pts, hit, n_any, boxes_idx = self._lidar(ex, ey, eyaw, others, states, rng)
            ts = us(t)
            fname = data_filename("samples", log["logfile"], "LIDAR_TOP", ts, "pcd.bin")
            (self.root / fname).parent.mkdir(parents=True, exist_ok=True)
            pts.tofile(self.root / fname)
            sd_tok = tok("sample_data", i, "LIDAR_TOP", k, 0)
            lidar_recs.append(self._sample_data(sd_tok, sample_toks[k], ts, ex, ey, eyaw, cs_tok["LIDAR_TOP"],
                                                fname, "pcd", True, 0, 0))
            in_range, per_agent = set(), {}
            for j, (a, st) in enumerate(zip(others, states)):
                if np.hypot(st[0] - ex, st[1] - ey) <= cfg.annotation_range:
                    in_range.add(j)
                if j in boxes_idx:
                    b = boxes_idx[j]
                    per_agent[j] = (int(np.sum(hit == b)), int(n_any[b]))
                else:
                    per_agent[j] = (0, 0)
            ann_info.append((in_range, per_agent, states))
        self._chain(lidar_recs)
        self._annotations(i, others, ann_info, sample_toks)
        # ---- cameras: keyframes to samples/, sweeps (12 Hz) to sweeps/
        n_sw = int(round(cfg.camera_hz * KEYFRAME_S)) - 1 if cfg.camera_sweeps else 0
        cam_recs: dict[str, list[dict]] = {ch: [] for ch in CAMERA_CHANNELS}
        for k in range(n_kf):
            for j in range(n_sw + 1 if k + 1 < n_kf else 1):
                key_frame = j == 0
                base_t = kf_t[k] + j / cfg.camera_hz
                gx, gy, _, _ = ag_mod.interp_state(ego, times, base_t)
                ground = self._ground_window(gx, gy)
                for ch in CAMERA_CHANNELS:
                    t = base_t + CAMERA_OFFSETS[ch]
                    ex, ey, eyaw, _ = ag_mod.interp_state(ego, times, t)
                    boxes = self._render_boxes(others, times, t, gx, gy)
                    world2cam = rigid_inverse(ego_matrix(ex, ey, eyaw) @ self.cam2ego[ch])
                    img = self.renderers[ch].render(world2cam, ground, boxes)
                    ts = us(t)
                    fname = data_filename("samples" if key_frame else "sweeps", log["logfile"], ch, ts, "jpg")
                    (self.root / fname).parent.mkdir(parents=True, exist_ok=True)
                    img.save(self.root / fname, quality=cfg.jpeg_quality)
                    # A sweep belongs to the next keyframe's sample, as in nuScenes.
                    sample = sample_toks[k] if key_frame else sample_toks[k + 1]
                    cam_recs[ch].append(self._sample_data(tok("sample_data", i, ch, k, j), sample, ts, ex, ey, eyaw,
                                                          cs_tok[ch], fname, "jpg", key_frame, self.W, self.H))
                    if bar is not None:
                        bar.update(1)
        for ch in CAMERA_CHANNELS:
            self._chain(cam_recs[ch])
        tags = ag_mod.scene_tags(ego, times, kf_t[-1] if name else cfg.scene_seconds, scenario)
        self.tables["scene"].append({
            "token": scene_tok, "log_token": log["token"], "nbr_samples": n_kf, "name": name or f"scene-{i + 1:04d}",
            "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
            "description": f"synthetic {scenario.replace('_', ' ')}; " + ", ".join(tags)})
        return tags

    def _sample_data(self, token, sample_token, ts, ex, ey, eyaw, cs, fname, fmt, key, w, h) -> dict:
        pose_tok = self.tok("ego_pose", token)
        self.tables["ego_pose"].append({"token": pose_tok, "timestamp": ts, "rotation": yaw_quat(eyaw),
                                        "translation": [round(ex, 4), round(ey, 4), 0.0]})
        rec = {"token": token, "sample_token": sample_token, "ego_pose_token": pose_tok,
               "calibrated_sensor_token": cs, "timestamp": ts, "fileformat": fmt, "is_key_frame": key,
               "height": h, "width": w, "filename": fname, "prev": "", "next": ""}
        return rec

    def _chain(self, recs: list[dict]) -> None:
        recs.sort(key=lambda r: r["timestamp"])
        for a, b in zip(recs, recs[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
        self.tables["sample_data"].extend(recs)

    def _lidar(self, ex, ey, eyaw, others, states, rng):
        T_l2w = ego_matrix(ex, ey, eyaw) @ self.cam2ego["LIDAR_TOP"]
        rows, intens, idx = [], [], {}
        for j, (a, st) in enumerate(zip(others, states)):
            if np.hypot(st[0] - ex, st[1] - ey) < lidar.MAX_RANGE + 10:
                idx[j] = len(rows)
                rows.append([st[0], st[1], 0.0, a.size[1], a.size[0], a.size[2], st[2]])
                intens.append(40.0 if a.kind != "pedestrian" else 25.0)
        near_b = np.nonzero(np.hypot(*(self.bld_centres - [ex, ey]).T) < lidar.MAX_RANGE + 30)[0]
        for b in near_b:
            bl = self.buildings[b]
            rows.append([bl.x, bl.y, 0.0, bl.length, bl.width, bl.height, bl.yaw])
            intens.append(15.0)
        boxes = np.array(rows, float).reshape(-1, 7)
        pts, hit, n_any = lidar.cast(T_l2w[:3, 3], T_l2w[:3, :3], self.beams, self.rings, boxes,
                                     np.array(intens, float), rng)
        return pts, hit, n_any, idx

    def _annotations(self, i, others, ann_info, sample_toks) -> None:
        tok, n_kf = self.tok, len(sample_toks)
        for j, a in enumerate(others):
            ks = [k for k in range(n_kf) if j in ann_info[k][0]]
            if not ks:
                continue
            span = list(range(ks[0], ks[-1] + 1))  # contiguous track, as nuScenes instances are
            inst_tok = tok("instance", i, j)
            ann_toks = [tok("sample_annotation", i, j, k) for k in span]
            for n, k in enumerate(span):
                x, y, yaw, speed = ann_info[k][2][j]
                n_first, n_any = ann_info[k][1][j]
                self.tables["sample_annotation"].append({
                    "token": ann_toks[n], "sample_token": sample_toks[k], "instance_token": inst_tok,
                    "visibility_token": lidar.visibility_level(n_first, n_any),
                    "attribute_tokens": [self.attr_token[self._attribute(a, speed)]],
                    "translation": [round(x, 4), round(y, 4), round(float(a.size[2]) / 2, 4)],
                    "size": [round(float(s), 3) for s in a.size],  # w, l, h
                    "rotation": yaw_quat(yaw), "prev": ann_toks[n - 1] if n > 0 else "",
                    "next": ann_toks[n + 1] if n + 1 < len(span) else "",
                    "num_lidar_pts": n_first, "num_radar_pts": 0})
            self.tables["instance"].append({
                "token": inst_tok, "category_token": self.cat_token[KIND_CATEGORY[a.kind]],
                "nbr_annotations": len(span), "first_annotation_token": ann_toks[0],
                "last_annotation_token": ann_toks[-1]})

    @staticmethod
    def _attribute(a, speed) -> str:
        if a.kind == "pedestrian":
            return "pedestrian.moving" if speed > 0.3 else "pedestrian.standing"
        if a.kind == "bicycle":
            return "cycle.with_rider"
        if a.parked:
            return "vehicle.parked"
        return "vehicle.moving" if speed > 0.3 else "vehicle.stopped"

    # ------------------------------------------------------------------ rendering inputs
    def _ground_window(self, x, y) -> GroundBatch:
        r = self.cfg.render_distance
        win = shapely_box(x - r, y - r, x + r, y + r)
        polys, colors = [], []
        for poly, color in self.layers:
            inter = poly.intersection(win)
            for g in getattr(inter, "geoms", [inter]):
                if g.geom_type == "Polygon" and not g.is_empty:
                    polys.append(np.asarray(g.exterior.coords)[:-1, :2])
                    colors.append(color)
        sel = np.nonzero(np.max(np.abs(self.mark_centres - [x, y]), 1) < r)[0]
        polys.extend(self.mark_polys[k] for k in sel)
        colors.extend(self.mark_colors[k] for k in sel)
        return ground_batch(polys, colors)

    def _render_boxes(self, others, times, t, gx, gy) -> list[RenderBox]:
        states = [ag_mod.interp_state(a, times, t)[:3] for a in others]
        return self.scene_boxes(others, states, gx, gy)

    def scene_boxes(self, others, states, gx, gy) -> list[RenderBox]:
        """Buildings near (gx, gy) and the agents at states [(x, y, yaw), ...] as render boxes."""
        r = self.cfg.render_distance
        out = [self.buildings[b] for b in np.nonzero(np.max(np.abs(self.bld_centres - [gx, gy]), 1) < r + 20)[0]]
        for g, (a, (x, y, yaw)) in enumerate(zip(others, states)):
            if max(abs(x - gx), abs(y - gy)) > r:
                continue
            out.extend(agent_boxes(a, x, y, yaw, g))
        return out

    def render_cameras(self, ego_poses: dict[str, tuple[float, float, float]], others, states,
                       ground: GroundBatch | None = None) -> dict[str, np.ndarray]:
        """The rig's images (uint8 RGB) for one frame: camera ch seen from ego pose ego_poses[ch]
        (x, y, yaw; cameras fire at slightly different times), agents at `states`. The
        closed-loop simulator renders through this, `dima synth` through `_scene`: one renderer."""
        gx, gy = ego_poses["CAM_FRONT"][:2]
        ground = ground if ground is not None else self._ground_window(gx, gy)
        boxes = self.scene_boxes(others, states, gx, gy)
        out = {}
        for ch in CAMERA_CHANNELS:
            if ch not in ego_poses:
                continue
            ex, ey, eyaw = ego_poses[ch]
            world2cam = rigid_inverse(ego_matrix(ex, ey, eyaw) @ self.cam2ego[ch])
            out[ch] = np.asarray(self.renderers[ch].render(world2cam, ground, boxes))
        return out

    def ground_window(self, x: float, y: float) -> GroundBatch:
        return self._ground_window(x, y)


def scene_generator(cfg: SynthConfig, town: str = "") -> "_Generator":
    """The generator's rig and renderers for cfg, drawing town `town` (a name; default the
    world's first town), without writing anything."""
    return _Generator(cfg, Path("."), progress=False, town=town)


def agent_boxes(a, x: float, y: float, yaw: float, g: int) -> list[RenderBox]:
    """Render boxes of one agent (car body + cabin, truck cab + box, or one box)."""
    w, l, h = a.size
    if a.kind == "car":
        return [RenderBox(x, y, 0.0, yaw, l, w, 0.55 * h, a.color, g),
                RenderBox(x - 0.08 * l * np.cos(yaw), y - 0.08 * l * np.sin(yaw), 0.55 * h, yaw,
                          0.55 * l, 0.9 * w, 0.45 * h, (60, 70, 85), g)]
    if a.kind == "truck":
        cab = 0.22 * l
        cx, cy = x + (l - cab) / 2 * np.cos(yaw), y + (l - cab) / 2 * np.sin(yaw)
        bx, by = x - cab / 2 * np.cos(yaw), y - cab / 2 * np.sin(yaw)
        return [RenderBox(cx, cy, 0.0, yaw, cab, w, 0.8 * h, a.color, g),
                RenderBox(bx, by, 0.0, yaw, l - cab - 0.2, w, h, (215, 215, 210), g)]
    return [RenderBox(x, y, 0.0, yaw, l, w, h, a.color, g)]
