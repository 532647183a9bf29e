"""nuScenes-format data pipeline producing `Sample` objects (see sample.py)."""
