"""`dima bag info`: what `ros2 bag info` prints, without a ROS installation.

Files, size, storage, duration, start/end, message count, per-topic type, count and
serialization format, plus what rosbag2 keeps elsewhere: the MCAP chunk compression and
the `dima.*` custom data that `dima bag convert` writes (scenes, per-scene time offsets).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


@dataclass
class BagInfo:
    path: Path
    files: list[Path]
    size_bytes: int
    storage_id: str
    ros_distro: str | None
    start_ns: int
    end_ns: int
    message_count: int
    topics: list[tuple[str, str, int, str]]  # (name, type, count, serialization format)
    chunk_compression: list[str] = field(default_factory=list)  # MCAP chunk compressions in use
    custom_data: dict[str, str] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) * 1e-9


def read_info(path: str | Path) -> BagInfo:
    """BagInfo of a rosbag2 directory (MCAP or SQLite3). Raises ValueError for a bad bag."""
    import yaml
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    try:
        with Reader(path) as reader:
            counts = {name: info.msgcount for name, info in reader.topics.items()}
            topics = sorted((c.topic, c.msgtype, counts.get(c.topic, 0), c.ext.serialization_format)
                            for c in reader.connections)
            start, end, count, distro = reader.start_time, reader.end_time, reader.message_count, reader.ros_distro
            # MCAP chunk records name their compression ('' = none); rosbags' MCAP storages index them.
            storages = getattr(reader.storage, "storages", [])
            chunks = sorted({c.compression or "none" for st in storages for c in getattr(st, "chunks", [])})
    except ReaderError as exc:
        from .bag_salvage import locate_damage

        # a truncated / corrupt MCAP: say which file and where, not rosbags' "end magic is invalid"
        raise locate_damage(path) or ValueError(f"cannot read {path}: {exc}") from None
    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    files = [path / f["path"] for f in meta.get("files", [])] or [path / p for p in meta.get("relative_file_paths", [])]
    if count == 0:
        start = end = 0
    return BagInfo(path=path, files=files, size_bytes=sum(f.stat().st_size for f in files if f.exists()),
                   storage_id=meta.get("storage_identifier", "?"), ros_distro=distro, start_ns=start, end_ns=end,
                   message_count=count, topics=[t for t in topics],
                   chunk_compression=chunks, custom_data=dict(meta.get("custom_data") or {}))


def _stamp(ns: int) -> str:
    t = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)
    return f"{t.strftime('%b %d %Y %H:%M:%S')}.{ns % 1_000_000_000:09d} UTC ({ns // 1_000_000_000}.{ns % 1_000_000_000:09d})"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def format_info(info: BagInfo) -> str:
    """The `ros2 bag info` layout (field names and topic lines), plus compression and custom data."""
    lines = [
        f"Files:             {', '.join(f.name for f in info.files)}",
        f"Bag size:          {_size(info.size_bytes)}",
        f"Storage id:        {info.storage_id}",
        f"ROS Distro:        {info.ros_distro or 'unknown'}",
        f"Duration:          {info.duration_s:.9f}s",
        f"Start:             {_stamp(info.start_ns)}",
        f"End:               {_stamp(info.end_ns)}",
        f"Messages:          {info.message_count}",
        f"Chunk compression: {', '.join(info.chunk_compression) or 'n/a'}",
    ]
    width = max((len(t[0]) for t in info.topics), default=0)
    for i, (name, typ, count, fmt) in enumerate(info.topics):
        head = "Topic information: " if i == 0 else " " * 19
        lines.append(f"{head}Topic: {name:{width}s} | Type: {typ} | Count: {count} | Serialization Format: {fmt}")
    for key, value in sorted(info.custom_data.items()):
        head = "Custom data:       " if key == min(info.custom_data) else " " * 19
        lines.append(f"{head}{key}: {value}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 directory")


def run(args: argparse.Namespace) -> int:
    try:
        print(format_info(read_info(args.bag)))
    except ValueError as exc:
        print(f"dima bag info: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dima bag info", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
