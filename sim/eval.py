#!/usr/bin/env python3
"""Closed-loop evaluation: `vla-rt run` drives the simulated tabletop robot over Zenoh.

Starts the service on a checkpoint (default engines/openvla-sim, trained on this simulator by
sim/train.py) with the camera on Zenoh (`[camera] source = "zenoh:vla/<robot>/camera"`), runs
N episodes with the simulator as the robot (sim/robot.py) at the control rate, and reports
what happened in each, the success rate with its 95 % Wilson interval, the time to success,
the service's misses and overruns (from vla/<robot>/status), and the open-loop instruction
measure of sim/instruction.py for the same weight format.

Each episode has one outcome (tabletop.REACH_TOLERANCE_M = 2 cm, the reach point of a block is
tabletop.REACH_ABOVE_BLOCK_M = 3 cm above its centre, as in tabletop.Tabletop.success):
- `reached_named` (success): at a frame the fingertips were within REACH_TOLERANCE_M of the
  named block's reach point; the episode ends there;
- `reached_other`: not a success, and at some moment of the episode the fingertips were
  within REACH_TOLERANCE_M of the reach point of another block: on the straight path they
  travel between two consecutive frames (a pass between frames counts, and so does ending
  over that block), measured to where that block is at the end of the interval;
- `reached_none`: neither.
The time to success counts the frame periods from the episode's first frame (published once
the service reported its instruction in force) to the frame that succeeded. Each episode's wall time adds
the wait for that report (`instruction_wait_s`): the status comes once a second, so up to
1.1 s, and close to 1 s when episodes last whole seconds (a wait ends just after a status, so
the next episode's put comes just after one as well).

    python3 sim/eval.py --episodes 20 --seed 0
    python3 sim/eval.py --episodes 100 --seed 200000 --quantization int8 --projector int8 --json
    python3 sim/eval.py --episodes 3 --seed 200000 --gif docs/closed-loop.gif
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

SIM_DIR = pathlib.Path(__file__).resolve().parent
REPO = SIM_DIR.parent
sys.path.insert(0, str(SIM_DIR))

import zenoh  # noqa: E402

import robot as sim_robot  # noqa: E402
import tabletop  # noqa: E402

TRAINED_MODEL = REPO / "engines" / "openvla-sim"
INSTRUCTION_SCRIPT = SIM_DIR / "instruction.py"
# sim/instruction.py's weight formats, by this script's (--quantization, --projector).
INSTRUCTION_FORMATS = {("none", "f32"): "f32", ("int8", "int8"): "int8", ("int4", "int8"): "int4"}
OUTCOMES = ("reached_named", "reached_other", "reached_none")


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def write_config(path: pathlib.Path, args, port: int, camera_key: str) -> None:
    model = [f"path = {toml_string(str(pathlib.Path(args.model).resolve()))}",
             f"backend = {toml_string(args.backend)}",
             f"quantization = {toml_string(args.quantization)}",
             f"projector = {toml_string(args.projector)}"]
    if args.unnorm_key:
        model.append(f"unnorm_key = {toml_string(args.unnorm_key)}")
    path.write_text("\n".join([
        f"robot_id = {toml_string(args.robot_id)}",
        "[model]", *model,
        "[camera]",
        f"source = {toml_string('zenoh:' + camera_key)}",
        f"width = {tabletop.IMAGE_SIZE}", f"height = {tabletop.IMAGE_SIZE}",
        f"fps = {max(1, round(args.rate_hz * args.frames_per_action))}",
        "stall_timeout_ms = 500",
        "[control]",
        f"rate_hz = {args.rate_hz}",
        'realtime = "off"',
        "max_frame_age_ms = 1000",
        # A simulation: its e-stop latch lives beside its config, released when missing.
        f"state_dir = {toml_string(str(path.parent / 'state'))}",
        'estop_missing = "released"',
        "[zenoh]",
        f"listen = [{toml_string(f'tcp/127.0.0.1:{port}')}]",
        "[instruction]",
        'default = "reach the red block"',
        "",
    ]))


def service_exited(service, log_path: pathlib.Path) -> RuntimeError:
    return RuntimeError(f"vla-rt exited with {service.returncode} before it ran; see {log_path}:\n"
                        f"{log_path.read_text()[-2000:]}")


def open_session(port: int, deadline: float, service, log_path: pathlib.Path) -> zenoh.Session:
    config = sim_robot.peer_config(f"tcp/127.0.0.1:{port}")
    config.insert_json5("connect/exit_on_failure", "true")
    # Without a timeout a connection attempt to a port nobody listens on never returns.
    config.insert_json5("connect/timeout_ms", "1000")
    while True:
        if service.poll() is not None:
            raise service_exited(service, log_path)
        try:
            return zenoh.open(config)
        except Exception as e:  # zenoh raises ZError, not exported under one name in every version
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot connect to the service on port {port}: {e}") from e
            time.sleep(0.1)


def checkpoint_unnorm_key(model: pathlib.Path) -> str | None:
    """The checkpoint's dataset statistics key when it has exactly one."""
    try:
        keys = list(json.loads((model / "config.json").read_text()).get("norm_stats", {}))
    except (OSError, ValueError):
        return None  # the service names the problem
    return keys[0] if len(keys) == 1 else None


