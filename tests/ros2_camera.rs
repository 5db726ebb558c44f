//! The ROS 2 camera (`[camera] source = "ros2:<topic>"`) against a publisher in the test that
//! puts `sensor_msgs/msg/Image` samples as rmw_zenoh does (CDR written field by field here,
//! from the message definition; the type hash is rosbags', see tests/ros2_rosbags.rs):
//! rgb8 with padded rows and bgr8 arrive as RGB with `header.stamp` as their capture time;
//! gaps in the attachment's sequence are drops; a sample without attachment, of another type
//! hash, of another size, encoding or a short data block is corrupt, and silence is a stall.
//! Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod service_support;

use std::time::{Duration, Instant};

use service_support::{client_session, free_port};
use vla_rt::capture::zenoh_source::ZenohSource;
use vla_rt::capture::{CaptureError, Frame, FrameSource};
use vla_rt::config::{CameraConfig, ZenohConfig};
use zenoh::Wait;

const WIDTH: u32 = 4;
const HEIGHT: u32 = 2;
const TOPIC: &str = "/test/cam/image_raw";
const IMAGE_HASH: &str = "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47";

/// `<domain>/<topic>/<type>/<hash>`, as rmw_zenoh names a topic's data.
fn key(hash: &str) -> String {
    format!(
        "7/{}/sensor_msgs::msg::dds_::Image_/{hash}",
        TOPIC.trim_start_matches('/')
    )
}

/// Little-endian CDR with the encapsulation header, aligned from after it.
#[derive(Default)]
struct Cdr(Vec<u8>);

impl Cdr {
    fn align(&mut self, n: usize) {
        while !(self.0.len() - 4).is_multiple_of(n) {
            self.0.push(0);
        }
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32 + 1);
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
    }
}

/// A `sensor_msgs/msg/Image`: header (stamp, frame_id), height, width, encoding,
/// is_bigendian, step, data.
fn image(stamp: (u32, u32), size: (u32, u32), encoding: &str, step: u32, data: &[u8]) -> Vec<u8> {
    let mut cdr = Cdr(vec![0, 1, 0, 0]);
    cdr.u32(stamp.0);
    cdr.u32(stamp.1);
    cdr.string("camera");
    cdr.u32(size.1);
    cdr.u32(size.0);
    cdr.string(encoding);
    cdr.0.push(0);
    cdr.u32(step);
    cdr.u32(data.len() as u32);
    cdr.0.extend_from_slice(data);
    cdr.0
}

fn attachment(sequence: i64) -> Vec<u8> {
    let mut out = sequence.to_le_bytes().to_vec();
    out.extend_from_slice(&1_790_000_000_000_000_000i64.to_le_bytes());
    out.push(16);
    out.extend_from_slice(&[0x5a; 16]);
    out
}

/// What a faulty sample is, its payload, its attachment and its type hash.
type Fault = (&'static str, Vec<u8>, Option<Vec<u8>>, &'static str);

