"""Node parameters as tables of `ParamSpec` (name, default, type, range, choices, pattern),
the one style of every dima node (planner: PARAMS here; MLLM and simulator: their own
tables beside their nodes), and the planner's table itself.

A plain module (no rclpy) so that tests and tools can check params YAML files against
exactly what a node declares without starting ROS. node_runtime.declare_parameters turns
each `ParamSpec` into a `ParameterDescriptor`, declares it and validates the start-up
values; the set-parameters callback runs the table's `validator()` on every change.

Parameters marked `on_configure` are read when the node is configured (topics, QoS,
model); changing them on a running node takes effect at the next cleanup + configure.
The others are read every planning cycle.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .. import resources
from ..data.sample import CAMERAS

NODE_NAME = "dima_planner"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    kind: str  # "bool" | "int" | "float" | "str"
    low: float | None = None  # inclusive range for int/float
    high: float | None = None
    choices: tuple[str, ...] | None = None  # allowed values for str
    pattern: str | None = None  # full-match regex for str
    on_configure: bool = False

    def check(self, value: Any) -> str | None:
        """The reason `value` is not acceptable, or None."""
        # Strict like rclpy: an integer is not accepted for a double parameter (write 1.0).
        types = {"bool": (bool,), "int": (int,), "float": (float,), "str": (str,)}[self.kind]
        if isinstance(value, bool) and self.kind != "bool" or not isinstance(value, types):
            return f"{self.name} must be a {self.kind}, got {type(value).__name__} {value!r}"
        if self.kind in ("int", "float"):
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                return f"{self.name}={value!r} is outside [{self.low}, {self.high}]"
        if self.choices is not None and value not in self.choices:
            return f"{self.name}={value!r} is not one of {list(self.choices)}"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"{self.name}={value!r} does not match {self.pattern}"
        return None


# Topic names are relative (no leading '/'): they resolve in the node's namespace, so
# `-r __ns:=/car1` moves every input and output under /car1, and remaps apply. In the root
# namespace they are the names `dima bag convert` writes (/cam_front/image_raw, /odom,
# /dima/command ...); params/ros/absolute_topics.yaml pins those absolute names for a
# namespaced node that listens to a global bag. /tf_static, /diagnostics and /clock stay
# absolute (tf2 and ROS conventions). VAD camera order.
DEFAULT_CAMERA_TOPICS = {cam: f"{cam.lower()}/image_raw" for cam in CAMERAS}
DEFAULT_INFO_TOPICS = {cam: f"{cam.lower()}/camera_info" for cam in CAMERAS}
# Outputs: parameter name -> (default, message type, what it carries).
OUTPUT_TOPICS = {
    "path_topic": ("dima/path", "nav_msgs/Path", "the plan in base_frame"),
    "world_path_topic": ("dima/path_odom", "nav_msgs/Path",
                         "the plan in the odometry's frame (REP-105 odom; name the topic after that frame, "
                         "e.g. dima/path_map where the odometry is in map)"),
    "trajectory_topic": ("dima/trajectory", "dima_msgs/PlannedTrajectory",
                         "the plan in base_frame with timing, command and model id"),
    "scene_tokens_topic": ("dima/scene_tokens", "dima_msgs/SceneTokens",
                           "BEAM scene tokens for the MLLM node (built only while subscribed)"),
    "markers_topic": ("dima/markers", "visualization_msgs/MarkerArray",
                      "agents, map elements and the plan (only while subscribed)"),
}

# Outputs that are off unless their topic is set (their message packages are optional).
OPTIONAL_OUTPUT_TOPICS = {
    "autoware_trajectory_topic": ("", "autoware_planning_msgs/Trajectory",
                                  "the plan for Autoware's planning/control in the odometry's frame (map): the "
                                  "current point, then the waypoints with time_from_start, velocity, acceleration "
                                  "and heading rate; empty = off"),
    "autoware_objects_topic": ("", "autoware_perception_msgs/PredictedObjects",
                               "the detection head's agents with their predicted paths, same frame; empty = off"),
}

# A ROS topic name as a parameter may give it (relative, absolute or private).
TOPIC_PATTERN = r"~?/?[A-Za-z_][A-Za-z0-9_/{}~]*"


def _camera_specs() -> list[ParamSpec]:
    specs = []
    for cam in CAMERAS:
        p = f"cameras.{cam}."
        specs += [
            ParamSpec(p + "topic", DEFAULT_CAMERA_TOPICS[cam], f"{cam} image topic", "str",
                      pattern=TOPIC_PATTERN, on_configure=True),
            ParamSpec(p + "transport", "raw",
                      f"{cam}: 'raw' (sensor_msgs/Image) or 'compressed' (sensor_msgs/CompressedImage, JPEG/PNG)",
                      "str", choices=("raw", "compressed"), on_configure=True),
            ParamSpec(p + "info_topic", DEFAULT_INFO_TOPICS[cam], f"{cam} sensor_msgs/CameraInfo topic", "str",
                      pattern=TOPIC_PATTERN, on_configure=True),
            ParamSpec(p + "frame_id", "",
                      f"{cam} optical frame for /tf_static look-up; empty = the image header's frame_id",
                      "str"),
            ParamSpec(p + "rectified", False,
                      f"{cam}: the topic carries rectified images, so CameraInfo P (not K, D) describes them "
                      "(image_geometry's rule); false = K, and non-zero distortion is warned about once", "bool"),
        ]
    return specs


_SPECS: list[ParamSpec] = [
    ParamSpec("autostart", True, "configure and activate on start-up (unmanaged use); false = wait for a "
              "lifecycle manager", "bool", on_configure=True),
    ParamSpec("checkpoint", resources.DEFAULT_CHECKPOINT, "planner checkpoint directory: absolute, or relative to the "
              "working directory, else to the installed share/dima_planner directory", "str", on_configure=True),
    ParamSpec("device", "cpu", "torch device: cpu, cuda, cuda:N or mps", "str",
              pattern=r"cpu|cuda(:\d+)?|mps", on_configure=True),
    ParamSpec("backend", "torch", "inference engine: 'torch' (eager; every checkpoint), 'onnxruntime' (the "
              "checkpoint's planner.onnx from `dima export --onnx`; CPU) or 'tensorrt' (its planner_trt.ep from "
              "`dima export --tensorrt`; device cuda). The LLM-free planner only: dual_mode needs torch", "str",
              choices=("torch", "onnxruntime", "tensorrt"), on_configure=True),
    ParamSpec("precision", "fp32", "model arithmetic: fp32, or fp16 / bf16 through torch.autocast (GPU)", "str",
              choices=("fp32", "fp16", "bf16"), on_configure=True),
    ParamSpec("num_threads", 1, "torch CPU threads for the model (0 = torch's default: one per core)", "int", 0, 256,
              on_configure=True),
    ParamSpec("dual_mode", False, "DiMA Dual inference: the MLLM branch of mllm_checkpoint reads the same BEAM "
              "tokens in this process and its ego feature is max-pooled with the planner's into the planning "
              "head (as `dima eval --dual`); latency = planner + one LLM forward", "bool", on_configure=True),
    ParamSpec("mllm_checkpoint", "", "dual_mode: MLLM branch directory (mllm.safetensors + mllm.yaml); empty = "
              "the planner checkpoint (stage 2 writes both there)", "str", on_configure=True),
    ParamSpec("llm_path", "", "dual_mode: local Hugging Face LLM folder; empty = the one named in mllm.yaml",
              "str", on_configure=True),
    ParamSpec("warmup", True, "run one forward pass on black images during configure", "bool", on_configure=True),
    ParamSpec("warmup_width", 1600, "image width of the warm-up pass", "int", 16, 8192, on_configure=True),
    ParamSpec("warmup_height", 900, "image height of the warm-up pass", "int", 16, 8192, on_configure=True),
    ParamSpec("base_frame", "base_link", "vehicle frame of the path and trajectory outputs", "str",
              pattern=r"[A-Za-z_][\w/]*"),
    ParamSpec("odom_frame", "odom", "frame of the world_path_topic output when the odometry header has no "
              "frame_id (REP-105: odometry is in odom)", "str", pattern=r"[A-Za-z_][\w/]*"),
    ParamSpec("lidar_frame", "lidar_top", "the model's reference frame (x right, y forward) in /tf_static; "
              "empty = the rig_file LIDAR_TOP pose (a virtual LiDAR, e.g. on Autoware/CARLA)",
              "str", pattern=r"([A-Za-z_][\w/]*)?"),
    ParamSpec("extrinsics_source", "tf_static",
              "'tf_static': base_frame -> camera optical frames and lidar_frame from /tf_static; 'tf': from "
              "/tf_static and /tf (stamped sensor poses, e.g. carla-ros-bridge; no rig file needed); "
              "'rig': from rig_file", "str", choices=("tf_static", "tf", "rig"), on_configure=True),
    ParamSpec("tf_max_age", 0.5, "extrinsics_source tf: a /tf transform on the way from base_frame to a "
              "camera must be stamped within this (s) of the front image; older is stale (no plan)",
              "float", 0.001, 60.0),
    ParamSpec("intrinsics_source", "camera_info",
              "'camera_info': from each camera's CameraInfo; 'rig': rig_file intrinsics scaled to the image",
              "str", choices=("camera_info", "rig")),
    ParamSpec("rig_file", "", "camera rig JSON (nuscenes_rig_n015.json format); empty = the packaged "
              "nuScenes rig", "str", on_configure=True),
    ParamSpec("odom_topic", "odom", "nav_msgs/Odometry of base_frame (input)", "str", pattern=TOPIC_PATTERN,
              on_configure=True),
    ParamSpec("command_topic", "dima/command",
              "dima_msgs/DrivingCommand (input), subscribed transient local (latched): a command published "
              "once before the node started is received; volatile publishers work too",
              "str", pattern=TOPIC_PATTERN, on_configure=True),
    ParamSpec("default_command", 2, "command used until one is received (0 right, 1 left, 2 straight)", "int",
              0, 2),
    ParamSpec("max_command_age", 0.0, "a command older than this (s) falls back to default_command; "
              "0 = commands never expire", "float", 0.0, 3600.0),
    ParamSpec("sensor_qos", "best_effort", "camera/odometry QoS: best_effort (live) or reliable (bag replay)",
              "str", choices=("best_effort", "reliable"), on_configure=True),
    ParamSpec("sensor_qos_depth", 1, "camera/odometry QoS history depth", "int", 1, 100, on_configure=True),
    ParamSpec("sync_tolerance", 0.1, "max |camera stamp - front camera stamp| (s) for one frame set", "float",
              0.0, 1.0),
    ParamSpec("sync_wait", 0.05, "wall time (s) to wait after the front image for the other cameras", "float",
              0.0, 1.0),
    ParamSpec("max_input_age", 0.5, "front camera stamp may lag the node clock by at most this (s)", "float",
              0.001, 60.0),
    ParamSpec("max_odom_age", 0.25, "odometry must bracket or lie within this (s) of the front camera stamp",
              "float", 0.001, 10.0),
    ParamSpec("missing_camera_policy", "mask", "a side camera without an image within sync_tolerance: "
              "'mask' = black image; 'reuse_last' = its last image if younger than max_reuse_age, else mask",
              "str", choices=("mask", "reuse_last")),
    ParamSpec("max_reuse_age", 0.5, "reuse_last: oldest reusable side image (s) relative to the front stamp",
              "float", 0.0, 10.0),
    ParamSpec("time_jump_reset", 1.0, "a front stamp this far (s) before the last one is a clock reset/bag "
              "loop: temporal state is reset; smaller backward steps are dropped as out of order", "float",
              0.0, 3600.0),
    ParamSpec("max_scene_gap", 2.0, "a gap (s) between planned frames above this starts a new scene "
              "(no temporal BEV)", "float", 0.0, 3600.0),
    ParamSpec("min_plan_period", 0.0, "plan at most once per this many seconds of input time (0 = every "
              "front image the worker can take)", "float", 0.0, 60.0),
    ParamSpec("use_ego_status", False, "pass odometry-derived ego status to the planner ('+' models)", "bool"),
    ParamSpec("publish_markers", True, "publish markers_topic (only when subscribed)", "bool"),
    ParamSpec("marker_score_threshold", 0.3, "agents / map elements drawn in markers_topic need this "
              "class probability", "float", 0.0, 1.0),
    ParamSpec("decode_threads", 2, "threads decoding/validating images off the executor (cv2 releases the "
              "GIL; more threads than cores only compete with the model)", "int", 1, 32, on_configure=True),
    ParamSpec("min_image_size", 32, "images narrower or lower than this (px) are rejected", "int", 1, 4096),
    ParamSpec("max_image_pixels", 4096 * 4096, "images declaring more pixels (JPEG/PNG header or "
              "width x height) are rejected before decoding (decompression bombs)", "int", 1, 1 << 30),
    ParamSpec("max_extrinsic_translation", 50.0, "a /tf_static transform longer than this (m) is rejected",
              "float", 0.0, 1e6),
    ParamSpec("max_odom_position", 1e7, "odometry farther than this (m, any axis) from its origin is "
              "rejected (UTM coordinates fit)", "float", 0.0, 1e12),
    ParamSpec("max_speed", 100.0, "odometry faster than this (m/s) is rejected", "float", 0.0, 1e4),
    ParamSpec("max_plan_distance", 200.0, "a planned waypoint farther than this (m) is not published",
              "float", 1.0, 1e5),
    ParamSpec("no_plan_warn_after", 1.0, "front images arrive but no plan for this long (s): planning WARN",
              "float", 0.05, 3600.0),
    ParamSpec("no_plan_error_after", 3.0, "... and for this long (s): planning ERROR", "float", 0.05, 3600.0),
    ParamSpec("loss_warn_ratio", 0.05, "inputs WARN when more than this share of an input's recent frames "
              "(expected from their stamps) never reached the node", "float", 0.0, 1.0),
    ParamSpec("diagnostics_period", 1.0, "period (s) of /diagnostics", "float", 0.05, 60.0, on_configure=True),
    ParamSpec("front_timeout", 1.0, "no front image for this long (s) while active is reported as an error",
              "float", 0.01, 60.0),
    ParamSpec("autoware_objects_score_threshold", 0.3, "autoware_objects_topic carries the agents whose class "
              "probability reaches this", "float", 0.0, 1.0),
] + _camera_specs() + [
    ParamSpec(name, default, f"{msg} (output): {what}", "str", pattern=TOPIC_PATTERN, on_configure=True)
    for name, (default, msg, what) in OUTPUT_TOPICS.items()
] + [
    ParamSpec(name, default, f"{msg} (output): {what}", "str", pattern=f"({TOPIC_PATTERN})?", on_configure=True)
    for name, (default, msg, what) in OPTIONAL_OUTPUT_TOPICS.items()
]

PARAMS: dict[str, ParamSpec] = {s.name: s for s in _SPECS}
# Declared by rclpy itself for every node; allowed in params files.
BUILTIN_PARAMS = frozenset({"use_sim_time", "start_type_description_service"})


@dataclass(frozen=True)
class CoreParams:
    """The parameters the per-frame core (planner_core.PlannerCore) reads, typed. Their
    defaults, ranges and meaning are the PARAMS table's (from_values); the node builds one at
    configure and a new one whenever a parameter changes, so each frame reads one snapshot."""
    max_input_age: float
    time_jump_reset: float
    min_plan_period: float
    sync_tolerance: float
    max_reuse_age: float
    missing_camera_policy: str
    min_image_size: int
    max_image_pixels: int
    max_odom_age: float
    max_odom_position: float
    max_speed: float
    default_command: int
    max_command_age: float
    use_ego_status: bool
    max_scene_gap: float
    max_plan_distance: float
    odom_frame: str
    base_frame: str
    lidar_frame: str
    intrinsics_source: str
    extrinsics_source: str
    tf_max_age: float
    max_extrinsic_translation: float
    precision: str
    camera_frames: dict[str, str]  # cameras.<CAM>.frame_id; empty = the image header's frame_id
    camera_rectified: dict[str, bool]  # cameras.<CAM>.rectified

    @classmethod
    def from_values(cls, values: Any = None) -> CoreParams:
        """From the node's flat {name: value} (PARAMS names); None or a missing name: its default."""
        values = values or {}

        def get(name: str) -> Any:
            return values[name] if name in values else PARAMS[name].default

        per_camera = {"camera_frames": "frame_id", "camera_rectified": "rectified"}
        kw = {f.name: get(f.name) for f in fields(cls) if f.name not in per_camera}
        kw.update({field: {cam: get(f"cameras.{cam}.{key}") for cam in CAMERAS} for field, key in per_camera.items()})
        return cls(**kw)


