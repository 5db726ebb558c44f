"""A simulated tabletop robot on MuJoCo: a gripper over a table with coloured blocks, seen by
one fixed 224 x 224 camera.

The gripper is a mocap body (its pose is set, not simulated) with two slide-jointed fingers;
the blocks are free bodies, so the gripper pushes what it runs into. It executes vla-rt's
7-DoF command: dx, dy, dz (metres, world frame: x to the right of the camera's view, y away
from the camera, z up), droll, dpitch, dyaw (ignored: the gripper keeps pointing down) and
the gripper (1 open, 0 closed, in between proportionally). Each action moves the target by
its deltas; over the following action period the gripper travels towards the target at a
bounded speed, so an action within the limits is completed in one period.

Pure simulation: no clocks, no networking (see robot.py for the Zenoh side).
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402

COLOURS = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.12, 0.65, 0.20),
    "blue": (0.12, 0.28, 0.90),
    "yellow": (0.92, 0.80, 0.10),
}
IMAGE_SIZE = 224
ACTION_RATE_HZ = 10.0
PHYSICS_TIMESTEP = 0.002
BLOCK_HALF = 0.02
# Gripper control point (the mocap body) to the point between the fingertips.
TIP_OFFSET = np.array([0.0, 0.0, -0.065])
# Where the gripper's control point may go.
WORKSPACE_LOW = np.array([-0.25, -0.20, 0.07])
WORKSPACE_HIGH = np.array([0.25, 0.20, 0.30])
HOME = np.array([0.0, -0.08, 0.22])
# Fastest the gripper travels: 0.08 m per 0.1 s action period.
MAX_SPEED_M_S = 0.8
FINGER_OPEN = 0.03
FINGER_CLOSED = 0.006
# The image patch of the trained checkpoint (engines/openvla-sim: 28 pixels, an 8 x 8 grid).
# No two blocks are placed where one patch would show both, so that attending to a patch
# means attending to one block.
MODEL_PATCH_PX = 28
# A reach succeeds when the fingertips are this close to the point just above the block.
REACH_TOLERANCE_M = 0.02
REACH_ABOVE_BLOCK_M = BLOCK_HALF + 0.01


def _look_at(position, target):
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    z = -forward
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return " ".join(f"{v:.5f}" for v in (*x, *y))


def model_xml(block_count: int) -> str:
    colours = list(COLOURS.items())[:block_count]
    blocks = "\n".join(
        f"""    <body name="block_{name}" pos="0 0 {BLOCK_HALF}">
      <freejoint/>
      <geom type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" mass="0.1"
            rgba="{r} {g} {b} 1" friction="1 0.005 0.0001"/>
    </body>"""
        for name, (r, g, b) in colours
    )
    camera_position = (0.0, -0.45, 0.42)
    camera_axes = _look_at(camera_position, (0.0, 0.02, 0.0))
    return f"""<mujoco model="tabletop">
  <option timestep="{PHYSICS_TIMESTEP}"/>
  <visual><quality shadowsize="0" offsamples="0"/><global offwidth="{IMAGE_SIZE}" offheight="{IMAGE_SIZE}"/></visual>
  <worldbody>
    <light pos="0.3 -0.3 1.2" dir="-0.25 0.25 -1" diffuse="0.7 0.7 0.7"/>
    <geom name="table" type="plane" size="0.4 0.3 0.01" rgba="0.62 0.52 0.42 1"/>
    <camera name="front" pos="{' '.join(map(str, camera_position))}" xyaxes="{camera_axes}" fovy="55"/>
{blocks}
    <body name="hand" mocap="true" pos="{' '.join(map(str, HOME))}">
      <geom type="box" size="0.02 0.045 0.012" rgba="0.25 0.25 0.28 1"/>
      <site name="tip" pos="{' '.join(map(str, TIP_OFFSET))}" size="0.004" rgba="1 1 1 0"/>
      <body name="finger_left" pos="0 0 -0.04">
        <joint name="finger_left" type="slide" axis="0 1 0" range="0 0.04" damping="5"/>
        <geom type="box" size="0.008 0.005 0.026" pos="0 0 0" rgba="0.35 0.35 0.38 1" mass="0.02"/>
      </body>
      <body name="finger_right" pos="0 0 -0.04">
        <joint name="finger_right" type="slide" axis="0 -1 0" range="0 0.04" damping="5"/>
        <geom type="box" size="0.008 0.005 0.026" pos="0 0 0" rgba="0.35 0.35 0.38 1" mass="0.02"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <position name="finger_left" joint="finger_left" kp="200"/>
    <position name="finger_right" joint="finger_right" kp="200"/>
  </actuator>
