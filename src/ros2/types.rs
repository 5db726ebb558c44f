//! The ROS 2 messages vla-rt speaks, and nothing else: their DDS type names, their Jazzy type
//! hashes (RIHS01) and their CDR layout.
//!
//! The hashes are the ones `rosbags.typesys` computes from the message definitions
//! (`get_typestore(Stores.ROS2_JAZZY).hash_rihs01(name)`); `tests/ros2_type_hashes.rs`
//! recomputes them with rosbags and compares.

use super::cdr::{CdrError, CdrReader, CdrWriter};

/// One message type: its ROS name, the DDS name in rmw_zenoh's key expressions, its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageType {
    /// `geometry_msgs/msg/TwistStamped`.
    pub ros_name: &'static str,
    /// `geometry_msgs::msg::dds_::TwistStamped_`.
    pub dds_name: &'static str,
    /// `RIHS01_<64 hex digits>`.
    pub hash: &'static str,
}

pub const TWIST_STAMPED: MessageType = MessageType {
    ros_name: "geometry_msgs/msg/TwistStamped",
    dds_name: "geometry_msgs::msg::dds_::TwistStamped_",
    hash: "RIHS01_5f0fcd4f81d5d06ad9b4c4c63e3ea51b82d6ae4d0558f1d475229b1121db6f64",
};
pub const STRING: MessageType = MessageType {
    ros_name: "std_msgs/msg/String",
    dds_name: "std_msgs::msg::dds_::String_",
    hash: "RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18",
};
pub const BOOL: MessageType = MessageType {
    ros_name: "std_msgs/msg/Bool",
    dds_name: "std_msgs::msg::dds_::Bool_",
    hash: "RIHS01_feb91e995ff9ebd09c0cb3d2aed18b11077585839fb5db80193b62d74528f6c9",
};
pub const FLOAT64_MULTI_ARRAY: MessageType = MessageType {
    ros_name: "std_msgs/msg/Float64MultiArray",
    dds_name: "std_msgs::msg::dds_::Float64MultiArray_",
    hash: "RIHS01_1025ddc6b9552d191f89ef1a8d2f60f3d373e28b283d8891ddcc974e8c55397f",
};
pub const DIAGNOSTIC_ARRAY: MessageType = MessageType {
    ros_name: "diagnostic_msgs/msg/DiagnosticArray",
    dds_name: "diagnostic_msgs::msg::dds_::DiagnosticArray_",
    hash: "RIHS01_5a8a36efb05fb25070fa0fb3810290c0e6cd4862b54a8fb975a1ee8dc55a333e",
};
pub const COMPRESSED_IMAGE: MessageType = MessageType {
    ros_name: "sensor_msgs/msg/CompressedImage",
    dds_name: "sensor_msgs::msg::dds_::CompressedImage_",
    hash: "RIHS01_15640771531571185e2efc8a100baf923961a4d15d5569652e6cb6691e8e371a",
};
pub const IMAGE: MessageType = MessageType {
    ros_name: "sensor_msgs/msg/Image",
    dds_name: "sensor_msgs::msg::dds_::Image_",
    hash: "RIHS01_d31d41a9a4c4bc8eae9be757b0beed306564f7526c88ea6a4588fb9582527d47",
};

/// Every type above (the hash test walks them).
pub const ALL_TYPES: [MessageType; 7] = [
    TWIST_STAMPED,
    STRING,
    BOOL,
    FLOAT64_MULTI_ARRAY,
    DIAGNOSTIC_ARRAY,
    COMPRESSED_IMAGE,
    IMAGE,
];

/// `builtin_interfaces/msg/Time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub sec: i32,
    pub nanosec: u32,
}

impl Time {
    /// From ns since the Unix epoch (seconds past i32 saturate).
    pub fn from_unix_ns(ns: u64) -> Self {
        let sec = ns / 1_000_000_000;
        Self {
            sec: i32::try_from(sec).unwrap_or(i32::MAX),
            nanosec: (ns % 1_000_000_000) as u32,
        }
    }

