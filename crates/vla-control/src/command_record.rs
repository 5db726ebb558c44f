//! Command record v1 (ARCHITECTURE.md §9): 64 bytes, little-endian, CRC-32 (IEEE) over bytes 0..60.
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | [u8; 4] | magic `VLA1` |
//! | 4 | u16 | version = 1 |
//! | 6 | u16 | state: 0 = ACT, 1 = HOLD, 2 = STOP |
//! | 8 | u64 | seq |
//! | 16 | u64 | tick time, ns since the Unix epoch |
//! | 24 | u64 | capture time of the frame the action came from (0 if none) |
//! | 32 | [f32; 7] | dx, dy, dz, droll, dpitch, dyaw, gripper |
//! | 60 | u32 | CRC-32 (IEEE) of bytes 0..60 |
//!
//! Encoding writes into a caller-owned array and never allocates.

use crate::ControlState;
use crate::ACTION_DIM;

pub const RECORD_LEN: usize = 64;
pub const MAGIC: [u8; 4] = *b"VLA1";
pub const VERSION: u16 = 1;
const CRC_OFFSET: usize = 60;

/// One command as it travels on `vla/<robot_id>/cmd`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommandRecord {
    pub state: ControlState,
    /// +1 every published command, from 0.
    pub seq: u64,
    /// CLOCK_REALTIME at the tick, ns since the Unix epoch.
    pub tick_time_ns: u64,
    /// Capture time of the frame the action came from, ns since the Unix epoch; 0 if none.
    pub capture_time_ns: u64,
    /// dx, dy, dz, droll, dpitch, dyaw, gripper.
    pub action: [f32; ACTION_DIM],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("command record: {len} bytes, expected {RECORD_LEN}")]
    WrongLength { len: usize },
    #[error("command record: magic {found:02x?}, expected `VLA1`")]
    BadMagic { found: [u8; 4] },
    #[error("command record: version {version}, this decoder reads version {VERSION}")]
    UnsupportedVersion { version: u16 },
    #[error("command record: unknown state {value}")]
    UnknownState { value: u16 },
    #[error("command record: CRC {found:#010x} does not match the content ({computed:#010x})")]
    BadCrc { found: u32, computed: u32 },
}

