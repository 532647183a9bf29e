"""rosbag2 files without a ROS runtime: the bag layout (topics, types, QoS), conversion from
a nuScenes-format dataroot, scoring a recorded run, `bag info`, damaged-bag salvage and the
replay parameters. Built on `rosbags` (pure Python); playing and recording over DDS, which
need rclpy, are in `dima_planner.ros` (bag_play, bag_record)."""
