"""Figures (PNG, Agg backend): BEV views of planned vs GT trajectories, and method bar charts."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..data.sample import COMMAND_NAMES, MAP_CLASSES, Sample  # noqa: E402
from ..data.occupancy import box_corners  # noqa: E402

_MAP_COLOURS = {"divider": "tab:orange", "ped_crossing": "tab:blue", "boundary": "tab:red"}


def plot_bev(sample: Sample, predictions: dict[str, np.ndarray], path: str | Path, view: float = 35.0) -> Path:
    """One sample in the LiDAR frame (x right, y up): occupancy at 3 s (grey, union over steps),
    map vectors, agent boxes, the GT future and each method's plan."""
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    occ = sample.occupancy.any(axis=0)
    # Occupancy row r covers y = 50 - 0.5 r, column c covers x = 0.5 c - 50.
    ax.imshow(occ, cmap="Greys", alpha=0.35, extent=(-50, 50, -50, 50), origin="upper", vmin=0, vmax=1)
    for vec, lab in zip(sample.map_vectors, sample.map_labels):
        ax.plot(vec[:, 0], vec[:, 1], color=_MAP_COLOURS[MAP_CLASSES[lab]], lw=1)
    for b in sample.agent_boxes:
        c = box_corners(b[0], b[1], b[6], b[3], b[4])
        ax.fill(c[:, 0], c[:, 1], facecolor="none", edgecolor="k", lw=0.8)
    ego = box_corners(0.0, 0.5, np.pi / 2, 4.084, 1.85)
    ax.fill(ego[:, 0], ego[:, 1], color="tab:green", alpha=0.6)
    m = sample.ego_fut_mask > 0
    gt = np.vstack([[0, 0], sample.ego_fut_traj[m]])
    ax.plot(gt[:, 0], gt[:, 1], "o-", color="tab:green", lw=2, ms=3, label="GT")
    for (name, pred), colour in zip(predictions.items(), plt.cm.tab10(np.linspace(0.3, 1, max(len(predictions), 1)))):
        p = np.vstack([[0, 0], np.asarray(pred)])
        ax.plot(p[:, 0], p[:, 1], "x--", color=colour, lw=1.5, ms=4, label=name)
    ax.set_xlim(-view / 2, view / 2)
    ax.set_ylim(-view / 3, view)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m, right)")
    ax.set_ylabel("y (m, forward)")
    ax.set_title(f"{sample.scene_name} {sample.token[:8]}  cmd={COMMAND_NAMES[sample.command]}", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_method_bars(results: dict[str, dict[str, Any]], path: str | Path, convention: str = "vad") -> Path:
    """Two panels (L2 in m, collision in %) with 1s/2s/3s/avg bars per method."""
    keys = ("1s", "2s", "3s", "avg")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    width = 0.8 / max(len(results), 1)
    x = np.arange(len(keys))
    for i, (name, res) in enumerate(results.items()):
        r = res[convention]
        axes[0].bar(x + i * width, [r[f"l2_{k}"] for k in keys], width, label=name)
        axes[1].bar(x + i * width, [100 * r[f"col_{k}"] for k in keys], width, label=name)
    for ax, title in zip(axes, ("L2 (m)", "collision (%)")):
        ax.set_xticks(x + width * (len(results) - 1) / 2, keys)
        ax.set_title(f"{title}, {convention} convention")
        ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