def unknown_parameters(given: Any, declared: Any = None) -> list[str]:
    """One message per parameter in `given` (names set by -p or a params file) that the node
    does not declare, with the closest declared name: rclpy would silently ignore them."""
    import difflib

    known = set(PARAMS if declared is None else declared) | BUILTIN_PARAMS
    out = []
    # qos_overrides.* are read by rclpy itself when a publisher/subscription is created.
    for name in sorted(n for n in set(given) - known if not n.startswith("qos_overrides.")):
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        out.append(f"unknown parameter {name!r} is ignored{hint}")
    return out


def validator(table: dict[str, ParamSpec]) -> Callable[[str, Any], str | None]:
    """validate(name, value) for a node's ParamSpec table: the reason `value` is refused, or None."""

    def validate(name: str, value: Any) -> str | None:
        spec = table.get(name)
        if spec is None:
            return None if name in BUILTIN_PARAMS else f"unknown parameter {name!r}"
        return spec.check(value)

    return validate


validate = validator(PARAMS)  # the planner node's


def flatten_ros_params(doc: dict, node_name: str = NODE_NAME) -> dict[str, Any]:
    """The node's flat {dotted.name: value} from a ROS params YAML document
    (`node_name: ros__parameters: {...}`, also under `/**` or a namespace path)."""
    out: dict[str, Any] = {}
    for key, section in (doc or {}).items():
        target = key.rstrip("/").split("/")[-1]
        if target not in (node_name, "**") or not isinstance(section, dict):
            continue
        params = section.get("ros__parameters", {})

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}{k}.", v)
            else:
                out[prefix[:-1]] = value

        walk("", params)
    return out


def resolve_checkpoint(value: str, cwd: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(checkpoint directory to load, every candidate tried, in order).

    Absolute (or ~) paths are used as given. A relative path is looked up in the working
    directory first, then where the package's own files are (resources.resource_roots: the
    source checkout, the ament share directory, the venv's share directory), so that the
    default works from any directory with or without a sourced ament environment.
    When none exists the first candidate is returned, so the loader's error names it and
    the caller can list the others.
    """
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return path, [path]
    tried = resources.candidates(path, cwd or os.getcwd())
    for c in tried:
        if c.is_dir():
            return c, tried
    return tried[0], tried
