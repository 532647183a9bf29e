"""Broken checkpoints at configure: one diagnostic naming the file, the node stays
unconfigured and alive, and configures once the checkpoint is fixed (no restart).

Faults: weights truncated mid-file, one byte flipped, a meta.json whose sha256 is another
file's, a config.yaml of another architecture, meta.json missing, weights missing. The
node is a real process driven over DDS; the checkpoint directory is rewritten in place
between configure attempts, as an operator fixing a deployment would.
"""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from dima_planner.ros.env import pid_domain_id
from dds_harness import stop_node_process
from test_ros_node import Driver, _call, checkpoint, start_node  # noqa: F401 - checkpoint is a fixture

from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.timeout(240)]


def _truncate(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return "model.safetensors", "corrupt or truncated"


def _flip(d):
    w = d / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[len(b) // 2] ^= 0xFF
    w.write_bytes(bytes(b))
    return "model.safetensors", "corrupt or truncated"


def _wrong_hash(d):
    meta = json.loads((d / "meta.json").read_text())
    meta["sha256"] = "0" * 64
    (d / "meta.json").write_text(json.dumps(meta))
    return "model.safetensors", "does not match"


def _wrong_config(d):
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["model"]["ffn_dim"] = int(cfg["model"]["ffn_dim"]) * 2
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return "model.safetensors", "different architecture"


def _no_meta(d):
    (d / "meta.json").unlink()
    return "meta.json", "has no meta.json"


def _no_weights(d):
    (d / "model.safetensors").unlink()
    return "model.safetensors", "has no model.safetensors"


FAULTS = [_truncate, _flip, _wrong_hash, _wrong_config, _no_meta, _no_weights]


def test_broken_checkpoints_fail_configure_cleanly_and_configure_once_fixed(checkpoint, tmp_path):  # noqa: F811
    assert "ffn_dim" in yaml.safe_load((checkpoint / "config.yaml").read_text())["model"]
    work = tmp_path / "dima_tiny"
    domain = pid_domain_id(91)
    proc = start_node(domain, "-p", "autostart:=false", "-p", f"checkpoint:={work}")
    drv = Driver(domain)
    try:
        change = drv.node.create_client(ChangeState, "/dima_planner/change_state")
        get = drv.node.create_client(GetState, "/dima_planner/get_state")
        configure = ChangeState.Request(transition=Transition(label="configure"))
        for fault in FAULTS:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(checkpoint, work)
            name, words = fault(work)
            n_diag = len(drv.diags)
            assert _call(drv, change, configure, 60.0).success is False, fault.__name__
            assert _call(drv, get, GetState.Request()).current_state.id == State.PRIMARY_STATE_UNCONFIGURED
            model = drv.wait(lambda: len(drv.diags) > n_diag and (d := drv.diag_values("model")) and words in d[1]
                             and d, 10)
            assert model, f"{fault.__name__}: /diagnostics says {drv.diag_values('model')}"
            assert model[2] == 2 and name in model[1] and str(work) in model[1], model[1]
            assert proc.poll() is None, f"{fault.__name__} ended the node"
        # fixed in place: configure succeeds without restarting the node
        shutil.rmtree(work)
        shutil.copytree(checkpoint, work)
        assert _call(drv, change, configure, 60.0).success
        assert drv.wait(lambda: (d := drv.diag_values("model")) and d[1].startswith("loaded"), 10)
        assert proc.poll() is None
    finally:
        drv.close()
        out = stop_node_process(proc)
    assert proc.returncode == 0, out[-3000:]