impl CommandRecord {
    /// Writes the 64-byte wire form into `out`.
    pub fn encode(&self, out: &mut [u8; RECORD_LEN]) {
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&(self.state as u16).to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.tick_time_ns.to_le_bytes());
        out[24..32].copy_from_slice(&self.capture_time_ns.to_le_bytes());
        for (i, value) in self.action.iter().enumerate() {
            let at = 32 + 4 * i;
            out[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        let crc = crc32fast::hash(&out[..CRC_OFFSET]);
        out[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    }

    /// Reads and checks a wire record (length, magic, version, state and CRC).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let bytes: &[u8; RECORD_LEN] = bytes
            .try_into()
            .map_err(|_| RecordError::WrongLength { len: bytes.len() })?;
        let found = u32::from_le_bytes(le_array(bytes, CRC_OFFSET));
        let computed = crc32fast::hash(&bytes[..CRC_OFFSET]);
        if found != computed {
            return Err(RecordError::BadCrc { found, computed });
        }
        let magic: [u8; 4] = le_array(bytes, 0);
        if magic != MAGIC {
            return Err(RecordError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes(le_array(bytes, 4));
        if version != VERSION {
            return Err(RecordError::UnsupportedVersion { version });
        }
        let state_value = u16::from_le_bytes(le_array(bytes, 6));
        let state = ControlState::from_wire(state_value)
            .ok_or(RecordError::UnknownState { value: state_value })?;
        let mut action = [0.0f32; ACTION_DIM];
        for (i, value) in action.iter_mut().enumerate() {
            *value = f32::from_le_bytes(le_array(bytes, 32 + 4 * i));
        }
        Ok(Self {
            state,
            seq: u64::from_le_bytes(le_array(bytes, 8)),
            tick_time_ns: u64::from_le_bytes(le_array(bytes, 16)),
            capture_time_ns: u64::from_le_bytes(le_array(bytes, 24)),
            action,
        })
    }
}

fn le_array<const N: usize>(bytes: &[u8; RECORD_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed by hand with Python's `struct.pack('<4sHHQQQ7f', ...)` and `zlib.crc32`.
    const HAND_COMPUTED: [u8; RECORD_LEN] = [
        0x56, 0x4c, 0x41, 0x31, 0x01, 0x00, 0x01, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02,
        0x01, 0x15, 0xcd, 0x85, 0x3d, 0xfe, 0x9c, 0x97, 0x17, 0x00, 0xe1, 0x1f, 0x3c, 0xfe, 0x9c,
        0x97, 0x17, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x80, 0xbe, 0x00, 0x00, 0x80, 0x3f, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3e, 0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0x80, 0x3f,
        0xa8, 0x1d, 0x13, 0xe1,
    ];

    fn hand_record() -> CommandRecord {
        CommandRecord {
            state: ControlState::Hold,
            seq: 0x0102_0304_0506_0708,
            tick_time_ns: 1_700_000_000_123_456_789,
            capture_time_ns: 1_700_000_000_100_000_000,
            action: [0.5, -0.25, 1.0, 0.0, 0.125, -2.0, 1.0],
        }
    }

    #[test]
    fn crc_is_ieee() {
        // The CRC-32/ISO-HDLC check value.
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn encodes_the_hand_computed_record() {
        let mut out = [0u8; RECORD_LEN];
        hand_record().encode(&mut out);
        assert_eq!(out, HAND_COMPUTED);
    }

    #[test]
    fn decodes_the_hand_computed_record() {
        assert_eq!(
            CommandRecord::decode(&HAND_COMPUTED).unwrap(),
            hand_record()
        );
    }

    #[test]
    fn round_trips_every_state() {
        for state in [ControlState::Act, ControlState::Hold, ControlState::Stop] {
            let record = CommandRecord {
                state,
                seq: 42,
                tick_time_ns: 7,
                capture_time_ns: 0,
                action: [1.5, -1e-7, 3.0e3, f32::MIN_POSITIVE, -0.0, 0.5, 0.0],
            };
            let mut out = [0u8; RECORD_LEN];
            record.encode(&mut out);
            assert_eq!(u16::from_le_bytes([out[6], out[7]]), state as u16);
            assert_eq!(CommandRecord::decode(&out).unwrap(), record);
        }
    }

    #[test]
    fn rejects_damaged_records() {
        assert_eq!(
            CommandRecord::decode(&HAND_COMPUTED[..63]),
            Err(RecordError::WrongLength { len: 63 })
        );

        let mut flipped = HAND_COMPUTED;
        flipped[40] ^= 0x01;
        assert!(matches!(
            CommandRecord::decode(&flipped),
            Err(RecordError::BadCrc {
                found: 0xe113_1da8,
                ..
            })
        ));

        let with_crc = |mut bytes: [u8; RECORD_LEN]| {
            let crc = crc32fast::hash(&bytes[..60]);
            bytes[60..].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let mut magic = HAND_COMPUTED;
        magic[3] = b'2';
        assert_eq!(
            CommandRecord::decode(&with_crc(magic)),
            Err(RecordError::BadMagic { found: *b"VLA2" })
        );
        let mut version = HAND_COMPUTED;
        version[4] = 2;
        assert_eq!(
            CommandRecord::decode(&with_crc(version)),
            Err(RecordError::UnsupportedVersion { version: 2 })
        );
        let mut state = HAND_COMPUTED;
        state[6] = 3;
        assert_eq!(
            CommandRecord::decode(&with_crc(state)),
            Err(RecordError::UnknownState { value: 3 })
        );
    }
}