#[test]
fn ros2_images_arrive_with_their_stamp_and_bad_ones_are_counted() {
    let port = free_port();
    let camera = CameraConfig {
        source: format!("ros2:{TOPIC}"),
        width: WIDTH,
        height: HEIGHT,
        stall_timeout_ms: 300,
        ..CameraConfig::default()
    };
    let zenoh = ZenohConfig {
        listen: Some(vec![format!("tcp/127.0.0.1:{port}")]),
        ..ZenohConfig::default()
    };
    let mut source = ZenohSource::new_ros2(&camera, &zenoh, 7).unwrap();
    source.start().unwrap();
    let mut frame = Frame::default();
    let error = source.next_frame(&mut frame).unwrap_err();
    assert!(matches!(error, CaptureError::Stalled { .. }), "{error}");
    let publisher = client_session(port);
    let put = |payload: Vec<u8>, attachment: Option<Vec<u8>>, hash: &str| {
        let put = publisher.put(key(hash), payload);
        match attachment {
            Some(a) => put.attachment(a).wait().unwrap(),
            None => put.wait().unwrap(),
        }
    };
    // rgb8, rows padded to 16 bytes.
    let mut rgb = Vec::new();
    for y in 0..HEIGHT as u8 {
        for x in 0..WIDTH as u8 {
            rgb.extend_from_slice(&[10 * y + x, 100 + x, 200 - y]);
        }
        rgb.extend_from_slice(&[0xee; 4]);
    }
    let expected: Vec<u8> = rgb.chunks(16).flat_map(|row| row[..12].to_vec()).collect();
    let mut seq = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        put(
            image((1_790_000_000, 5), (WIDTH, HEIGHT), "rgb8", 16, &rgb),
            Some(attachment(seq)),
            IMAGE_HASH,
        );
        seq += 1;
        match source.next_frame(&mut frame) {
            Ok(()) => break,
            Err(CaptureError::Stalled { .. }) if Instant::now() < deadline => continue,
            Err(e) => panic!("no first frame: {e}"),
        }
    }
    assert_eq!(frame.capture_time_ns, 1_790_000_000_000_000_005);
    assert_eq!((frame.image.width, frame.image.height), (WIDTH, HEIGHT));
    assert_eq!(frame.image.data, expected);
    let base = source.stats();
    let first_sequence = frame.sequence;

    // bgr8, unpadded: swapped to RGB.
    let bgr: Vec<u8> = expected
        .chunks(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    put(
        image((1_790_000_001, 0), (WIDTH, HEIGHT), "bgr8", 12, &bgr),
        Some(attachment(seq)),
        IMAGE_HASH,
    );
    seq += 1;
    source.next_frame(&mut frame).unwrap();
    assert_eq!(frame.image.data, expected);
    assert_eq!(frame.capture_time_ns, 1_790_000_001_000_000_000);

    // Each fault is skipped and counted as corrupt.
    let good = image((1, 0), (WIDTH, HEIGHT), "rgb8", 12, &expected);
    let faults: Vec<Fault> = vec![
        ("no attachment", good.clone(), None, IMAGE_HASH),
        // Refused before its attachment is read: its number does not count.
        (
            "another type hash",
            good.clone(),
            Some(attachment(999)),
            "RIHS01_00",
        ),
        (
            "another size",
            image((1, 0), (2, 4), "rgb8", 6, &expected),
            Some(attachment(seq)),
            IMAGE_HASH,
        ),
        (
            "mono8",
            image((1, 0), (WIDTH, HEIGHT), "mono8", 4, &[0; 8]),
            Some(attachment(seq + 1)),
            IMAGE_HASH,
        ),
        (
            "data one byte short",
            image((1, 0), (WIDTH, HEIGHT), "rgb8", 12, &expected[1..]),
            Some(attachment(seq + 2)),
            IMAGE_HASH,
        ),
        (
            "truncated CDR",
            good[..good.len() - 5].to_vec(),
            Some(attachment(seq + 3)),
            IMAGE_HASH,
        ),
    ];
    seq += 4;
    for (index, (what, payload, attachment, hash)) in faults.into_iter().enumerate() {
        put(payload, attachment, hash);
        let error = source.next_frame(&mut frame).unwrap_err();
        assert!(
            matches!(error, CaptureError::Corrupt { .. }),
            "{what}: {error}"
        );
        assert_eq!(
            source.stats().corrupt,
            base.corrupt + index as u64 + 1,
            "{what}"
        );
    }
    // The readable faults carried sequence numbers: no drops so far.
    assert_eq!(source.stats().drops, base.drops);

    // Three samples the publisher numbered but the camera never got: drops.
    seq += 3;
    put(
        image((1_790_000_002, 0), (WIDTH, HEIGHT), "rgb8", 12, &expected),
        Some(attachment(seq)),
        IMAGE_HASH,
    );
    source.next_frame(&mut frame).unwrap();
    assert_eq!(source.stats().drops, base.drops + 3);
    assert_eq!(frame.sequence, first_sequence + 1 + 4 + 3 + 1);

    // Silence: a stall.
    let error = source.next_frame(&mut frame).unwrap_err();
    assert!(matches!(error, CaptureError::Stalled { .. }), "{error}");
    assert_eq!(source.stats().stalls, base.stalls + 1);
    source.stop();
    publisher.close().wait().unwrap();
}