def draw_gif(path: str, frames, frame_rate_hz: float) -> None:
    from PIL import Image, ImageDraw

    images = []
    for image, instruction, command, state in frames:
        canvas = Image.new("RGB", (tabletop.IMAGE_SIZE, tabletop.IMAGE_SIZE + 44), "black")
        canvas.paste(Image.fromarray(image), (0, 0))
        draw = ImageDraw.Draw(canvas)
        if command is None:
            action_text = "no command"
        else:
            a = command["action"]
            label = command["state"]
            if label == "ACT" and not command.get("applied", True):
                label = "ACT not applied"
            action_text = f"{label} d=({a[0]:+.3f},{a[1]:+.3f},{a[2]:+.3f}) g={a[6]:.2f}"
        tip = state["tip"]
        draw.text((2, tabletop.IMAGE_SIZE + 1), instruction, fill="white")
        draw.text((2, tabletop.IMAGE_SIZE + 15), action_text, fill="yellow")
        draw.text((2, tabletop.IMAGE_SIZE + 29),
                  f"tip=({tip[0]:+.2f},{tip[1]:+.2f},{tip[2]:.2f}) {'SUCCESS' if state['success'] else ''}",
                  fill="lightgreen" if state["success"] else "white")
        images.append(canvas)
    if images:
        images[0].save(path, save_all=True, append_images=images[1:],
                       duration=round(1000 / frame_rate_hz), loop=0)


def estop_check(robot, session, status, robot_id: str, seed: int) -> dict:
    """Moves under ACT, puts `stop` on the e-stop key and measures what moves after STOP.

    The measurement starts once a STOP arrived and the status reports the e-stop latched:
    a STOP for policy misses before the latch could still be followed by ACT."""
    robot.start_episode(seed)
    acts_before = robot.counts["ACT"]
    per_period = robot.frames_per_action
    robot.run_frames(25 * per_period, until=lambda s: robot.counts["ACT"] >= acts_before + 3)
    acts_during = robot.counts["ACT"] - acts_before
    stops_before = robot.counts["STOP"]
    session.put(f"vla/{robot_id}/estop/stop", "stop")

    def latched(_state) -> bool:
        document = status.get()[0] or {}
        return robot.counts["STOP"] > stops_before and document.get("estop") is True

    robot.run_frames(50 * per_period, until=latched)
    stopped_at = robot.sim.hand_position
    robot.run_frames(10 * per_period)
    travel = float(((robot.sim.hand_position - stopped_at) ** 2).sum() ** 0.5)
    return {"act_commands_before_stop": acts_during,
            "stop_commands": robot.counts["STOP"] - stops_before,
            "latched": latched(None),
            "travel_after_stop_m": travel,
            "halted": robot.halted}


def outcome(episode: dict) -> str:
    """The episode's outcome (see the module's docstring)."""
    if episode["success"]:
        return "reached_named"
    return "reached_other" if episode["other_blocks_reached"] else "reached_none"


def instruction_measure(args) -> dict | None:
    """sim/instruction.py's open-loop measure for the weight format under evaluation."""
    if args.instruction_scenes == 0:
        return None
    name = INSTRUCTION_FORMATS.get((args.quantization, args.projector))
    if name is None:
        return {"format": None, "scenes": 0,
                "skipped": f"sim/instruction.py has no format with LLM {args.quantization} and "
                           f"projector {args.projector}"}
    command = [sys.executable, str(INSTRUCTION_SCRIPT), "--json", "--model", str(args.model),
               "--vla-rt", args.vla_rt, "--formats", name, "--scenes", str(args.instruction_scenes),
               "--backend", args.backend]
    if args.unnorm_key:
        command += ["--unnorm-key", args.unnorm_key]
    measure = {"format": name, "scenes": args.instruction_scenes}
    # Scene building and one `vla-rt predict` run; generous for a loaded machine.
    timeout_s = 120 + 10 * args.instruction_scenes
    try:
        run = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {**measure, "error": f"sim/instruction.py: {e}"}
    if run.returncode != 0:
        return {**measure, "error": f"sim/instruction.py exited with {run.returncode}: "
                                    f"{run.stderr.strip()[-1000:]}"}
    try:
        result = json.loads(run.stdout)["formats"][name]
    except (ValueError, KeyError, TypeError) as e:
        return {**measure, "error": f"sim/instruction.py printed no result for {name}: {e!r}"}
    return {**measure, "seed": json.loads(run.stdout).get("seed"),
            "overall": result["overall"], "swap": result.get("swap"), "pairs": result.get("pairs"),
            "per_colour": result.get("per_colour"), "seconds": result.get("seconds")}


