"""What a replay of a rosbag2 into the planner needs from the bag itself (no rclpy here).

`nuscenes_replay.launch.py`, its test and `dima demo` share these, so that the replay
follows the bag instead of assuming one layout:
* the image transport: `dima bag convert` writes raw `sensor_msgs/Image` on
  `/cam_*/image_raw`, or with `--compressed` the original JPEGs as `CompressedImage` on
  `/cam_*/image_raw/compressed` (image_transport's naming). The node must subscribe to the
  one the bag carries, with the matching message type, or it never sees a front image.
* the player's remaps when the planner runs in a namespace (multi-instance): the bag's
  absolute names are moved under the namespace, so two replays never cross.
* an RViz configuration whose image view shows the transport the bag carries (RViz takes
  the transport from the topic's last name: `.../compressed`).
"""
from __future__ import annotations

from pathlib import Path

from . import bag_io

TRANSPORTS = ("auto", "raw", "compressed")


class ReplayError(ValueError):
    """A bag the planner cannot be fed from, with the reason."""


def bag_topics(bag: str | Path) -> dict[str, str]:
    """{topic: message type} of a rosbag2 directory (metadata.yaml is all that is read)."""
    from rosbags.rosbag2 import Reader, ReaderError

    bag = Path(bag)
    if not (bag / "metadata.yaml").is_file():
        raise ReplayError(f"{bag} is not a rosbag2 directory (no metadata.yaml)")
    try:
        with Reader(bag) as reader:
            return {c.topic: c.msgtype for c in reader.connections}
    except ReaderError as exc:
        raise ReplayError(f"cannot read {bag}: {exc}") from None


def camera_transports(topics: dict[str, str], transport: str = "auto") -> dict[str, tuple[str, str]]:
    """{camera: (image topic in the bag, 'raw' | 'compressed')} for the six cameras.

    transport 'auto' takes what the bag carries (raw where a bag holds both, no decoding);
    'raw' / 'compressed' insist on that one. A camera the bag lacks is left out (the node
    masks a missing side camera); a bag without the front camera in the transport asked
    for is an error, since the node would never plan."""
    if transport not in TRANSPORTS:
        raise ReplayError(f"transport {transport!r} is not one of {', '.join(TRANSPORTS)}")
    wanted = {"raw": (False,), "compressed": (True,), "auto": (False, True)}[transport]
    out = {}
    for cam in bag_io.CAMERAS_ORDER:
        for compressed in wanted:
            topic = bag_io.image_topic(cam, compressed)
            if topics.get(topic) == bag_io.TYPES["compressed" if compressed else "image"]:
                out[cam] = (topic, "compressed" if compressed else "raw")
                break
    front = bag_io.CAMERAS_ORDER[0]
    if front not in out:
        kinds = {"auto": "raw or compressed", "raw": "raw", "compressed": "compressed"}[transport]
        seen = sorted(t for t, ty in topics.items() if ty in (bag_io.TYPES["image"], bag_io.TYPES["compressed"]))
        raise ReplayError(f"the bag has no {kinds} {front} image topic ({bag_io.image_topic(front, False)} or "
                          f"{bag_io.image_topic(front, True)}); image topics in it: {', '.join(seen) or 'none'}")
    return out


def node_parameters(bag: str | Path, transport: str = "auto") -> dict[str, str]:
    """The planner's camera parameters for this bag: `cameras.<CAM>.topic` (relative, so a
    namespace applies) and `cameras.<CAM>.transport`."""
    params = {}
    for cam, (topic, kind) in camera_transports(bag_topics(bag), transport).items():
        params[f"cameras.{cam}.topic"] = topic.lstrip("/")
        params[f"cameras.{cam}.transport"] = kind
    return params


def planner_params_file(params: dict[str, str], directory: str | Path | None = None) -> Path:
    """Write `params` (dotted planner parameter names, e.g. node_parameters()) as a ROS
    parameters file for the planner in any namespace; returns its path. Launch files pass it
    to planner.launch.py as `extra_params_file`, so that the node is started in one place."""
    import tempfile

    import yaml

    nested: dict = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = nested
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="dima_params_"))
    path = directory / "planner_extra.yaml"
    path.write_text(yaml.safe_dump({"/**/dima_planner": {"ros__parameters": nested}}, sort_keys=False))
    return path


def namespace_remaps(bag: str | Path, namespace: str) -> list[str]:
    """`old:=new` remaps that move every topic of the bag under `namespace` ('' or '/': none).
    /clock moves too: each replay drives its own planner's sim time."""
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if not ns:
        return []
    return [f"{t}:={ns}{t}" for t in sorted(bag_topics(bag)) + [bag_io.CLOCK_TOPIC]]


def rviz_config(template: str | Path, out: str | Path, image_topic: str, namespace: str = "") -> Path:
    """Write `template` (launch/dima.rviz) with the front-camera view on `image_topic` and
    every topic under `namespace`; returns the written path."""
    import yaml

    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    doc = yaml.safe_load(Path(template).read_text())
    for display in doc["Visualization Manager"]["Displays"]:
        topic = display.get("Topic")
        if not isinstance(topic, dict):
            continue
        if display["Class"] == "rviz_default_plugins/Image":
            topic["Value"] = image_topic
        topic["Value"] = ns + topic["Value"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out