    /// ns since the Unix epoch; `None` before the epoch or with nanoseconds ≥ 1 s.
    pub fn to_unix_ns(self) -> Option<u64> {
        if self.sec < 0 || self.nanosec >= 1_000_000_000 {
            return None;
        }
        Some(self.sec as u64 * 1_000_000_000 + u64::from(self.nanosec))
    }

    fn write(self, w: &mut CdrWriter) -> Result<(), CdrError> {
        w.i32(self.sec)?;
        w.u32(self.nanosec)
    }

    fn read(r: &mut CdrReader) -> Result<Self, CdrError> {
        Ok(Self {
            sec: r.i32("header.stamp.sec")?,
            nanosec: r.u32("header.stamp.nanosec")?,
        })
    }
}

/// `std_msgs/msg/Header`, with the frame id borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub stamp: Time,
    pub frame_id: &'a str,
}

impl<'a> Header<'a> {
    fn write(&self, w: &mut CdrWriter) -> Result<(), CdrError> {
        self.stamp.write(w)?;
        w.string(self.frame_id)
    }

    fn read(r: &mut CdrReader<'a>) -> Result<Self, CdrError> {
        Ok(Self {
            stamp: Time::read(r)?,
            frame_id: r.string("header.frame_id")?,
        })
    }
}

/// `geometry_msgs/msg/TwistStamped`: linear (m/s) and angular (rad/s) velocity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwistStamped<'a> {
    pub header: Header<'a>,
    pub linear: [f64; 3],
    pub angular: [f64; 3],
}

/// Bytes a TwistStamped takes beyond its frame id: header 4, stamp 8, string length 4 and
/// NUL 1, up to 7 of padding, six f64.
pub const TWIST_STAMPED_FIXED_LEN: usize = 4 + 8 + 4 + 1 + 7 + 48;

impl<'a> TwistStamped<'a> {
    /// Writes the payload into `out`; its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, CdrError> {
        let mut w = CdrWriter::new(out)?;
        self.header.write(&mut w)?;
        for value in self.linear.iter().chain(&self.angular) {
            w.f64(*value)?;
        }
        Ok(w.len())
    }

    pub fn decode(payload: &'a [u8]) -> Result<Self, CdrError> {
        let mut r = CdrReader::new(payload)?;
        let header = Header::read(&mut r)?;
        let mut values = [0.0; 6];
        for (i, value) in values.iter_mut().enumerate() {
            *value = r.f64(if i < 3 {
                "twist.linear"
            } else {
                "twist.angular"
            })?;
        }
        r.finish()?;
        Ok(Self {
            header,
            linear: [values[0], values[1], values[2]],
            angular: [values[3], values[4], values[5]],
        })
    }
}

/// `std_msgs/msg/Float64MultiArray` with no layout dimensions (`layout.dim = []`,
/// `data_offset = 0`), as a forward command controller reads it.
pub fn encode_float64_array(values: &[f64], out: &mut [u8]) -> Result<usize, CdrError> {
    let mut w = CdrWriter::new(out)?;
    w.sequence_len(0)?; // layout.dim
    w.u32(0)?; // layout.data_offset
    w.sequence_len(values.len())?;
    for value in values {
        w.f64(*value)?;
    }
    Ok(w.len())
}

/// Reads a `std_msgs/msg/Float64MultiArray`'s data (layout dimensions skipped); at most
/// `max` values.
pub fn decode_float64_array(payload: &[u8], max: usize) -> Result<Vec<f64>, CdrError> {
    let mut r = CdrReader::new(payload)?;
    let dims = r.u32("layout.dim")? as usize;
    for _ in 0..dims.min(payload.len()) {
        r.string_bytes("layout.dim.label")?;
        r.u32("layout.dim.size")?;
        r.u32("layout.dim.stride")?;
    }
    r.u32("layout.data_offset")?;
    let count = r.u32("data")? as usize;
    let mut values = Vec::with_capacity(count.min(max));
    for _ in 0..count.min(max) {
        values.push(r.f64("data")?);
    }
    Ok(values)
}

