"""What a run shows and records: a tqdm bar and lines on the console, TensorBoard scalars
under <out_dir>/tb (main process only; progress and TensorBoard each switchable)."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

VAL_SCALARS = ("l2_1s", "l2_2s", "l2_3s", "l2_avg", "col_avg", "teacher_l2_avg")


class Logger:
    def __init__(self, cfg, main: bool, world: int, step: int, total: int):
        self.every = cfg.logging.log_every
        self.world = world
        self.console = cfg.logging.progress and main
        self.writer = None
        if cfg.logging.tensorboard and main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(cfg.out_dir) / "tb"))
        self.bar: tqdm | None = None
        self.step, self.total = step, total
        self.t0, self.seen = time.perf_counter(), 0

    def start(self, line: str) -> None:
        """The run's description line, then the progress bar from the resumed step."""
        if self.console:
            print(line, file=sys.stderr)
        self.bar = tqdm(total=self.total, initial=self.step, desc="train", unit="step", disable=not self.console)
        self.t0 = time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def train_step(self, step: int, batch_size: int, loss: float, terms: dict, norms: dict[str, float], lr: float,
                   extra: dict[str, float]) -> None:
        """One step: bar postfix (loss, planning loss, MLLM loss, samples/s); every
        log_every steps the loss terms, lr, gradient norms and rate to TensorBoard, plus the
        objective's `extra` scalars (those under grad_encoder/ on every step they exist)."""
        self.seen += batch_size * self.world
        rate = self.seen / max(self.wall(), 1e-9)
        self.bar.update(1)
        post = {"loss": f"{loss:.3f}", "plan": f"{float(terms['plan'].detach()):.3f}"}
        if "mllm_total" in terms:
            post["mllm"] = f"{float(terms['mllm_total'].detach()):.3f}"
        self.bar.set_postfix(**post, sps=f"{rate:.1f}")
        w = self.writer
        if w is None:
            return
        if step % self.every == 0:
            for k, v in terms.items():
                w.add_scalar(f"train/{k}", float(v), step)
            w.add_scalar("train/lr", lr, step)
            for k, v in norms.items():
                w.add_scalar(f"train/{k}", v, step)
            w.add_scalar("train/samples_per_s", rate, step)
        for k, v in extra.items():
            if k.startswith("grad_encoder/") or step % self.every == 0:
                w.add_scalar(k, v, step)

    def validation(self, step: int, metrics: dict[str, Any], note: str) -> None:
        self.write(f"step {step} val: L2 avg {metrics['l2_avg']:.3f} m, collision avg "
                   f"{100 * metrics['col_avg']:.2f} % over {metrics['num_samples']} samples")
        if note:
            self.write(f"step {step} val: {note}")
        if self.writer is not None:
            for k in VAL_SCALARS:
                if k in metrics:
                    self.writer.add_scalar(f"val/{k}", metrics[k], step)
            if "distill_open" in metrics:
                self.writer.add_scalar("val/distill_open", float(metrics["distill_open"]), step)

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