def summarize(episodes: list[dict]) -> dict:
    """The outcome counts and shares, the success rate with its interval, the times."""
    total = len(episodes)
    counts = {name: sum(e["outcome"] == name for e in episodes) for name in OUTCOMES}
    successes = counts["reached_named"]
    times = [e["time_to_success_s"] for e in episodes if e["success"]]
    return {
        "episodes": total, "successes": successes,
        "outcomes": {name: {"count": n, "share": n / total} for name, n in counts.items()},
        "success_rate": successes / total,
        "success_rate_ci95": list(wilson_interval(successes, total)),
        "mean_time_to_success_s": statistics.fmean(times) if times else None,
        "median_time_to_success_s": statistics.median(times) if times else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=200000,
                        help="episode i uses seed S + i (sim/train.py's data uses seeds from 0, its "
                             "held-out fixture from 100000, so the default is unseen)")
    parser.add_argument("--max-steps", type=int, default=60, help="action periods per episode")
    parser.add_argument("--model", default=str(TRAINED_MODEL), help="checkpoint folder")
    parser.add_argument("--unnorm-key", default=None,
                        help="dataset statistics key (default: the checkpoint's only one)")
    parser.add_argument("--quantization", default="none", choices=["none", "int8", "int4"])
    parser.add_argument("--projector", default="f32", choices=["f32", "int8"])
    parser.add_argument("--backend", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vla-rt", default=str(REPO / "target" / "release" / "vla-rt"),
                        help="the vla-rt binary")
    parser.add_argument("--robot-id", default="sim")
    parser.add_argument("--rate-hz", type=float, default=tabletop.ACTION_RATE_HZ)
    parser.add_argument("--frames-per-action", type=int, default=4,
                        help="camera frames the robot publishes per action period")
    parser.add_argument("--instruction-timeout", type=float, default=5.0,
                        help="seconds the robot waits for the service to report an episode's "
                             "instruction in force")
    parser.add_argument("--instruction-scenes", type=int, default=40,
                        help="scenes of sim/instruction.py's open-loop measure for this weight "
                             "format, run after the episodes (0: skip it)")
    parser.add_argument("--record", metavar="FILE.mcap",
                        help="the service records the session (vla-rt run --record), for "
                             "vla-rt replay")
    parser.add_argument("--gif", default=None, help="write the rollouts (the first 600 frames, at their real pace) here")
    parser.add_argument("--estop-check", action="store_true",
                        help="after the episodes, put `stop` on the e-stop key and measure what moves")
    parser.add_argument("--startup-timeout", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args()
    if args.unnorm_key is None:
        # The service's own default key is the bundled tiny checkpoint's.
        args.unnorm_key = checkpoint_unnorm_key(pathlib.Path(args.model))
    if args.episodes < 1:
        parser.error("--episodes must be at least 1")
    if args.frames_per_action < 1:
        parser.error("--frames-per-action must be at least 1")
    if args.instruction_scenes < 0:
        parser.error("--instruction-scenes must be 0 or more")
    if not os.access(args.vla_rt, os.X_OK):
        print(f"eval.py: --vla-rt {args.vla_rt}: not an executable (cargo build --release)",
              file=sys.stderr)
        return 2

    port = free_port()
    camera_key = f"vla/{args.robot_id}/camera"
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="vla-sim-eval-"))
    config_path = workdir / "sim.toml"
    write_config(config_path, args, port, camera_key)
    log_path = workdir / "vla-rt.log"
    sim = tabletop.Tabletop(rate_hz=args.rate_hz)
    service = None
    report = {}
    try:
        with open(log_path, "wb") as log:
            record = ["--record", str(pathlib.Path(args.record).resolve())] if args.record else []
            service = subprocess.Popen([args.vla_rt, "run", "--config", str(config_path),
                                        "--robot-id", args.robot_id, *record],
                                       stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + args.startup_timeout
        session = open_session(port, deadline, service, log_path)
        try:
            robot = sim_robot.ZenohRobot(session, args.robot_id, sim, camera_key,
                                         frames_per_action=args.frames_per_action,
                                         instruction_timeout_s=args.instruction_timeout)
            robot.keep_frames = 600 if args.gif else 0
            status = robot.status
            # The service warms its policy up on the first frame: publish until it reports.
            sim.reset(args.seed)
            while status.get()[1] == 0:
                if service.poll() is not None:
                    raise service_exited(service, log_path)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no status from vla-rt within {args.startup_timeout} s")
                robot.run_frames(1)
            episodes = []
            for index in range(args.episodes):
                session.put(f"vla/{args.robot_id}/arm", "arm")
                episode = robot.run_episode(args.seed + index, args.max_steps)
                episode["outcome"] = outcome(episode)
                episode["time_to_success_s"] = episode["time_s"] if episode["success"] else None
                episodes.append(episode)
                if not args.json:
                    other = f" ({', '.join(episode['other_blocks_reached'])})" \
                        if episode["other_blocks_reached"] else ""
                    print(f"episode {index}: seed {episode['seed']} {episode['instruction']!r}: "
                          f"{episode['outcome']}{other} after {episode['steps']} steps "
                          f"({episode['time_s']:.2f} s; ACT {episode['acts_applied']} applied, "
                          f"{episode['acts_unpaired']} unpaired; instruction wait "
                          f"{episode['instruction_wait_s']:.2f} s, wall {episode['wall_s']:.2f} s)",
                          flush=True)
            estop = estop_check(robot, session, status, args.robot_id, args.seed + args.episodes) \
                if args.estop_check else None
            # A status published after the last episode.
            seen = status.get()[1]
            wait_until = time.monotonic() + 3.0
            while status.get()[1] == seen and time.monotonic() < wait_until:
                robot.run_frames(1)
            last_status = status.get()[0] or {}
            robot.close()
            if args.gif:
                draw_gif(args.gif, robot.frames_kept, args.rate_hz * args.frames_per_action)
        finally:
            session.close()
        service.send_signal(signal.SIGTERM)
        try:
            service_rc = service.wait(timeout=15)
        except subprocess.TimeoutExpired:
            service.kill()
            service_rc = service.wait()

        episode_time = sum(e["time_s"] for e in episodes)
        waits = [e["instruction_wait_s"] for e in episodes]
        report = {
            "model": str(args.model), "backend": args.backend, "quantization": args.quantization,
            "projector": args.projector, "rate_hz": args.rate_hz, "seed": args.seed,
            "max_steps": args.max_steps, "frames_per_action": args.frames_per_action,
            **summarize(episodes),
            # Run with the service stopped: the two would share the CPU.
            "instruction_measure": instruction_measure(args),
            "service": {
                "misses": last_status.get("misses"), "overruns": last_status.get("overruns"),
                "ticks": last_status.get("ticks"), "camera": last_status.get("camera"),
                "state": last_status.get("state"), "exit_code": service_rc,
            },
            "robot": {"commands": dict(robot.counts), "act_travel_m": robot.act_travel_m,
                      "frames_published": robot.frame_sequence,
                      # ACTs applied per second of episode time: the closed loop's real rate.
                      "act_rate_hz": sum(e["acts_applied"] for e in episodes) / episode_time
                      if episode_time else None,
                      "instruction_wait_s": {"mean": statistics.fmean(waits), "max": max(waits)},
                      "wall_s_per_episode": statistics.fmean(e["wall_s"] for e in episodes)},
            "estop": estop,
            "episode_results": episodes,
            "service_log": str(log_path),
        }
    finally:
        if service is not None and service.poll() is None:
            service.kill()
            service.wait()
        sim.close()

    measure = report["instruction_measure"]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        low, high = report["success_rate_ci95"]
        mean_time = report["mean_time_to_success_s"]
        median_time = report["median_time_to_success_s"]
        outcomes = ", ".join(f"{name} {o['count']} ({o['share']:.0%})"
                             for name, o in report["outcomes"].items())
        print(f"success {report['successes']}/{report['episodes']} = {report['success_rate']:.0%} "
              f"(95 % CI {low:.0%}-{high:.0%}); {outcomes}")
        print("time to success: " + (f"mean {mean_time:.2f} s, median {median_time:.2f} s"
                                     if mean_time is not None else "n/a"))
        if measure is not None:
            if "skipped" in measure:
                print(f"instruction measure: skipped ({measure['skipped']})")
            else:
                print(f"instruction measure ({measure['format']}, {measure['scenes']} scenes): "
                      + (f"error: {measure['error']}" if "error" in measure else
                         f"overall {measure['overall']:.2f}, swap {measure['swap']:.2f}"))
        robot_report = report["robot"]
        print(f"robot: commands {robot_report['commands']}, ACT rate "
              f"{robot_report['act_rate_hz']:.2f} Hz, instruction wait mean "
              f"{robot_report['instruction_wait_s']['mean']:.2f} s (max "
              f"{robot_report['instruction_wait_s']['max']:.2f} s), wall "
              f"{robot_report['wall_s_per_episode']:.2f} s per episode")
        service_report = report["service"]
        print(f"service: misses {service_report['misses']}, overruns {service_report['overruns']}, "
              f"camera {service_report['camera']}")
        if estop is not None:
            print(f"e-stop: {estop}")
    if measure is not None and "error" in measure:
        print(f"eval.py: instruction measure failed: {measure['error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