/// `std_msgs/msg/String`'s text, borrowed; refused unread when its declared length is over
/// `max_bytes` (the `Err` then carries that length).
pub fn decode_string(payload: &[u8], max_bytes: usize) -> Result<&[u8], StringRefusal> {
    let r = CdrReader::new(payload).map_err(StringRefusal::Malformed)?;
    if let Some(len) = r.peek_string_len() {
        if len > max_bytes {
            return Err(StringRefusal::TooLarge { bytes: len });
        }
    }
    let mut r = r;
    let text = r.string_bytes("data").map_err(StringRefusal::Malformed)?;
    r.finish().map_err(StringRefusal::Malformed)?;
    Ok(text)
}

/// Why a `std_msgs/msg/String` was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StringRefusal {
    Malformed(CdrError),
    TooLarge { bytes: usize },
}

pub fn encode_string(text: &str, out: &mut [u8]) -> Result<usize, CdrError> {
    let mut w = CdrWriter::new(out)?;
    w.string(text)?;
    Ok(w.len())
}

/// `std_msgs/msg/Bool`.
pub fn decode_bool(payload: &[u8]) -> Result<bool, CdrError> {
    let mut r = CdrReader::new(payload)?;
    let value = r.bool("data")?;
    r.finish()?;
    Ok(value)
}

pub fn encode_bool(value: bool, out: &mut [u8]) -> Result<usize, CdrError> {
    let mut w = CdrWriter::new(out)?;
    w.bool(value)?;
    Ok(w.len())
}

/// `diagnostic_msgs/msg/DiagnosticStatus` levels.
pub mod level {
    pub const OK: u8 = 0;
    pub const WARN: u8 = 1;
    pub const ERROR: u8 = 2;
    pub const STALE: u8 = 3;
}

/// One `diagnostic_msgs/msg/DiagnosticStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagnosticStatus {
    pub level: u8,
    pub name: String,
    pub message: String,
    pub hardware_id: String,
    pub values: Vec<(String, String)>,
}

/// A `diagnostic_msgs/msg/DiagnosticArray` (the status thread's; it may allocate).
pub fn encode_diagnostic_array(
    header: &Header,
    statuses: &[DiagnosticStatus],
) -> Result<Vec<u8>, CdrError> {
    let mut size = 64 + header.frame_id.len();
    for status in statuses {
        size += 32 + status.name.len() + status.message.len() + status.hardware_id.len();
        for (key, value) in &status.values {
            size += 16 + key.len() + value.len();
        }
    }
    let mut out = vec![0u8; size];
    let mut w = CdrWriter::new(&mut out)?;
    header.write(&mut w)?;
    w.sequence_len(statuses.len())?;
    for status in statuses {
        w.u8(status.level)?;
        w.string(&status.name)?;
        w.string(&status.message)?;
        w.string(&status.hardware_id)?;
        w.sequence_len(status.values.len())?;
        for (key, value) in &status.values {
            w.string(key)?;
            w.string(value)?;
        }
    }
    let len = w.len();
    out.truncate(len);
    Ok(out)
}

/// The image of a `sensor_msgs/msg/CompressedImage` or `sensor_msgs/msg/Image`, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosImage<'a> {
    Compressed {
        format: &'a str,
        data: &'a [u8],
    },
    Raw {
        height: u32,
        width: u32,
        encoding: &'a str,
        is_bigendian: u8,
        step: u32,
        data: &'a [u8],
    },
}

/// `sensor_msgs/msg/CompressedImage`.
pub fn decode_compressed_image(payload: &[u8]) -> Result<(Header<'_>, RosImage<'_>), CdrError> {
    let mut r = CdrReader::new(payload)?;
    let header = Header::read(&mut r)?;
    let format = r.string("format")?;
    let data = r.byte_sequence("data")?;
    r.finish()?;
    Ok((header, RosImage::Compressed { format, data }))
}

