"""docs/ROS_INTERFACE.md is what the parameter table generates (regenerate: see its header)."""
from pathlib import Path

from dima_planner.ros import interface_doc
from dima_planner.runtime.params import PARAMS

DOC = Path(__file__).resolve().parents[1] / "docs" / "ROS_INTERFACE.md"


def test_interface_doc_is_in_sync_with_the_parameter_table():
    assert DOC.read_text() == interface_doc.render(), (
        "docs/ROS_INTERFACE.md is stale: python -m dima_planner.ros.interface_doc > docs/ROS_INTERFACE.md")


def test_every_parameter_and_topic_is_documented():
    text = DOC.read_text()
    for name in PARAMS:
        assert f"| `{name}` |" in text, name
    assert "`dima/path_odom`" in text and "`/tf_static`" in text
