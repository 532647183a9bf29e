"""Rewrite the build machine's include paths in the PyPI ROS wheels' CMake exports.

The ROS 2 wheels are built in a manylinux image whose interpreter lives under
/opt/python/cp311-cp311. Their exported CMake targets (e.g. the rosidl_generator_py
exports that every interface package links against) name that interpreter's include
directory and numpy's, which do not exist here, so building dima_msgs fails. This points
them at the running interpreter's include dir and numpy's. Idempotent.
"""
from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy


def main(venv: str) -> int:
    py_inc = sysconfig.get_paths()["include"]
    np_inc = numpy.get_include()
    pattern = re.compile(r"/opt/python/cp311-cp311/(include/python3\.11|lib/python3\.11/site-packages/numpy/(_core|core)/include)")
    changed = 0
    for path in Path(venv, "share").rglob("*.cmake"):
        text = path.read_text()
        if "/opt/python/" not in text:
            continue
        new = pattern.sub(lambda m: py_inc if m.group(1).startswith("include") else np_inc, text)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"[setup] rewrote {changed} CMake export file(s): python include {py_inc}, numpy include {np_inc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
