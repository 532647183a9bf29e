"""Damaged MCAP bags: where they break, and the messages before the break.

A recording killed or stopped by a full disk ends mid-chunk, without the MCAP summary and
footer; a copied file can be cut short or have bytes flipped. rosbags' Reader opens an
MCAP through its footer and summary, so it refuses the whole file ("File end magic is
invalid", no file name, no offset) or fails part-way. `open_bag` falls back to reading
such a file front to back (the `mcap` StreamReader, chunk CRCs checked) and serves every
message of every complete chunk before the damage; `BagDamagedError` names the file and
the byte offset of the first record that cannot be read. `dima bag info/play/eval` use
this: info reports the damage, play and eval process the intact messages and then report it.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class BagDamagedError(ValueError):
    """A bag file that can only be read up to `offset` (`intact` messages before it)."""

    def __init__(self, file: Path, offset: int, size: int, reason: str, intact: int):
        self.file, self.offset, self.size, self.reason, self.intact = file, offset, size, reason, intact
        super().__init__(f"{file} is truncated or corrupt at byte offset {offset} of {size} ({reason}); "
                         f"the {intact} messages before it are intact")


class _Counting:
    """A binary file whose read position is known exactly (what the MCAP stream consumed)."""

    def __init__(self, f):
        self.f, self.pos = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        return data


@dataclass
class ScanResult:
    channels: dict[int, Any]  # MCAP channel id -> Channel record
    schemas: dict[int, Any]   # schema id -> Schema record
    counts: dict[int, int]    # channel id -> intact messages
    start_ns: int | None
    end_ns: int | None
    damage: BagDamagedError | None


def iter_mcap(file: Path, sink: ScanResult) -> Iterator[Any]:
    """Message records of `file` in file order, up to the first unreadable record; channels and
    schemas go into `sink` as they come and `sink.damage` says where reading stopped (None: the
    whole file, footer included, is intact)."""
    from mcap.stream_reader import StreamReader

    size = file.stat().st_size
    intact = 0
    with open(file, "rb") as f:
        counting = _Counting(f)
        good_end = 0
        records = StreamReader(counting, validate_crcs=True).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - every way a damaged file fails: EOF, CRC, zstd, struct
                reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if counting.pos >= size and good_end < size:
                    reason = f"the file ends inside a record ({reason})"
                sink.damage = BagDamagedError(file, good_end, size, reason, intact)
                return
            kind = type(record).__name__
            if kind == "Schema":
                sink.schemas[record.id] = record
            elif kind == "Channel":
                sink.channels[record.id] = record
            elif kind == "Message":
                intact += 1
                yield record
            good_end = counting.pos


def scan(file: Path) -> ScanResult:
    """One pass over `file`: its channels, intact message counts and time span, and damage."""
    result = ScanResult({}, {}, {}, None, None, None)
    for m in iter_mcap(file, result):
        result.counts[m.channel_id] = result.counts.get(m.channel_id, 0) + 1
        result.start_ns = m.log_time if result.start_ns is None else min(result.start_ns, m.log_time)
        result.end_ns = m.log_time if result.end_ns is None else max(result.end_ns, m.log_time)
    return result


def bag_files(path: Path) -> list[Path]:
    import yaml

    meta = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    return [path / Path(p).name for p in meta.get("relative_file_paths", [])]


def locate_damage(path: Path) -> BagDamagedError | None:
    """The first damage in a bag directory's files, or None if every file reads to its end."""
    for file in bag_files(path):
        if file.suffix == ".mcap" and file.exists():
            damage = scan(file).damage
            if damage is not None:
                return damage
    return None


