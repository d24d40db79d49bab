"""ROS message definitions of the camera messages, as MCAP schemas carry them (the `.msg` text of
the type, then each dependency after a line of 80 '=' and 'MSG: <type>'), so logs can be written
without a ROS installation. Texts follow ros2/common_interfaces (sensor_msgs, std_msgs) and
ros/common_msgs for ROS 1, comments left out (they do not change the wire format)."""
from __future__ import annotations

_SEPARATOR = "=" * 80

ROS2_IMAGE = "sensor_msgs/msg/Image"
ROS2_COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
ROS1_IMAGE = "sensor_msgs/Image"
ROS1_COMPRESSED_IMAGE = "sensor_msgs/CompressedImage"

_ROS2_HEADER = """builtin_interfaces/Time stamp
string frame_id
"""
_ROS2_TIME = """int32 sec
uint32 nanosec
"""
_ROS1_HEADER = """uint32 seq
time stamp
string frame_id
"""


def _with_deps(main: str, deps: list[tuple[str, str]]) -> str:
    parts = [main]
    for name, text in deps:
        parts.append(f"{_SEPARATOR}\nMSG: {name}\n{text}")
    return "\n".join(parts)


_ROS2_DEPS = [("std_msgs/Header", _ROS2_HEADER), ("builtin_interfaces/Time", _ROS2_TIME)]
_ROS1_DEPS = [("std_msgs/Header", _ROS1_HEADER)]

_IMAGE_FIELDS = """uint32 height
uint32 width
string encoding
uint8 is_bigendian
uint32 step
uint8[] data
"""
_COMPRESSED_FIELDS = """string format
uint8[] data
"""

# type name -> full definition text, per ROS version
ROS2_MSGDEFS = {
    ROS2_IMAGE: _with_deps("std_msgs/Header header\n" + _IMAGE_FIELDS, _ROS2_DEPS),
    ROS2_COMPRESSED_IMAGE: _with_deps("std_msgs/Header header\n" + _COMPRESSED_FIELDS, _ROS2_DEPS),
}
ROS1_MSGDEFS = {
    ROS1_IMAGE: _with_deps("Header header\n" + _IMAGE_FIELDS, _ROS1_DEPS),
    ROS1_COMPRESSED_IMAGE: _with_deps("Header header\n" + _COMPRESSED_FIELDS, _ROS1_DEPS),
}
