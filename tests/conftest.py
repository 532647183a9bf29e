"""Test-wide safety and shared fixtures.

DDS must never leave loopback: before any test can touch rclpy, discovery is limited to
localhost and the domain id is set per test session (child processes inherit it).
"""
from __future__ import annotations

import os

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
