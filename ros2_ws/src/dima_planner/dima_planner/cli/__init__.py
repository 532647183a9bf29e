"""`dima`: the project's one command line, the top layer.

Each subcommand is a module exposing `add_arguments(parser)` and `run(args) -> int`: in the
package that does the work when that package is all it needs (synth, train, export, the bag
tools), else here (cli/eval.py: evaluation with the reasoning engine of the runtime;
cli/sim.py: the simulator with the planner node over ROS) or dima_planner/demo.py.
Modules are imported only when their subcommand runs, so `dima synth` never pays for torch
or rclpy.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dima_planner.config import ConfigError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("dima_planner.synth.cli", "generate the embedded nuScenes-format world"),
    "train": ("dima_planner.train", "train the planner (stage 1) or DiMA (stage 2)"),
    "eval": ("dima_planner.cli.eval", "score a checkpoint and the baselines on a dataset"),
    "export": ("dima_planner.export", "write the LLM-free planner alone for deployment"),
    "dagger": ("dima_planner.dagger.cli", "on-policy training: DAgger with the privileged expert as labeller"),
    "sim": ("dima_planner.cli.sim", "closed loop: drive routes of the generated world and score them"),
    "demo": ("dima_planner.demo", "the main job: world -> bag -> planner node -> metrics"),
}
BAG_COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("dima_planner.bags.bag_convert", "write a rosbag2 (MCAP) from a nuScenes-format dataroot"),
    "play": ("dima_planner.ros.bag_play", "replay a rosbag2 through rclpy with original timing"),
    "eval": ("dima_planner.bags.bag_eval", "score a recorded run of the node against the GT in the bag"),
    "record": ("dima_planner.ros.bag_record", "record topics into a rosbag2 (MCAP)"),
    "info": ("dima_planner.bags.bag_info", "what `ros2 bag info` prints: duration, topics, counts, compression"),
}


def _add(sub: argparse._SubParsersAction, name: str, module: str, help_: str, selected: str | None) -> None:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(_module=module)
    # Import a module only when its subcommand is the one being run (fast --help).
    if name == selected:
        importlib.import_module(module).add_arguments(parser)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dima", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        _add(sub, name, module, help_, argv[0] if argv else None)
    bag = sub.add_parser("bag", help="rosbag2 tools", description="rosbag2 tools")
    bag_sub = bag.add_subparsers(dest="bag_command", required=True, metavar="BAG_COMMAND")
    for name, (module, help_) in BAG_COMMANDS.items():
        _add(bag_sub, name, module, help_, argv[1] if argv[:1] == ["bag"] and len(argv) > 1 else None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)

    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ConfigError as e:
        print(f"dima {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
