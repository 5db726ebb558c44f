"""A scripted expert for the tabletop tasks: a proportional controller on the fingertip
position, saturated per axis.

Far from the goal the action is at its limit (MAX_DELTA_M per axis), near it the action
shrinks in proportion to the remaining error, so the action values spread over the whole
range and a quantization error of a few bins moves the gripper by a few millimetres, rather
than every action being one of three values.

The action depends only on where the fingertips are and where they must go, so a recorded
frame can be relabelled for any block of the scene (`expert_move`).
"""
from __future__ import annotations

import numpy as np

GAIN = 0.35
MAX_DELTA_M = 0.03
# Farther than this horizontally from the goal, the fingertips do not descend.
DESCEND_WITHIN_M = 0.04


def expert_move(tip: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The expert's translation (dx, dy, dz in metres) from fingertips at `tip` to `goal`.
    Broadcasts over leading dimensions."""
    tip, goal = np.asarray(tip, np.float64), np.asarray(goal, np.float64)
    error = goal - tip
    delta = GAIN * error
    # Over the block first, then down: keeps the fingers clear of the other blocks.
    far = np.linalg.norm(error[..., :2], axis=-1) > DESCEND_WITHIN_M
    delta[..., 2] = np.where(far, GAIN * np.maximum(error[..., 2], 0.0), delta[..., 2])
    return np.clip(delta, -MAX_DELTA_M, MAX_DELTA_M)


def expert_action(sim) -> np.ndarray:
    """The expert's 7-DoF action for the simulator's current state and task."""
    if sim.task.kind == "reach":
        delta = expert_move(sim.tip_position, sim.goal_tip_position())
        return np.concatenate([delta, [0.0, 0.0, 0.0, 1.0]]).astype(np.float32)
    raise ValueError(f"unknown task kind {sim.task.kind!r}")