</mujoco>
"""


@dataclasses.dataclass
class Task:
    """A task by instruction, with the block it is about."""

    kind: str
    colour: str

    @property
    def instruction(self) -> str:
        if self.kind == "reach":
            return f"reach the {self.colour} block"
        raise ValueError(f"unknown task kind {self.kind!r}")


class Tabletop:
    """The simulated robot and its scene; `reset` starts an episode, `step` applies one action."""

    def __init__(self, block_count: int = 4, rate_hz: float = ACTION_RATE_HZ):
        if not 3 <= block_count <= len(COLOURS):
            raise ValueError(f"block_count must be 3 to {len(COLOURS)}, got {block_count}")
        self.colours = list(COLOURS)[:block_count]
        self.model = mujoco.MjModel.from_xml_string(model_xml(block_count))
        self.data = mujoco.MjData(self.model)
        self.rate_hz = rate_hz
        self.substeps = max(1, round(1.0 / (rate_hz * PHYSICS_TIMESTEP)))
        self.renderer = mujoco.Renderer(self.model, IMAGE_SIZE, IMAGE_SIZE)
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        self.renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._tip_site = self.model.site("tip").id
        self._block_joint_qpos = {
            c: self.model.jnt_qposadr[self.model.body(f"block_{c}").jntadr[0]] for c in self.colours
        }
        self._block_body = {c: self.model.body(f"block_{c}").id for c in self.colours}
        self.target = HOME.copy()
        self.gripper = 1.0
        self.task = Task("reach", self.colours[0])
        self.steps = 0
        self._period_done = 0.0

    def close(self) -> None:
        self.renderer.close()

    # Episode set-up -------------------------------------------------------------------------

    def reset(self, seed: int, task_kind: str = "reach") -> Task:
        """Places the blocks and the gripper at random (from `seed`) and picks the task."""
        rng = np.random.default_rng(seed)
        mujoco.mj_resetData(self.model, self.data)
        for _ in range(1000):
            self._place_blocks(rng)
            if not self._blocks_share_a_patch():
                break
        else:
            raise RuntimeError(f"seed {seed}: no block layout without two blocks in one patch")
        start = HOME + rng.uniform(-0.04, 0.04, size=3)
        self.data.mocap_pos[0] = start
        self.target = start.copy()
        self.gripper = 1.0
        self._set_fingers(self.gripper, instantly=True)
        mujoco.mj_forward(self.model, self.data)
        self.task = Task(task_kind, str(rng.choice(self.colours)))
        self.steps = 0
        self._period_done = 0.0
        return self.task

    def _place_blocks(self, rng: np.random.Generator) -> None:
        placed: list[np.ndarray] = []
        for colour in self.colours:
            for _ in range(1000):
                xy = rng.uniform([-0.18, -0.10], [0.18, 0.14])
                if all(np.linalg.norm(xy - other) > 0.08 for other in placed):
                    break
            placed.append(xy)
            adr = self._block_joint_qpos[colour]
            self.data.qpos[adr:adr + 3] = (xy[0], xy[1], BLOCK_HALF)
            yaw = rng.uniform(-0.6, 0.6)
            self.data.qpos[adr + 3:adr + 7] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))
        mujoco.mj_forward(self.model, self.data)

    def block_pixel_box(self, colour: str) -> tuple[float, float, float, float]:
        """The block's bounding box in the camera image (left, top, right, bottom pixels),
        from its eight corners through the pinhole camera."""
        camera = self.model.camera("front").id
        rotation = self.data.cam_xmat[camera].reshape(3, 3)
        focal = (IMAGE_SIZE / 2) / np.tan(np.radians(self.model.cam_fovy[camera]) / 2)
        body = self._block_body[colour]
        half = BLOCK_HALF
        corners = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
        world = self.data.xpos[body] + corners @ self.data.xmat[body].reshape(3, 3).T
        in_camera = (world - self.data.cam_xpos[camera]) @ rotation
        depth = -in_camera[:, 2]
        u = focal * in_camera[:, 0] / depth + IMAGE_SIZE / 2
        v = IMAGE_SIZE / 2 - focal * in_camera[:, 1] / depth
        return float(u.min()), float(v.min()), float(u.max()), float(v.max())

    def _blocks_share_a_patch(self) -> bool:
        def cells(box):
            left, top, right, bottom = (int(np.clip(p, 0, IMAGE_SIZE - 1)) // MODEL_PATCH_PX for p in box)
            return {(i, j) for i in range(left, right + 1) for j in range(top, bottom + 1)}
        seen: set = set()
        for colour in self.colours:
            covered = cells(self.block_pixel_box(colour))
            if covered & seen:
                return True
            seen |= covered
        return False

    # Stepping -------------------------------------------------------------------------------

    def step(self, action) -> None:
        """Applies one 7-DoF action and simulates one action period."""
        action = np.asarray(action, dtype=float)
        if action.shape != (7,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be 7 finite numbers, got {action!r}")
        self.target = np.clip(self.target + action[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        self.gripper = float(np.clip(action[6], 0.0, 1.0))
        self.advance()

    def hold_still(self) -> None:
        """Stops where the gripper is now: the target becomes the current position."""
        self.target = self.data.mocap_pos[0].copy()

    def advance(self, fraction: float = 1.0) -> None:
        """Simulates `fraction` of an action period towards the current target, without a
        new action; `steps` counts whole periods."""
        self._set_fingers(self.gripper)
        max_step = MAX_SPEED_M_S * PHYSICS_TIMESTEP
        self._period_done += fraction
        for _ in range(max(1, round(self.substeps * fraction))):
            error = self.target - self.data.mocap_pos[0]
            distance = float(np.linalg.norm(error))
            if distance > 0.0:
                self.data.mocap_pos[0] += error * min(1.0, max_step / distance)
            mujoco.mj_step(self.model, self.data)
        if self._period_done >= 1.0 - 1e-9:
            self._period_done = 0.0
            self.steps += 1

    def _set_fingers(self, gripper: float, instantly: bool = False) -> None:
        opening = FINGER_CLOSED + (FINGER_OPEN - FINGER_CLOSED) * gripper
        self.data.ctrl[:] = opening
        if instantly:
            for name in ("finger_left", "finger_right"):
                self.data.qpos[self.model.jnt_qposadr[self.model.joint(name).id]] = opening

    # Observations ---------------------------------------------------------------------------

    def render(self) -> np.ndarray:
        """The camera image, [224, 224, 3] uint8."""
        self.renderer.update_scene(self.data, camera="front")
        return self.renderer.render()

    @property
    def hand_position(self) -> np.ndarray:
        return self.data.mocap_pos[0].copy()

    @property
    def tip_position(self) -> np.ndarray:
        return self.data.site_xpos[self._tip_site].copy()

    def block_position(self, colour: str) -> np.ndarray:
        return self.data.xpos[self._block_body[colour]].copy()

    def goal_tip_position(self) -> np.ndarray:
        """Where the fingertips must be for the current task to succeed."""
        return self.block_position(self.task.colour) + np.array([0.0, 0.0, REACH_ABOVE_BLOCK_M])

    def success(self) -> bool:
        if self.task.kind == "reach":
            return float(np.linalg.norm(self.tip_position - self.goal_tip_position())) < REACH_TOLERANCE_M
        raise ValueError(f"unknown task kind {self.task.kind!r}")

    def state(self) -> dict:
        return {
            "hand": [round(float(v), 5) for v in self.hand_position],
            "tip": [round(float(v), 5) for v in self.tip_position],
            "gripper": round(self.gripper, 3),
            "task": self.task.instruction,
            "goal": [round(float(v), 5) for v in self.goal_tip_position()],
            "success": self.success(),
            "steps": self.steps,
        }
