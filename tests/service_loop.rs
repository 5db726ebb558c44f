//! The service on loopback with a fake policy and the synthetic camera: the command stream,
//! e-stop latch, release and re-arm, instruction updates, a slow policy (HOLD, then STOP
//! until an `arm`), status and liveliness. Every wait is bounded.

// Test helpers fail the test by panicking, like the test functions themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use service_support::*;
use vla_rt::config::ServiceConfig;
use vla_rt::control::ControlState;
use vla_rt::policy::Policy;
use vla_rt::service::{Service, ServiceOptions};
use zenoh::Wait;

const WAIT: Duration = Duration::from_secs(10);

fn start(config: &ServiceConfig, controls: &Arc<FakeControls>) -> Service {
    let source = vla_rt::capture::open_source(&config.camera).unwrap();
    let controls = Arc::clone(controls);
    Service::start(
        config,
        source,
        move || Ok(Box::new(FakePolicy { controls }) as Box<dyn Policy>),
        ServiceOptions::default(),
    )
    .unwrap()
}

#[test]
fn commands_arrive_every_tick_well_formed_and_end_with_stop() {
    let port = free_port();
    let config = loopback_config("stream", port, 50.0);
    let controls = Arc::new(FakeControls::default());
    controls.delay_ms.store(1, Ordering::Relaxed);
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "stream");

    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));
    let records: Vec<_> = (0..60)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert_well_formed(&records, &config);
    // Every skipped command was dropped by the outbox or the publisher, and counted.
    let skipped = skipped_seqs(&records);
    assert!(
        skipped <= service.dropped_commands(),
        "{skipped} commands skipped, {} counted as dropped",
        service.dropped_commands()
    );

    let acts: Vec<_> = records
        .iter()
        .filter(|r| r.state == ControlState::Act)
        .collect();
    assert!(
        acts.len() >= records.len() / 2,
        "only {} ACT of {} after warm-up",
        acts.len(),
        records.len()
    );
    // One tick's share of a 5 Hz action step at 50 Hz: a tenth.
    let share = 0.1;
    for record in &acts {
        // dz = 0.5 from the policy is clamped to the 0.05 step limit, a tenth of it per tick
        // (0.25 m/s, the velocity bound); dy echoes the instruction; the gripper opens.
        assert!(record.action[2] > 0.0);
        assert!(f64::from(record.action[2]) <= f64::from(config.safety.max[2]) * share + 1e-6);
        assert!(record.action[1] >= 0.0);
        assert!(record.action[6] > 0.0 && record.action[6] <= 1.0);
        assert!(record.action[0] > 0.0);
        assert!(record.capture_time_ns > 0 && record.capture_time_ns <= record.tick_time_ns);
    }
    // At steady state the paced values are the policy's: dy per tick is a tenth of its dy.
    assert!(
        acts.iter().any(|r| (f64::from(r.action[1])
            - f64::from(dy_for(&config.instruction.default)) * share)
            .abs()
            < 2e-6),
        "{acts:?}"
    );
    for record in records.iter().filter(|r| r.state == ControlState::Hold) {
        assert_eq!(record.action[..6], [0.0; 6]);
    }
    // The synthetic scene moves, so the actions change.
    assert!(acts.windows(2).any(|w| w[0].action[0] != w[1].action[0]));

    let summary = service.stop();
    let tail = stream.until(WAIT, "the final STOP", is_state(ControlState::Stop));
    assert_eq!(tail.last().unwrap().seq + 1, summary.commands);
    // Nothing follows the final STOP.
    assert!(stream
        .receiver
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}

#[test]
fn estop_latches_stop_until_released() {
    let port = free_port();
    let config = loopback_config("estop", port, 50.0);
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "estop");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));

    session.put("vla/estop/estop/stop", "stop").wait().unwrap();
    stream.until(WAIT, "STOP after the e-stop", is_state(ControlState::Stop));
    let latched: Vec<_> = (0..15)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(
        latched.iter().all(|r| r.state == ControlState::Stop),
        "the e-stop did not hold: {:?}",
        latched.iter().map(|r| r.state).collect::<Vec<_>>()
    );
    assert!(latched
        .iter()
        .all(|r| r.action[..6] == [0.0; 6] && r.capture_time_ns == 0));

    // An `arm` while latched is refused.
    put_arm(&session, "estop", "arm");
    let refused_deadline = Instant::now() + WAIT;
    while service.control_stats().arm_refused.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < refused_deadline, "the arm was not refused");
        std::thread::sleep(Duration::from_millis(10));
    }
    // `release` on the old key is refused, and a put on a wildcard that includes the
    // release key does not release either.
    session.put("vla/estop/estop", "release").wait().unwrap();
    session.put("vla/estop/estop/*", "release").wait().unwrap();
    put_arm(&session, "estop", "arm");
    let held: Vec<_> = (0..15)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(
        held.iter().all(|r| r.state == ControlState::Stop),
        "released by the old key or a wildcard: {:?}",
        held.iter().map(|r| r.state).collect::<Vec<_>>()
    );

    session
        .put("vla/estop/estop/release", "release")
        .wait()
        .unwrap();
    // A release alone does not move the arm: STOP holds until an `arm`.
    let released: Vec<_> = (0..15)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(
        released.iter().all(|r| r.state == ControlState::Stop),
        "{:?}",
        released.iter().map(|r| r.state).collect::<Vec<_>>()
    );
    arm_until_act(&session, &stream, "estop", WAIT);

    // The old key still stops, on any payload.
    session.put("vla/estop/estop", "halt!").wait().unwrap();
    stream.until(
        WAIT,
        "STOP after an unknown payload on the old key",
        is_state(ControlState::Stop),
    );
    session.put("vla/estop/estop/release", "").wait().unwrap();
    arm_until_act(&session, &stream, "estop", WAIT);
    service.stop();
}