/// `sensor_msgs/msg/Image`.
pub fn decode_image(payload: &[u8]) -> Result<(Header<'_>, RosImage<'_>), CdrError> {
    let mut r = CdrReader::new(payload)?;
    let header = Header::read(&mut r)?;
    let height = r.u32("height")?;
    let width = r.u32("width")?;
    let encoding = r.string("encoding")?;
    let is_bigendian = r.u8("is_bigendian")?;
    let step = r.u32("step")?;
    let data = r.byte_sequence("data")?;
    r.finish()?;
    Ok((
        header,
        RosImage::Raw {
            height,
            width,
            encoding,
            is_bigendian,
            step,
            data,
        },
    ))
}

/// Writes a `sensor_msgs/msg/CompressedImage` (tests, tools).
pub fn encode_compressed_image(header: &Header, format: &str, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 64 + header.frame_id.len() + format.len() + data.len()];
    let len = (|| {
        let mut w = CdrWriter::new(&mut out)?;
        header.write(&mut w)?;
        w.string(format)?;
        w.byte_sequence(data)?;
        Ok::<_, CdrError>(w.len())
    })()
    .unwrap_or(0);
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twist_stamped_layout() {
        let twist = TwistStamped {
            header: Header {
                stamp: Time { sec: 1, nanosec: 2 },
                frame_id: "base",
            },
            linear: [1.0, 2.0, 3.0],
            angular: [4.0, 5.0, 6.0],
        };
        let mut buffer = [0u8; 128];
        let len = twist.encode(&mut buffer).unwrap();
        // 4 header + 8 stamp + 4 length + "base\0" (5) = 21 → body offset 17, padded to 24
        // (absolute 28), then 48 bytes.
        assert_eq!(len, 28 + 48);
        assert_eq!(&buffer[12..21], &[5, 0, 0, 0, b'b', b'a', b's', b'e', 0]);
        assert_eq!(&buffer[28..36], &1.0f64.to_le_bytes());
        assert_eq!(TwistStamped::decode(&buffer[..len]).unwrap(), twist);
        assert!(len <= TWIST_STAMPED_FIXED_LEN + 4);
    }

    #[test]
    fn time_conversions() {
        let t = Time::from_unix_ns(1_700_000_000_123_456_789);
        assert_eq!(
            t,
            Time {
                sec: 1_700_000_000,
                nanosec: 123_456_789
            }
        );
        assert_eq!(t.to_unix_ns(), Some(1_700_000_000_123_456_789));
        assert_eq!(
            Time {
                sec: -1,
                nanosec: 0
            }
            .to_unix_ns(),
            None
        );
        assert_eq!(
            Time {
                sec: 0,
                nanosec: 1_000_000_000
            }
            .to_unix_ns(),
            None
        );
    }

    #[test]
    fn strings_over_the_limit_are_refused_from_their_length() {
        let mut buffer = [0u8; 64];
        let len = encode_string("pick up the cup", &mut buffer).unwrap();
        assert_eq!(
            decode_string(&buffer[..len], 64),
            Ok(&b"pick up the cup"[..])
        );
        assert_eq!(
            decode_string(&buffer[..len], 4),
            Err(StringRefusal::TooLarge { bytes: 15 })
        );
        // A length that claims more than the payload holds, under the limit: malformed.
        let mut lying = buffer[..len].to_vec();
        lying[4] = 40;
        assert!(matches!(
            decode_string(&lying, 64),
            Err(StringRefusal::Malformed(_))
        ));
    }

    #[test]
    fn float64_array_round_trips() {
        let mut buffer = [0u8; 64];
        let len = encode_float64_array(&[0.25], &mut buffer).unwrap();
        // header, dim count 0, data_offset 0, count 1, padding to 8, one f64.
        assert_eq!(len, 4 + 4 + 4 + 4 + 4 + 8);
        assert_eq!(decode_float64_array(&buffer[..len], 8).unwrap(), vec![0.25]);
    }
}
