"""ament_python package of the DiMA planner. Also pip-installable (editable) into a venv."""
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "dima_planner"
here = Path(__file__).resolve().parent
# The repository's top-level launch/ and params/ are installed into share/ when this
# package is built inside the repository (colcon or pip); symlinks are not required.
repo = here.parent.parent.parent


def _rel(pattern: str) -> list[str]:
    import os

    return [os.path.relpath(p, here) for p in sorted(glob(str(repo / pattern)))]


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["data/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", _rel("launch/*.py") + _rel("launch/*.rviz")),
        ("share/" + package_name + "/params", _rel("params/*.yaml") + _rel("params/*.xml")),
        ("share/" + package_name + "/params/ros", _rel("params/ros/*.yaml")),
        ("share/" + package_name + "/params/train", _rel("params/train/*.yaml")),
        ("share/" + package_name + "/params/sim", _rel("params/sim/*.yaml")),
        # The checkpoints, so that `ros2 launch` works on an installed workspace: the default
        # (stage-2 DiMA, its MLLM branch included) and the stage-1 planner it started from.
        ("share/" + package_name + "/checkpoints/dima_tiny_stage2", _rel("checkpoints/dima_tiny_stage2/*")),
        ("share/" + package_name + "/checkpoints/dima_tiny", _rel("checkpoints/dima_tiny/*")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="dima maintainers",
    maintainer_email="maintainers@dima.invalid",
    description="DiMA planner: model, data, evaluation, training, ROS 2 nodes and bag tools.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "dima = dima_planner.cli:main",
            "dima_planner_node = dima_planner.ros.planner_node:main",
            "dima_mllm_node = dima_planner.ros.mllm_node:main",
            "dima_sim_node = dima_planner.ros.sim_node:main",
        ],
    },
)