class SalvageReader:
    """What rosbags' Reader offers the dima bag tools (connections, start/end time, message
    count, messages()), over the intact part of damaged MCAP files. `damage` says where they break."""

    def __init__(self, path: str | Path):
        from rosbags.interfaces import Connection, ConnectionExtRosbag2, MessageDefinition, MessageDefinitionFormat
        from rosbags.rosbag2.metadata import parse_qos

        self.path = Path(path)
        self.files = [f for f in bag_files(self.path) if f.exists()]
        if not self.files or any(f.suffix != ".mcap" for f in self.files):
            raise ValueError(f"{self.path}: only MCAP files can be salvaged, found {[f.name for f in self.files]}")
        self.connections: list = []
        self._conn: dict[tuple[int, int], Any] = {}  # (file index, channel id) -> Connection
        self.damage: BagDamagedError | None = None
        by_key: dict[tuple[str, str], Any] = {}
        starts, ends, self.message_count = [], [], 0
        for i, file in enumerate(self.files):
            r = scan(file)
            for cid, ch in r.channels.items():
                msgtype = r.schemas[ch.schema_id].name if ch.schema_id in r.schemas else ""
                key = (ch.topic, msgtype)
                if key not in by_key:
                    qos = parse_qos(ch.metadata.get("offered_qos_profiles", "")) if ch.metadata else []
                    by_key[key] = Connection(id=len(by_key) + 1, topic=ch.topic, msgtype=msgtype,
                                             msgdef=MessageDefinition(MessageDefinitionFormat.NONE, ""), digest="",
                                             msgcount=0, ext=ConnectionExtRosbag2("cdr", qos), owner=self)
                c = by_key[key]
                by_key[key] = c._replace(msgcount=c.msgcount + r.counts.get(cid, 0))
                self._conn[(i, cid)] = key
            self.message_count += sum(r.counts.values())
            if r.start_ns is not None:
                starts.append(r.start_ns)
                ends.append(r.end_ns)
            if r.damage is not None and self.damage is None:
                self.damage = r.damage
        self.connections = list(by_key.values())
        self._by_key = by_key
        self.start_time = min(starts) if starts else 0
        self.end_time = max(ends) + 1 if ends else 0
        self.ros_distro = None

    def open(self) -> None:  # the scan in __init__ did the work; here for Reader's interface
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> SalvageReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def messages(self, connections: Collection = (), start: int | None = None,
                 stop: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """(connection, log time, CDR bytes) of the intact messages, in file order."""
        wanted = {(c.topic, c.msgtype) for c in connections}
        for i, file in enumerate(self.files):
            sink = ScanResult({}, {}, {}, None, None, None)
            for m in iter_mcap(file, sink):
                key = self._conn.get((i, m.channel_id))
                if key is None or (wanted and key not in wanted):
                    continue
                if (start is not None and m.log_time < start) or (stop is not None and m.log_time >= stop):
                    continue
                yield self._by_key[key], m.log_time, m.data


def open_bag(path: str | Path):
    """An opened rosbags Reader, or a SalvageReader when the MCAP cannot be opened whole
    (its `damage` set). Raises ValueError for a directory that is not a bag at all."""
    from rosbags.rosbag2 import Reader, ReaderError

    path = Path(path)
    if not (path / "metadata.yaml").is_file():
        raise ValueError(f"{path} is not a rosbag2 directory (no metadata.yaml)")
    reader = Reader(path)
    try:
        reader.open()
        return reader
    except ReaderError as exc:
        damage = locate_damage(path)
        if damage is None:  # not a damaged MCAP: rosbags' reason is the one to give
            raise ValueError(f"cannot read {path}: {exc}") from None
        salvage = SalvageReader(path)
        return salvage


def read_messages(reader, path: Path, **kwargs) -> Iterator[tuple[Any, int, bytes]]:
    """reader.messages(**kwargs); a failure part-way through (a corrupt chunk behind an intact
    footer) ends the iteration with the BagDamagedError locating it, and a SalvageReader's
    damage is raised after its intact messages."""
    try:
        yield from reader.messages(**kwargs)
    except Exception as exc:  # noqa: BLE001 - rosbags raises zstd / struct / KeyError on bad chunks
        damage = locate_damage(path)
        if damage is None:
            raise
        raise damage from exc
    damage = getattr(reader, "damage", None)
    if damage is not None:
        raise damage
