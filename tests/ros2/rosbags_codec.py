#!/usr/bin/env python3
"""ROS 2 messages and type hashes computed by rosbags (Jazzy typestore), for
tests/ros2_rosbags.rs. Reads one JSON request on stdin:
  {"hashes": [type, ...],
   "decode": [{"type": type, "hex": cdr}, ...],
   "encode": [{"type": type, "value": {...}}, ...]}
and prints {"hashes": {type: hash}, "decoded": [value, ...], "encoded": [hex, ...]}, with
values in the shapes `value_of` writes.
"""

import json
import sys

import numpy as np
from rosbags.typesys import Stores, get_typestore

TS = get_typestore(Stores.ROS2_JAZZY)
T = TS.types


def stamp(ns):
    return T["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def header(v):
    return T["std_msgs/msg/Header"](stamp=stamp(v["stamp_ns"]), frame_id=v["frame_id"])


def build(kind, v):
    if kind == "geometry_msgs/msg/TwistStamped":
        V3 = T["geometry_msgs/msg/Vector3"]
        return T[kind](header=header(v), twist=T["geometry_msgs/msg/Twist"](
            linear=V3(*v["linear"]), angular=V3(*v["angular"])))
    if kind in ("std_msgs/msg/String", "std_msgs/msg/Bool"):
        return T[kind](data=v["data"])
    if kind == "sensor_msgs/msg/CompressedImage":
        return T[kind](header=header(v), format=v["format"],
                       data=np.frombuffer(bytes.fromhex(v["data"]), dtype=np.uint8))
    if kind == "sensor_msgs/msg/Image":
        return T[kind](header=header(v), height=v["height"], width=v["width"], encoding=v["encoding"],
                       is_bigendian=0, step=v["step"],
                       data=np.frombuffer(bytes.fromhex(v["data"]), dtype=np.uint8))
    raise ValueError(kind)


def value_of(kind, m):
    def h(x):
        return {"stamp_ns": x.header.stamp.sec * 1_000_000_000 + x.header.stamp.nanosec,
                "frame_id": x.header.frame_id}
    if kind == "geometry_msgs/msg/TwistStamped":
        t = m.twist
        return dict(h(m), linear=[t.linear.x, t.linear.y, t.linear.z],
                    angular=[t.angular.x, t.angular.y, t.angular.z])
    if kind in ("std_msgs/msg/String", "std_msgs/msg/Bool"):
        return {"data": m.data}
    if kind == "std_msgs/msg/Float64MultiArray":
        return {"dims": len(m.layout.dim), "data_offset": int(m.layout.data_offset),
                "data": [float(x) for x in m.data]}
    if kind == "diagnostic_msgs/msg/DiagnosticArray":
        return dict(h(m), status=[{"level": int(s.level), "name": s.name, "message": s.message,
                                   "hardware_id": s.hardware_id,
                                   "values": [[kv.key, kv.value] for kv in s.values]}
                                  for s in m.status])
    raise ValueError(kind)


def main():
    request = json.load(sys.stdin)
    out = {
        "hashes": {name: TS.hash_rihs01(name) for name in request.get("hashes", [])},
        "decoded": [value_of(item["type"], TS.deserialize_cdr(bytes.fromhex(item["hex"]), item["type"]))
                    for item in request.get("decode", [])],
        "encoded": [bytes(TS.serialize_cdr(build(item["type"], item["value"]), item["type"])).hex()
                    for item in request.get("encode", [])],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
