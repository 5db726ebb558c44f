"""A scripted expert for the tabletop tasks: a proportional controller on the fingertip
position, saturated per axis.

Far from the goal the action is at its limit (MAX_DELTA_M per axis), near it the action
shrinks in proportion to the remaining error, so the action values spread over the whole
range and a quantization error of a few bins moves the gripper by a few millimetres, rather
than every action being one of three values.
"""
from __future__ import annotations

import numpy as np

GAIN = 0.35
MAX_DELTA_M = 0.03


def expert_action(sim) -> np.ndarray:
    """The expert's 7-DoF action for the simulator's current state and task."""
    error = sim.goal_tip_position() - sim.tip_position
    if sim.task.kind == "reach":
        # Over the block first, then down: keeps the fingers clear of the other blocks.
        horizontal = float(np.linalg.norm(error[:2]))
        delta = GAIN * error
        if horizontal > 0.04:
            delta[2] = GAIN * max(error[2], 0.0)
        delta = np.clip(delta, -MAX_DELTA_M, MAX_DELTA_M)
        return np.concatenate([delta, [0.0, 0.0, 0.0, 1.0]]).astype(np.float32)
    raise ValueError(f"unknown task kind {sim.task.kind!r}")
