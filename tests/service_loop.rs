//! The service on loopback with a fake policy and the synthetic camera: the command stream,
//! e-stop latch and release, instruction updates, a slow policy (HOLD, then STOP, then
//! recovery), status and liveliness. Every wait is bounded.

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
    for record in &acts {
        // dz = 0.5 from the policy is clamped to the 0.05 limit; dy echoes the instruction.
        assert_eq!(record.action[2], config.safety.max[2]);
        assert_eq!(record.action[1], dy_for(&config.instruction.default));
        assert_eq!(record.action[6], 1.0);
        assert!(record.action[0] > 0.0);
        assert!(record.capture_time_ns > 0 && record.capture_time_ns <= record.tick_time_ns);
    }
    for record in records.iter().filter(|r| r.state == ControlState::Hold) {
        assert_eq!(record.action, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
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

    // `release` on the old key is refused, and a put on a wildcard that includes the
    // release key does not release either.
    session.put("vla/estop/estop", "release").wait().unwrap();
    session.put("vla/estop/estop/*", "release").wait().unwrap();
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
    stream.until(WAIT, "ACT after the release", is_state(ControlState::Act));

    // The old key still stops, on any payload.
    session.put("vla/estop/estop", "halt!").wait().unwrap();
    stream.until(
        WAIT,
        "STOP after an unknown payload on the old key",
        is_state(ControlState::Stop),
    );
    session.put("vla/estop/estop/release", "").wait().unwrap();
    stream.until(
        WAIT,
        "ACT after the second release",
        is_state(ControlState::Act),
    );
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
    stream.until(WAIT, "an action for the new instruction", |r| {
        r.state == ControlState::Act && r.action[1] == dy_for(instruction)
    });
    let seen = controls.instructions.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![config.instruction.default.clone(), instruction.to_string()]
    );
    service.stop();
}

#[test]
fn slow_policy_holds_then_stops_and_recovers() {
    let port = free_port();
    let mut config = loopback_config("slow", port, 50.0);
    config.control.stop_after_misses = 3;
    let controls = Arc::new(FakeControls::default());
    let service = start(&config, &controls);
    let session = client_session(port);
    let stream = CommandStream::new(&session, "slow");
    stream.until(WAIT, "the first ACT", is_state(ControlState::Act));

    // 100 ms per prediction against a 20 ms period and a 40 ms action age limit.
    controls.delay_ms.store(100, Ordering::Relaxed);
    let seen = stream.until(
        WAIT,
        "STOP from the slow policy",
        is_state(ControlState::Stop),
    );
    let n = seen.len();
    assert!(n >= 3, "{seen:?}");
    // HOLD after the first miss, STOP at the third consecutive one.
    assert_eq!(seen[n - 3].state, ControlState::Hold, "{seen:?}");
    assert_eq!(seen[n - 2].state, ControlState::Hold, "{seen:?}");
    let stop_cause = service.control_stats().stop_cause.load(Ordering::Relaxed);
    assert_eq!(
        vla_rt::control::supervisor::StopCause::from_u64(stop_cause),
        vla_rt::control::supervisor::StopCause::PolicyMisses
    );
    // It stays stopped while the policy is slow.
    let stopped: Vec<_> = (0..10)
        .map(|_| stream.next(Duration::from_secs(2)))
        .collect();
    assert!(stopped.iter().all(|r| r.state == ControlState::Stop));

    controls.delay_ms.store(1, Ordering::Relaxed);
    stream.until(
        WAIT,
        "ACT after the policy sped up",
        is_state(ControlState::Act),
    );
    assert!(service.control_stats().misses.load(Ordering::Relaxed) >= 13);
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
    stream.until(
        WAIT,
        "ACT after finite actions return",
        is_state(ControlState::Act),
    );
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