#[test]
fn a_new_instruction_reaches_the_policy() {
    let port = free_port();
    let config = loopback_config("instruct", port, 50.0);
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "instruct");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));

    let instruction = "put the spoon in the top drawer";
    assert_ne!(dy_for(instruction), dy_for(&config.instruction.default));
    session
        .put("vla/instruct/instruction", instruction)
        .wait()
        .unwrap();
    // dy per tick is a tenth of the policy's (a 5 Hz step at 50 Hz), once the limiter has
    // ramped to it.
    stream.until(WAIT, "an action for the new instruction", |r| {
        r.state == ControlState::Act
            && (f64::from(r.action[1]) - f64::from(dy_for(instruction)) * 0.1).abs() < 2e-6
    });
    let seen = controls.instructions.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![config.instruction.default.clone(), instruction.to_string()]
    );
    service.stop();
}

#[test]
fn slow_policy_holds_then_stops_and_stays_stopped_until_armed() {
    let port = free_port();
    let mut config = loopback_config("slow", port, 50.0);
    config.control.stop_after_misses = 3;
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "slow");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));

    // 400 ms per prediction against 200 ms action steps and a 200 ms action age limit:
    // every step ends without a fresh action.
    controls.delay_ms.store(400, Ordering::Relaxed);
    let seen = stream.until(
        WAIT,
        "STOP from the slow policy",
        is_state(ControlState::Stop),
    );
    let n = seen.len();
    assert!(n >= 3, "{seen:?}");
    // HOLD once the last step is used up, STOP at the third missed step (600 ms later).
    let holds = seen[..n - 1]
        .iter()
        .rev()
        .take_while(|r| r.state == ControlState::Hold)
        .count();
    assert!(holds >= 10, "{holds} HOLD before STOP: {seen:?}");
    let stop_cause = service.control_stats().stop_cause.load(Ordering::Relaxed);
    assert_eq!(
        vla_rt::control::supervisor::StopCause::from_u64(stop_cause),
        vla_rt::control::supervisor::StopCause::PolicyMisses
    );
    assert!(service.control_stats().misses.load(Ordering::Relaxed) >= 3);

    // Fast again: fresh actions, but STOP holds until an `arm`.
    controls.delay_ms.store(1, Ordering::Relaxed);
    let stopped: Vec<_> = (0..40)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(stopped.iter().all(|r| r.state == ControlState::Stop));
    assert!(!service.control_stats().armed.load(Ordering::Relaxed));
    arm_until_act(&session, &stream, "slow", WAIT);
    service.stop();
}

#[test]
fn non_finite_actions_are_never_published() {
    let port = free_port();
    let mut config = loopback_config("nan", port, 50.0);
    config.control.stop_after_misses = 2;
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "nan");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));
    controls.emit_nan.store(true, Ordering::Relaxed);
    let seen = stream.until(
        WAIT,
        "STOP from rejected actions",
        is_state(ControlState::Stop),
    );
    assert_well_formed(&seen, &config);
    assert!(service.control_stats().rejected.load(Ordering::Relaxed) >= 2);
    controls.emit_nan.store(false, Ordering::Relaxed);
    arm_until_act(&session, &stream, "nan", WAIT);
    service.stop();
}

#[test]
fn status_and_liveliness_follow_the_service() {
    let port = free_port();
    let config = loopback_config("status", port, 50.0);
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let status = session
        .declare_subscriber("vla/status/status")
        .wait()
        .unwrap();

    let deadline = Instant::now() + WAIT;
    let document: serde_json::Value = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let sample = status
            .recv_timeout(left)
            .unwrap()
            .expect("no status within the timeout");
        let value: serde_json::Value =
            serde_json::from_slice(&sample.payload().to_bytes()).unwrap();
        if value["ticks"]["act"].as_u64().unwrap_or(0) > 0 {
            break value;
        }
    };
    assert_eq!(document["robot_id"], "status");
    assert!(["ACT", "HOLD", "STOP"].contains(&document["state"].as_str().unwrap()));
    assert_eq!(document["backend"], "fake");
    assert_eq!(document["model"], "fake-echo");
    assert_eq!(document["rate_hz"], 50.0);
    assert!(document["ticks"]["total"].as_u64().unwrap() > 0);
    assert!(document["misses"].is_u64());
    assert!(document["overruns"].is_u64());
    assert_eq!(document["armed"], true, "{document}");
    assert!(document["limited"].is_u64(), "{document}");
    assert!(document["arm"]["refused"].is_u64(), "{document}");
    for stage in ["policy_total", "tick_jitter", "publish"] {
        assert!(
            document["latency_ms"][stage]["p50"].is_number(),
            "{stage}: {document}"
        );
        assert!(document["latency_ms"][stage]["p99"].is_number());
    }
    assert_eq!(
        document["policy"]["instruction"],
        config.instruction.default.as_str()
    );

    let alive = |session: &zenoh::Session| {
        let replies = session
            .liveliness()
            .get("vla/status/alive")
            .timeout(Duration::from_secs(2))
            .wait()
            .unwrap();
        let mut found = false;
        while let Ok(Some(reply)) = replies.recv_timeout(Duration::from_secs(3)) {
            found |= reply.result().is_ok();
        }
        found
    };
    assert!(alive(&session), "no liveliness token while running");
    service.stop();
    assert!(!alive(&session), "liveliness token still there after stop");
}
