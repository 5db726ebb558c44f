#!/usr/bin/env python3
"""Soak test of `vla-rt run` with injected faults (driven by bench/soak.sh).

The service runs the bundled tiny checkpoint on the CPU at 50 Hz, its camera the emulated V4L2
device (tests/v4l2emu), as a Zenoh client of a router this script starts (eclipse-zenoh in
router mode, in its own process so that it can be killed and restarted). Every cycle injects,
in order: an e-stop and its release, an instruction flood (oversized, invalid UTF-8, blank
and valid payloads), a camera stall, subscribers joining and leaving, a camera unplug, and a
router restart; arm toggles too when the service has arming (an `armed` field in its status).
Each fault has an expected answer, checked on the command stream and the status JSON.

Every sample period it records RSS, open fds and threads (/proc) and misses and latency p99
(status JSON). The verdict: RSS growth after warm-up under the limit, no fd or thread growth,
no panic, a clean exit, every fault answered. Exit status 0 only on PASS.
"""

import argparse
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import zenoh

ROBOT = "soak"
KEY = f"vla/{ROBOT}"
RECORD = struct.Struct("<4sHHQQQ7fI")
STATES = ("ACT", "HOLD", "STOP")
CAMERA_FPS = 30
RATE_HZ = 50.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message):
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def router_main(port):
    conf = zenoh.Config()
    conf.insert_json5("mode", '"router"')
    conf.insert_json5("listen/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    session = zenoh.open(conf)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("router ready", flush=True)
    stop.wait()
    session.close()


def client_config(port):
    conf = zenoh.Config()
    conf.insert_json5("mode", '"client"')
    conf.insert_json5("connect/endpoints", json.dumps([f"tcp/127.0.0.1:{port}"]))
    conf.insert_json5("scouting/multicast/enabled", "false")
    return conf


class Router:
    def __init__(self, port, log_path):
        self.port = port
        self.log_path = log_path
        self.process = None

    def start(self):
        log_file = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--router", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
        line = self.process.stdout.readline()
        if "router ready" not in line:
            raise RuntimeError(f"the Zenoh router did not start (see {self.log_path})")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Observer:
    """Commands and status of the service, as a client of the router."""

    def __init__(self, port):
        self.lock = threading.Lock()
        self.records = []  # (arrival monotonic, state name, seq)
        self.status = None
        self.status_time = 0.0
        self.bad_records = 0
        self.session = zenoh.open(client_config(port))
        self.session.declare_subscriber(f"{KEY}/cmd", self.on_command)
        self.session.declare_subscriber(f"{KEY}/status", self.on_status)

    def on_command(self, sample):
        data = sample.payload.to_bytes()
        now = time.monotonic()
        try:
            magic, version, state, seq, *_rest = RECORD.unpack(data)
            ok = magic == b"VLA1" and version == 1 and zlib.crc32(data[:60]) == _rest[-1]
        except struct.error:
            ok = False
        with self.lock:
            if not ok or state > 2:
                self.bad_records += 1
                return
            self.records.append((now, STATES[state], seq))
            if len(self.records) > 200_000:
                del self.records[:100_000]

    def on_status(self, sample):
        try:
            document = json.loads(sample.payload.to_string())
        except ValueError:
            return
        with self.lock:
            self.status = document
            self.status_time = time.monotonic()

    def latest_status(self):
        with self.lock:
            return self.status, self.status_time

    def states_between(self, start, end):
        with self.lock:
            return [s for (t, s, _) in self.records if start <= t <= end]

    def last_record_time(self):
        with self.lock:
            return self.records[-1][0] if self.records else 0.0

    def put(self, key, payload):
        # Blocking congestion control: a flood must reach the service, not be dropped on the
        # way by this client's own queue.
        self.session.put(key, payload, congestion_control=zenoh.CongestionControl.BLOCK)


def wait_for(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    return None


def proc_sample(pid):
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "Threads"):
                values[key] = int(rest.split()[0])
    values["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return values


class Soak:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.failures = []
        self.faults = []  # (kind, answered, detail)
        self.samples = []
        self.has_arm = False

    def fault(self, kind, answered, detail):
        self.faults.append((kind, answered, detail))
        log(f"fault {kind}: {'answered' if answered else 'NOT ANSWERED'} ({detail})")

    def config_text(self, port):
        return f"""robot_id = "{ROBOT}"

[model]
path = "{os.path.abspath(self.args.model)}"
backend = "cpu"
unnorm_key = "tiny_bridge"

[camera]
source = "/dev/video42"
width = 320
height = 240
fps = {CAMERA_FPS}
format = "YUYV"
stall_timeout_ms = 200

[control]
rate_hz = {RATE_HZ}
stop_after_misses = 50
max_action_age_ms = 250
max_frame_age_ms = 500
realtime = "{self.args.realtime}"
# A test bench: armed at start, its e-stop latch beside its logs; after every STOP the
# soak re-arms as an operator would.
start_armed = true
state_dir = "{os.path.join(self.out, 'state')}"
estop_missing = "released"

[zenoh]
mode = "client"
listen = []
connect = ["tcp/127.0.0.1:{port}"]

[instruction]
default = "pick up the red block"
max_bytes = 1024
min_interval_ms = 200
"""

    def cycle_starts(self):
        starts = []
        t = self.args.first_cycle
        while t + self.args.cycle <= self.args.duration - self.args.quiet + 1:
            starts.append(t)
            t += self.args.cycle
        return starts

    def camera_faults(self):
        """Stalls and unplugs at the frame numbers of each cycle's camera slots, had the
        camera never paused; each fault delays the later ones, which the cycle's checks wait
        for (by the frame count in the status)."""
        faults = []
        self.stall_frames = []
        self.unplug_frames = []
        for t in self.cycle_starts():
            stall_frame = int((t + self.stall_offset) * CAMERA_FPS)
            unplug_frame = int((t + self.unplug_offset) * CAMERA_FPS)
            self.stall_frames.append(stall_frame)
            self.unplug_frames.append(unplug_frame)
            faults.append(f"stall@{stall_frame}:1500")
            faults.append(f"unplug@{unplug_frame}:3000")
        return faults[:64]

    def run(self):
        args = self.args
        port = free_port()
        self.router_port = port
        os.makedirs(self.out, exist_ok=True)
        router = Router(port, os.path.join(self.out, "router.log"))
        router.start()
        log(f"router on tcp/127.0.0.1:{port}")
        config_path = os.path.join(self.out, "soak.toml")
        with open(config_path, "w") as f:
            f.write(self.config_text(port))
        # Cycle slots (seconds after the cycle's start).
        cycle = args.cycle
        self.stall_offset = 0.28 * cycle
        self.unplug_offset = 0.55 * cycle
        env = dict(os.environ)
        env.update(
            LD_PRELOAD=args.emulator,
            V4L2EMU_PATH="/dev/video42",
            V4L2EMU_FAULTS=",".join(self.camera_faults()),
        )
        service_log = open(os.path.join(self.out, "service.log"), "w")
        observer = Observer(port)
        started = time.monotonic()
        service = subprocess.Popen(
            [args.binary, "run", "--config", config_path],
            env=env,
            stdout=service_log,
            stderr=subprocess.STDOUT,
        )
        try:
            self.drive(service, observer, router, started)
        finally:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
            try:
                code = service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
                code = service.wait()
                self.failures.append("the service did not end within 30 s of SIGTERM")
            router.stop()
            service_log.close()
        try:
            observer.session.close()
        except Exception as e:  # the verdict matters more than a session that will not close
            log(f"closing the observer session: {e}")
        if code != 0:
            self.failures.append(f"the service exited with {code}")
        with open(os.path.join(self.out, "service.log"), errors="replace") as f:
            text = f.read()
        if "panicked" in text:
            self.failures.append("a panic in the service log")
        return self.verdict(observer)

    def drive(self, service, observer, router, started):
        args = self.args
        first_act = wait_for(
            "first ACT",
            lambda: "ACT" in observer.states_between(started, time.monotonic() + 1),
            120,
        )
        if not first_act:
            raise SystemExit(self.abort(service, "no ACT within 120 s of start"))
        status = wait_for("status", lambda: observer.latest_status()[0], 30)
        self.has_arm = bool(status) and any("arm" in k for k in status.keys())
        if self.has_arm:
            log("the service has arming: arm toggles on")
            self.arm(observer, True)
        else:
            log("no arming in the status: arm toggles skipped (the key does not exist here)")
        t0 = started
        stop_sampling = threading.Event()
        sampler = threading.Thread(
            target=self.sampler, args=(service.pid, observer, t0, stop_sampling), daemon=True
        )
        sampler.start()
        try:
            for index, offset in enumerate(self.cycle_starts()):
                self.at(t0 + offset)
                if service.poll() is not None:
                    break
                log(f"fault cycle {index + 1} of {len(self.cycle_starts())}")
                self.cycle(observer, router, t0 + offset, index)
            while time.monotonic() < t0 + args.duration and service.poll() is None:
                time.sleep(0.5)
            if service.poll() is not None:
                self.failures.append(f"the service ended early with {service.returncode}")
        finally:
            stop_sampling.set()
            sampler.join(timeout=30)
            self.sample(service.pid, observer, time.monotonic() - t0, final=True)

    def sampler(self, pid, observer, t0, stop):
        next_sample = t0
        baseline_at = t0 + self.args.warmup
        baseline_done = False
        while not stop.is_set():
            now = time.monotonic()
            if not baseline_done and now >= baseline_at:
                self.sample(pid, observer, now - t0, baseline=True)
                baseline_done = True
                next_sample = now + self.args.sample_every
            elif now >= next_sample:
                self.sample(pid, observer, now - t0)
                next_sample += self.args.sample_every
            stop.wait(0.5)

    def at(self, moment):
        delay = moment - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def cycle(self, observer, router, start, index):
        cycle = self.args.cycle
        self.at(start + 0.03 * cycle)
        self.estop(observer)
        self.at(start + 0.15 * cycle)
        self.flood(observer)
        self.camera_fault(observer, "stall", "stalls", self.stall_frames[index])
        self.at(start + 0.42 * cycle)
        self.subscribers(observer)
        if self.has_arm:
            self.at(start + 0.48 * cycle)
            self.arm_toggle(observer)
        self.camera_fault(observer, "unplug", "reopens", self.unplug_frames[index])
        self.at(start + 0.7 * cycle)
        self.router_restart(observer, router)

    def arm(self, observer, on):
        observer.put(f"{KEY}/arm", "arm" if on else "disarm")

    def estop(self, observer):
        t = time.monotonic()
        observer.put(f"{KEY}/estop/stop", "stop")
        time.sleep(1.0)
        states = observer.states_between(t + 0.3, time.monotonic())
        status, _ = observer.latest_status()
        stopped = bool(states) and all(s == "STOP" for s in states)
        observer.put(f"{KEY}/estop/release", "release")
        if self.has_arm:
            time.sleep(0.3)
            self.arm(observer, True)
        release_at = time.monotonic()

        def released():
            # Released: the latch is off and a STOP, if any, is no longer the e-stop's (the
            # policy's misses may still stop a loaded machine).
            status, at = observer.latest_status()
            return (
                at > release_at + 0.1
                and status.get("estop") is False
                and status.get("stop_cause") != "e-stop"
            )

        was_latched = bool(status) and status.get("estop") is True
        ok = wait_for("release", released, 10)
        self.fault(
            "estop",
            stopped and bool(ok),
            f"{len(states)} commands in the second after the e-stop, all STOP: {stopped}; "
            f"status estop {was_latched}; released: {bool(ok)}",
        )

    def flood(self, observer):
        before, _ = observer.latest_status()
        rejected_before = before["policy"]["instructions_rejected"]
        failures_before = before["policy"]["failures"]
        valid = [f"move the block {i} cm to the left" for i in range(20)]
        bad = [
            b"x" * 2048,
            b"\xff\xfe\xfd not utf-8",
            b"   \n\t ",
            b"y" * (2 * 1024 * 1024),
            ("\u00e9" * 600).encode(),
        ]
        sent_bad = 0
        sent_small_bad = 0
        for i in range(100):
            payload = bad[i % len(bad)]
            observer.put(f"{KEY}/instruction", payload)
            sent_bad += 1
            sent_small_bad += len(payload) <= 65536
            observer.put(f"{KEY}/instruction", valid[i % len(valid)])
        last = f"put the soak block {int(time.time())} in the bowl"
        observer.put(f"{KEY}/instruction", last)
        want = hashlib.sha256(last.encode()).hexdigest()[:16]

        def answered():
            status, _ = observer.latest_status()
            p = status["policy"]
            # A transport with a maximum message size below 2 MB drops those payloads before
            # the service sees them; every smaller bad payload must be counted.
            return (
                p["instruction_sha256"] == want
                and p["instructions_rejected"] - rejected_before >= sent_small_bad
            ) and status

        status = wait_for("flood answered", answered, 10)
        if not status:
            status, _ = observer.latest_status()
        p = status["policy"]
        ok = bool(answered()) and p["failures"] == failures_before
        self.fault(
            "instruction flood",
            ok,
            f"{sent_bad} bad ({sent_small_bad} up to 64 KiB) + 101 valid sent; rejected +{p['instructions_rejected'] - rejected_before}, "
            f"in force {p['instruction']!r} ({p['instruction_sha256']}, want {want}), "
            f"policy failures {failures_before} -> {p['failures']}",
        )

    def camera_fault(self, observer, kind, counter, frame):
        status, _ = observer.latest_status()
        before = status["camera"][counter]
        # The fault comes at the camera's frame `frame`; earlier faults delayed it.
        wait_for(
            f"camera frame {frame}",
            lambda: observer.latest_status()[0]["camera"]["frames"] >= frame - 2 * CAMERA_FPS,
            self.args.cycle,
        )
        seen = wait_for(
            f"camera {kind}",
            lambda: observer.latest_status()[0]["camera"][counter] > before,
            20,
        )
        if not seen:
            self.fault(f"camera {kind}", False, f"camera.{counter} stayed at {before}")
            return
        seen_at = time.monotonic()
        def rearmed():
            # A STOP for a silent camera disarms: the operator arms again once it is back.
            if self.has_arm:
                self.arm(observer, True)
            return "ACT" in observer.states_between(seen_at + 1, time.monotonic())

        recovered = wait_for("ACT after the camera fault", rearmed, 20)
        states = observer.states_between(seen_at - 6, seen_at + 4)
        stopped = "STOP" in states or "HOLD" in states
        self.fault(
            f"camera {kind}",
            stopped and bool(recovered),
            f"camera.{counter} {before} -> {observer.latest_status()[0]['camera'][counter]}, "
            f"HOLD/STOP around it: {stopped}, ACT again: {bool(recovered)}",
        )

    def subscribers(self, observer):
        sessions = []
        counts = []
        for _ in range(3):
            session = zenoh.open(client_config(self.port_of(observer)))
            got = [0]
            session.declare_subscriber(f"{KEY}/cmd", lambda s, got=got: got.__setitem__(0, got[0] + 1))
            sessions.append((session, got))
        time.sleep(2.0)
        for session, got in sessions:
            counts.append(got[0])
            session.close()
        # A subscriber that joins late and leaves again must not disturb the others.
        before = observer.last_record_time()
        time.sleep(1.0)
        flowing = observer.last_record_time() > before
        ok = all(c > 0 for c in counts) and flowing
        self.fault("subscribers join and leave", ok, f"3 joined, received {counts} in 2 s, left; commands still flowing: {flowing}")

    def port_of(self, observer):
        return self.router_port

    def arm_toggle(self, observer):
        self.arm(observer, False)
        time.sleep(1.5)
        states = observer.states_between(time.monotonic() - 0.8, time.monotonic())
        disarmed = bool(states) and "ACT" not in states
        self.arm(observer, True)
        armed = wait_for(
            "ACT after arming",
            lambda: "ACT" in observer.states_between(time.monotonic() - 0.5, time.monotonic()),
            10,
        )
        self.fault("arm toggle", disarmed and bool(armed), f"no ACT while disarmed: {disarmed}; ACT after arming: {bool(armed)}")

    def router_restart(self, observer, router):
        router.stop()
        down_at = time.monotonic()
        time.sleep(3.0)
        router.start()
        back = wait_for(
            "commands after the router restart",
            lambda: observer.last_record_time() > down_at + 3.0,
            45,
        )
        status = wait_for("status after the router restart", lambda: observer.latest_status()[1] > down_at + 3.0, 30)
        self.fault(
            "router restart",
            bool(back) and bool(status),
            f"router down 3 s; commands again after {back and round(observer.last_record_time() - down_at - 3.0, 1)} s; status again: {bool(status)}",
        )

    def sample(self, pid, observer, elapsed, baseline=False, final=False):
        try:
            proc = proc_sample(pid)
            if baseline or final:
                # The floor of three readings a second apart: thread pools and buffers that
                # come and go for a moment are not growth.
                for _ in range(2):
                    time.sleep(1.0)
                    again = proc_sample(pid)
                    for key in proc:
                        proc[key] = min(proc[key], again[key])
        except OSError:
            return
        status, _ = observer.latest_status()
        status = status or {}
        latency = status.get("latency_ms", {})
        row = {
            "t_s": round(elapsed),
            "rss_kb": proc.get("VmRSS"),
            "fds": proc["fds"],
            "threads": proc.get("Threads"),
            "misses": status.get("misses"),
            "ticks": status.get("ticks", {}).get("total"),
            "state": status.get("state"),
            "policy_p99_ms": latency.get("policy_total", {}).get("p99"),
            "jitter_p99_ms": latency.get("tick_jitter", {}).get("p99"),
            "rejected": status.get("policy", {}).get("instructions_rejected"),
            "baseline": baseline,
            "final": final,
        }
        self.samples.append(row)
        log(
            "sample t={t_s}s rss={rss_kb}kB fds={fds} threads={threads} misses={misses} "
            "ticks={ticks} policy_p99={policy_p99_ms}ms jitter_p99={jitter_p99_ms}ms "
            "rejected={rejected}{b}".format(
                b=" (warm-up baseline)" if baseline else " (final)" if final else "", **row
            )
        )

    def abort(self, service, reason):
        self.failures.append(reason)
        log(f"FAIL: {reason}")
        return 1

    def verdict(self, observer):
        args = self.args
        with open(os.path.join(self.out, "samples.csv"), "w") as f:
            keys = list(self.samples[0].keys()) if self.samples else []
            f.write(",".join(keys) + "\n")
            for row in self.samples:
                f.write(",".join(str(row[k]) for k in keys) + "\n")
        base = next((s for s in self.samples if s["baseline"]), None)
        after = [s for s in self.samples if base and s["t_s"] >= base["t_s"]]
        last = next((s for s in self.samples if s["final"]), None)
        lines = []
        if base and last and len(after) >= 2:
            growth = (last["rss_kb"] - base["rss_kb"]) / 1024.0
            peak = (max(s["rss_kb"] for s in after) - base["rss_kb"]) / 1024.0
            lines.append(
                f"RSS {base['rss_kb'] / 1024:.1f} MB after warm-up -> {last['rss_kb'] / 1024:.1f} MB at the end: "
                f"growth {growth:+.2f} MB (peak {peak:+.2f} MB, limit {args.rss_limit_mb} MB)"
            )
            if growth >= args.rss_limit_mb:
                self.failures.append(f"RSS grew {growth:.2f} MB after warm-up")
            for key in ("fds", "threads"):
                if last[key] > base[key]:
                    self.failures.append(f"{key} grew from {base[key]} to {last[key]}")
                lines.append(f"{key}: {base[key]} after warm-up, {last[key]} at the end, max {max(s[key] for s in after)}")
            misses = [s["misses"] for s in after if s["misses"] is not None]
            ticks = [s["ticks"] for s in after if s["ticks"] is not None]
            if misses and ticks:
                lines.append(f"ticks {ticks[-1]}, misses {misses[-1]} ({100.0 * misses[-1] / max(ticks[-1], 1):.1f} %)")
            p99 = [s["policy_p99_ms"] for s in after if s["policy_p99_ms"] is not None]
            jitter = [s["jitter_p99_ms"] for s in after if s["jitter_p99_ms"] is not None]
            if p99:
                lines.append(f"policy p99 per sample: min {min(p99)} ms, max {max(p99)} ms")
            if jitter:
                lines.append(f"tick jitter p99 per sample: min {min(jitter)} ms, max {max(jitter)} ms")
        else:
            self.failures.append("too few samples after warm-up for a verdict")
        if observer.bad_records:
            self.failures.append(f"{observer.bad_records} malformed command records")
        kinds = {}
        for kind, answered, _ in self.faults:
            total, ok = kinds.get(kind, (0, 0))
            kinds[kind] = (total + 1, ok + int(answered))
        for kind, (total, ok) in kinds.items():
            lines.append(f"fault {kind}: {ok}/{total} answered")
            if ok != total:
                self.failures.append(f"{total - ok} of {total} `{kind}` faults not answered")
        if not self.faults:
            self.failures.append("no fault was injected (duration too short for one cycle)")
        verdict = "PASS" if not self.failures else "FAIL: " + "; ".join(self.failures)
        lines.append(f"verdict: {verdict}")
        with open(os.path.join(self.out, "verdict.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for line in lines:
            log(line)
        return 0 if not self.failures else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--router", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--binary", default="target/release/vla-rt")
    parser.add_argument("--emulator", help="libv4l2emu.so")
    parser.add_argument("--model", default="engines/openvla-tiny")
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--first-cycle", type=float, default=60, help="seconds before the first fault cycle")
    parser.add_argument("--cycle", type=float, default=300, help="seconds per fault cycle")
    parser.add_argument(
        "--warmup", type=float, help="RSS baseline time (default: after the first fault cycle)"
    )
    parser.add_argument("--sample-every", type=float, default=60)
    parser.add_argument("--quiet", type=float, default=120, help="seconds without faults at the end")
    parser.add_argument(
        "--realtime", default="try", choices=["off", "try", "require"], help="[control] realtime"
    )
    parser.add_argument("--rss-limit-mb", type=float, default=2.0)
    parser.add_argument("--out", default="target/soak")
    args = parser.parse_args()
    if args.warmup is None:
        # Just before the second cycle: after one of every fault, as long after its router
        # restart as the final sample is after the last one's (at least).
        args.warmup = args.first_cycle + args.cycle - 3
    if args.router:
        router_main(args.router)
        return 0
    soak = Soak(args)
    return soak.run()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Zenoh's Python bindings can hang in interpreter teardown with sessions of other threads;
    # everything is written and closed by now.
    os._exit(status)
