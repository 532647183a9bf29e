"""Bag layout shared by `dima bag convert/play/eval/record`: topics, typestore, QoS, stamps.

No rclpy here: conversion and evaluation work without a ROS runtime. Bags are rosbag2
directories (metadata.yaml version 9 + one MCAP file, CDR), written and read with
`rosbags`, so `ros2 bag play`, Foxglove and the `mcap` tools read them too.
"""
from __future__ import annotations

import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from dima_planner import resources
from dima_planner.data.sample import CAMERAS

# ---- topics (the planner node's defaults) -------------------------------------------------


def camera_ns(camera: str) -> str:
    """CAM_FRONT -> /cam_front."""
    return f"/{camera.lower()}"


def image_topic(camera: str, compressed: bool) -> str:
    return f"{camera_ns(camera)}/image_raw" + ("/compressed" if compressed else "")


def camera_info_topic(camera: str) -> str:
    return f"{camera_ns(camera)}/camera_info"


# sensor_msgs/CompressedImage.format as compressed_image_transport writes it
# ("ORIG_PIXFMT; CODEC compressed COMPRESSED_PIXFMT"): decoding gives back the rgb8 image the
# raw topic carries. Used by the bags and the node's image encoder alike.
COMPRESSED_FORMATS = {"jpeg": "rgb8; jpeg compressed bgr8", "png": "rgb8; png compressed bgr8"}

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
ODOM_TOPIC = "/odom"
COMMAND_TOPIC = "/dima/command"
GT_FUTURE_TOPIC = "/dima/gt/ego_future"
GT_SAMPLE_TOPIC = "/dima/gt/sample"
TRAJECTORY_TOPIC = "/dima/trajectory"
PATH_TOPIC = "/dima/path"
CLOCK_TOPIC = "/clock"
REASONING_TOPIC = "/dima/reasoning"  # dima_mllm_node's commentary

CAMERAS_ORDER = CAMERAS

# ---- types -------------------------------------------------------------------------------

TYPES = {
    "image": "sensor_msgs/msg/Image",
    "compressed": "sensor_msgs/msg/CompressedImage",
    "camera_info": "sensor_msgs/msg/CameraInfo",
    "tf": "tf2_msgs/msg/TFMessage",
    "odom": "nav_msgs/msg/Odometry",
    "path": "nav_msgs/msg/Path",
    "string": "std_msgs/msg/String",
    "command": "dima_msgs/msg/DrivingCommand",
    "trajectory": "dima_msgs/msg/PlannedTrajectory",
    "clock": "rosgraph_msgs/msg/Clock",
}


def _interface_msg_dir(package: str) -> Path | None:
    """Directory of a package's .msg sources: the source tree first, else its ament share dir."""
    root = resources.source_root()
    candidates = [] if root is None else [
        root / "ros2_ws" / "src" / package / "msg",
        root / "tools" / "interfaces" / package / "msg",
    ]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.msg")):
            return c
    share = resources.ament_share_dir(package)
    if share is None:  # not installed in an ament prefix (or no AMENT_PREFIX_PATH)
        return None
    share = share / "msg"
    if share.is_dir() and any(share.glob("*.msg")):
        return share
    return None


def typestore_distro() -> Stores:
    """The rosbags store of the running ROS distro (Jazzy unless it is Kilted): the message
    definitions and RIHS01 hashes written into bags are those of the distro that reads them."""
    return {"kilted": Stores.ROS2_KILTED}.get(resources.ros_distro(), Stores.ROS2_JAZZY)


def make_typestore() -> Typestore:
    """The running distro's message definitions plus dima_msgs (and tf2_msgs if the store lacked it).

    Types are parsed from the .msg sources so that the definitions written into the bag
    (with every nested dependency) and their RIHS01 hashes equal what rosidl generates.
    """
    store = get_typestore(typestore_distro())
    extra: dict = {}
    for package in ("dima_msgs", "tf2_msgs"):
        if package == "tf2_msgs" and "tf2_msgs/msg/TFMessage" in store.types:
            continue
        msg_dir = _interface_msg_dir(package)
        if msg_dir is None:
            raise FileNotFoundError(f"cannot find the .msg sources of {package} (looked in the source tree "
                                    "and the ament share directory)")
        for path in sorted(msg_dir.glob("*.msg")):
            extra.update(get_types_from_msg(path.read_text(), f"{package}/msg/{path.stem}"))
    store.register(extra)
    return store


# ---- writing -----------------------------------------------------------------------------

COMPRESSIONS = ("zstd", "none")


def open_writer(path: str | Path, compression: str = "zstd"):
    """A rosbag2 (version 9, MCAP) Writer, not yet opened. compression='zstd' compresses each
    MCAP chunk with zstd, as `ros2 bag record` does by default (readers decompress it
    transparently); 'none' writes plain chunks."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {list(COMPRESSIONS)}")
    writer = Writer(Path(path), version=9, storage_plugin=StoragePlugin.MCAP)
    if compression == "zstd":
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    return writer


# ---- QoS ---------------------------------------------------------------------------------

# rosbag2 (Jazzy/Kilted, metadata version 9) writes RMW_DURATION_INFINITE like this, and
# the history/depth that a recorder sees through the graph API as unknown/0.
_INFINITE = QosTime(9223372036, 854775807)


def recorded_qos(reliable: bool = True, transient_local: bool = False) -> Qos:
    """An offered QoS profile as rosbag2 Jazzy/Kilted records it."""
    return Qos(
        QosHistory.UNKNOWN,
        0,
        QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
        QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
        _INFINITE,
        _INFINITE,
        QosLiveliness.AUTOMATIC,
        _INFINITE,
        False,
    )


# ---- time --------------------------------------------------------------------------------


def us_to_ns(us: int) -> int:
    return int(us) * 1000


def ns_to_sec_nanosec(ns: int) -> tuple[int, int]:
    return int(ns) // 1_000_000_000, int(ns) % 1_000_000_000


def cdr_stamp_ns(raw: bytes) -> int:
    """Header stamp of a serialised message whose first field is std_msgs/Header (CDR:
    4-byte encapsulation header, then int32 sec, uint32 nanosec)."""
    little = raw[1] == 1  # encapsulation id 0x0001 = CDR_LE, 0x0000 = CDR_BE
    sec, nsec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
    return sec * 1_000_000_000 + nsec


# ---- atomic output -----------------------------------------------------------------------


class BagExistsError(FileExistsError):
    pass


@contextmanager
def atomic_bag_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary bag path beside `out`; rename it to `out` only on success.

    A failure (or Ctrl-C) removes the temporary directory, so no partial bag is left.
    """
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise BagExistsError(f"output {out} already exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The bag keeps its final name inside a hidden staging directory: rosbags names the
    # storage file after the bag directory and records it in metadata.yaml and the MCAP.
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging / out.name
        if out.exists():
            shutil.rmtree(out)
        (staging / out.name).rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
