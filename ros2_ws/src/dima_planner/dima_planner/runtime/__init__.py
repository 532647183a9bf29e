"""The planner's per-frame runtime without ROS: the core the planner node wraps (frame
assembly, camera/odometry sync, image decoding, frames and extrinsics), the nodes'
parameter specs, and the MLLM reasoning engine. No rclpy and no message packages here;
`dima_planner.ros` turns messages into these types and back."""
