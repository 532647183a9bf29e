"""Rendezvous for the multi-process tests (torch.multiprocessing.spawn, env:// as torchrun sets it).

A port picked in the parent and used minutes later can be taken in between: gloo's own
connections come from the same ephemeral range (CI hit EADDRINUSE that way, on the third
of four process groups of one test). So rank 0 picks a free port just before it starts the
store, and hands it to the other ranks through a file.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_rendezvous(rank: int, world: int, directory: str | Path, tag: str, timeout: float = 120.0) -> int:
    """Set MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK/LOCAL_RANK for one process group named
    `tag` (one file per group in `directory`, shared by the ranks); returns the port."""
    path = Path(directory) / f"{tag}.port"
    if rank == 0:
        port = free_port()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(path)  # atomic: the other ranks never read a half-written file
    else:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 never published {path}")
            time.sleep(0.02)
        port = int(path.read_text())
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    return port
