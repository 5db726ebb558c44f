//! The request and reply of remote inference (ARCHITECTURE.md §16, *contract*): little-endian
//! binary records with a magic, a version and length-prefixed fields, decoded without
//! trusting any length. Both sides refuse a version they do not know.

use sha2::Digest as _;

/// First bytes of a request.
pub const REQUEST_MAGIC: [u8; 4] = *b"VLAQ";
/// First bytes of a reply.
pub const REPLY_MAGIC: [u8; 4] = *b"VLAP";
/// The format version this build writes and reads.
pub const WIRE_VERSION: u16 = 1;
/// Bytes before a request's variable part.
pub const REQUEST_HEADER_LEN: usize = 44;
/// Bytes before a reply's variable part.
pub const REPLY_HEADER_LEN: usize = 40;
/// Longest instruction a request may carry (the service's own `[instruction] max_bytes`
/// ceiling).
pub const MAX_INSTRUCTION_BYTES: usize = crate::config::MAX_INSTRUCTION_BYTES_LIMIT;
/// Widest and tallest frame a request may carry.
pub const MAX_FRAME_SIDE: u16 = 4096;
/// Bytes of an instruction's hash (SHA-256).
pub const INSTRUCTION_HASH_LEN: usize = 32;

/// Request flag: the instruction field is the SHA-256 of an instruction the server has seen.
const FLAG_INSTRUCTION_HASH: u16 = 1;

/// How a request's frame is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameEncoding {
    /// Packed RGB8 rows, `width · height · 3` bytes.
    Raw = 0,
    /// A baseline JPEG of `width × height`.
    Jpeg = 1,
}

/// The instruction a request runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionField<'a> {
    Text(&'a str),
    /// SHA-256 of an instruction sent in full earlier.
    Hash([u8; INSTRUCTION_HASH_LEN]),
}

/// SHA-256 of an instruction's UTF-8 bytes: what a request sends in place of a text the
/// server has answered before.
pub fn instruction_hash(text: &str) -> [u8; INSTRUCTION_HASH_LEN] {
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// One inference request, borrowing its variable parts from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    /// Chosen by the robot; the reply carries it back.
    pub request_id: u64,
    /// The frame's capture time on the robot's clock (ns), carried back in the reply.
    pub capture_time_ns: u64,
    /// How long the robot waits for the reply, counted from sending (µs). The server drops
    /// a request whose budget has run out before its batch starts.
    pub budget_us: u32,
    /// The robot's id: which server of several answers it (ARCHITECTURE.md §16).
    pub robot_id: &'a str,
    /// Dataset statistics to un-normalise with; empty: the server's configured key.
    pub unnorm_key: &'a str,
    pub instruction: InstructionField<'a>,
    pub encoding: FrameEncoding,
    pub width: u16,
    pub height: u16,
    pub frame: &'a [u8],
}

/// What a reply says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyStatus {
    Ok = 0,
    /// The queue or the batch is full: refused at once, nothing computed.
    Busy = 1,
    /// The request's budget ran out before its batch started: dropped before compute.
    Expired = 2,
    /// The request could not be decoded or is out of limits; the message says which field.
    BadRequest = 3,
    /// The instruction hash names no instruction this server has seen: send the text.
    UnknownInstruction = 4,
    /// The policy failed on this request; the message says why.
    PolicyError = 5,
}

impl ReplyStatus {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            0 => Self::Ok,
            1 => Self::Busy,
            2 => Self::Expired,
            3 => Self::BadRequest,
            4 => Self::UnknownInstruction,
            5 => Self::PolicyError,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Busy => "busy",
            Self::Expired => "expired",
            Self::BadRequest => "bad request",
            Self::UnknownInstruction => "unknown instruction",
            Self::PolicyError => "policy error",
        }
    }
}

/// The server's time for a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerTimings {
    /// From the request's arrival to the start of its batch (µs).
    pub queue_us: u32,
    /// The batch's compute time (µs).
    pub compute_us: u32,
    /// Requests in the batch (1: unbatched).
    pub batch_size: u16,
}

/// Most action rows a reply may carry (a chunk's length).
pub const MAX_REPLY_ROWS: usize = 64;
/// Most values in an action row.
pub const MAX_ACTION_DIM: usize = 32;

/// One reply, borrowing its variable parts from the payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply<'a> {
    pub status: ReplyStatus,
    pub request_id: u64,
    pub capture_time_ns: u64,
    pub timings: ServerTimings,
    /// `sha256:<hex>` of the checkpoint the server runs.
    pub fingerprint: &'a str,
    /// The answering server's id (its Zenoh session id).
    pub server_id: &'a str,
    /// Rows of `action_dim` un-normalised values: one row for the token path.
    pub rows: usize,
    pub action_dim: usize,
    /// `rows · action_dim` little-endian f32.
    actions: &'a [u8],
    /// The generated action tokens (token path), little-endian u32.
    tokens: &'a [u8],
    /// Why, when the status is not `Ok`.
    pub message: &'a str,
}

impl Reply<'_> {
    /// Action value `column` of row `row`.
    pub fn action(&self, row: usize, column: usize) -> f32 {
        let at = (row * self.action_dim + column) * 4;
        f32::from_le_bytes([
            self.actions[at],
            self.actions[at + 1],
            self.actions[at + 2],
            self.actions[at + 3],
        ])
    }

    pub fn tokens(&self) -> impl Iterator<Item = u32> + '_ {
        self.tokens
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Why a payload is not a request or a reply; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{len} bytes: shorter than the {needed}-byte header")]
    Short { len: usize, needed: usize },
    #[error("magic {found:02x?}: not a vla-rt {what}")]
    Magic { what: &'static str, found: [u8; 4] },
    #[error("version {found}: this build reads version {WIRE_VERSION}")]
    Version { found: u16 },
    #[error("field {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error("{len} bytes, the fields add up to {expected}")]
    Length { len: usize, expected: usize },
}

fn field(field: &'static str, message: impl Into<String>) -> WireError {
    WireError::Field {
        field,
        message: message.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(bytes)
}

fn utf8<'a>(name: &'static str, bytes: &'a [u8]) -> Result<&'a str, WireError> {
    std::str::from_utf8(bytes).map_err(|e| field(name, format!("not UTF-8: {e}")))
}

/// Splits `len` bytes off the front of `rest`; the caller has checked the total length.
fn take<'a>(rest: &mut &'a [u8], len: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    head
}

/// The length, magic and version every message starts with.
fn check_header(
    payload: &[u8],
    header_len: usize,
    expected_magic: [u8; 4],
    what: &'static str,
) -> Result<(), WireError> {
    if payload.len() < header_len {
        return Err(WireError::Short {
            len: payload.len(),
            needed: header_len,
        });
    }
    let magic = [payload[0], payload[1], payload[2], payload[3]];
    if magic != expected_magic {
        return Err(WireError::Magic { what, found: magic });
    }
    let version = u16_at(payload, 4);
    if version != WIRE_VERSION {
        return Err(WireError::Version { found: version });
    }
    Ok(())
}

impl<'a> Request<'a> {
    /// Decodes and checks a request: magic, version, lengths, UTF-8, frame size against its
    /// encoding. Never panics, whatever the bytes.
    pub fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        check_header(payload, REQUEST_HEADER_LEN, REQUEST_MAGIC, "request")?;
        let flags = u16_at(payload, 6);
        if flags & !FLAG_INSTRUCTION_HASH != 0 {
            return Err(field("flags", format!("unknown bits {flags:#06x}")));
        }
        let encoding = match payload[28] {
            0 => FrameEncoding::Raw,
            1 => FrameEncoding::Jpeg,
            other => return Err(field("frame_encoding", format!("{other} is not 0 or 1"))),
        };
        let robot_len = payload[29] as usize;
        let unnorm_len = payload[30] as usize;
        if payload[31] != 0 {
            return Err(field("reserved", "must be 0"));
        }
        let width = u16_at(payload, 32);
        let height = u16_at(payload, 34);
        if width == 0 || height == 0 || width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
            return Err(field(
                "width/height",
                format!("{width}×{height}: each side must be 1 to {MAX_FRAME_SIDE}"),
            ));
        }
        let instruction_len = u32_at(payload, 36) as usize;
        let frame_len = u32_at(payload, 40) as usize;
        let hashed = flags & FLAG_INSTRUCTION_HASH != 0;
        if hashed && instruction_len != INSTRUCTION_HASH_LEN {
            return Err(field(
                "instruction",
                format!("{instruction_len} bytes of hash, {INSTRUCTION_HASH_LEN} expected"),
            ));
        }
        if instruction_len > MAX_INSTRUCTION_BYTES {
            return Err(field(
                "instruction",
                format!("{instruction_len} bytes, at most {MAX_INSTRUCTION_BYTES}"),
            ));
        }
        let raw_len = width as usize * height as usize * 3;
        match encoding {
            FrameEncoding::Raw if frame_len != raw_len => {
                return Err(field(
                    "frame",
                    format!(
                        "{frame_len} bytes of raw RGB for {width}×{height}: {raw_len} expected"
                    ),
                ))
            }
            FrameEncoding::Jpeg if frame_len == 0 || frame_len > raw_len + 65_536 => {
                return Err(field(
                    "frame",
                    format!("{frame_len} bytes of JPEG for {width}×{height}"),
                ))
            }
            _ => {}
        }
        let expected = REQUEST_HEADER_LEN + robot_len + unnorm_len + instruction_len + frame_len;
        if payload.len() != expected {
            return Err(WireError::Length {
                len: payload.len(),
                expected,
            });
        }
        let mut rest = &payload[REQUEST_HEADER_LEN..];
        let robot_id = utf8("robot_id", take(&mut rest, robot_len))?;
        let unnorm_key = utf8("unnorm_key", take(&mut rest, unnorm_len))?;
        let instruction_bytes = take(&mut rest, instruction_len);
        let instruction = if hashed {
            let mut hash = [0u8; INSTRUCTION_HASH_LEN];
            hash.copy_from_slice(instruction_bytes);
            InstructionField::Hash(hash)
        } else {
            let text = utf8("instruction", instruction_bytes)?;
            if text.trim().is_empty() {
                return Err(field("instruction", "empty"));
            }
            InstructionField::Text(text)
        };
        Ok(Self {
            request_id: u64_at(payload, 8),
            capture_time_ns: u64_at(payload, 16),
            budget_us: u32_at(payload, 24),
            robot_id,
            unnorm_key,
            instruction,
            encoding,
            width,
            height,
            frame: rest,
        })
    }

    /// Appends the encoded request to `out` (cleared first). Refuses what `decode` would.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let robot = self.robot_id.as_bytes();
        let unnorm = self.unnorm_key.as_bytes();
        if robot.len() > u8::MAX as usize {
            return Err(field(
                "robot_id",
                format!("{} bytes, at most 255", robot.len()),
            ));
        }
        if unnorm.len() > u8::MAX as usize {
            return Err(field(
                "unnorm_key",
                format!("{} bytes, at most 255", unnorm.len()),
            ));
        }
        let (flags, instruction): (u16, &[u8]) = match &self.instruction {
            InstructionField::Text(text) => (0, text.as_bytes()),
            InstructionField::Hash(hash) => (FLAG_INSTRUCTION_HASH, hash),
        };
        if instruction.len() > MAX_INSTRUCTION_BYTES {
            return Err(field(
                "instruction",
                format!(
                    "{} bytes, at most {MAX_INSTRUCTION_BYTES}",
                    instruction.len()
                ),
            ));
        }
        let frame_len = u32::try_from(self.frame.len())
            .map_err(|_| field("frame", format!("{} bytes", self.frame.len())))?;
        out.clear();
        out.extend_from_slice(&REQUEST_MAGIC);
        out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.capture_time_ns.to_le_bytes());
        out.extend_from_slice(&self.budget_us.to_le_bytes());
        out.push(self.encoding as u8);
        out.push(robot.len() as u8);
        out.push(unnorm.len() as u8);
        out.push(0);
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&(instruction.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame_len.to_le_bytes());
        out.extend_from_slice(robot);
        out.extend_from_slice(unnorm);
        out.extend_from_slice(instruction);
        out.extend_from_slice(self.frame);
        Ok(())
    }
}

/// What a server puts in a reply; [`ReplyParts::encode`] writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyParts<'a> {
    pub status: ReplyStatus,
    pub request_id: u64,
    pub capture_time_ns: u64,
    pub timings: ServerTimings,
    pub fingerprint: &'a str,
    pub server_id: &'a str,
    /// `rows × action_dim`, row-major.
    pub actions: &'a [f32],
    pub action_dim: usize,
    pub tokens: &'a [u32],
    pub message: &'a str,
}

/// Longest message a reply carries; longer ones are cut at a character boundary.
pub const MAX_REPLY_MESSAGE: usize = 1024;

impl ReplyParts<'_> {
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let rows = self.actions.len().checked_div(self.action_dim).unwrap_or(0);
        if rows * self.action_dim != self.actions.len()
            || rows > MAX_REPLY_ROWS
            || self.action_dim > MAX_ACTION_DIM
        {
            return Err(field(
                "actions",
                format!(
                    "{} values are not rows of {} (at most {MAX_REPLY_ROWS} rows of \
                     {MAX_ACTION_DIM})",
                    self.actions.len(),
                    self.action_dim
                ),
            ));
        }
        if self.tokens.len() > u8::MAX as usize {
            return Err(field("tokens", format!("{} tokens", self.tokens.len())));
        }
        if self.fingerprint.len() > u8::MAX as usize || self.server_id.len() > u8::MAX as usize {
            return Err(field("fingerprint/server_id", "at most 255 bytes each"));
        }
        let message =
            crate::transport::zenoh_io::text_prefix(self.message.as_bytes(), MAX_REPLY_MESSAGE / 4);
        out.clear();
        out.extend_from_slice(&REPLY_MAGIC);
        out.extend_from_slice(&WIRE_VERSION.to_le_bytes());
        out.push(self.status as u8);
        out.push(self.fingerprint.len() as u8);
        out.extend_from_slice(&self.request_id.to_le_bytes());
        out.extend_from_slice(&self.capture_time_ns.to_le_bytes());
        out.extend_from_slice(&self.timings.queue_us.to_le_bytes());
        out.extend_from_slice(&self.timings.compute_us.to_le_bytes());
        out.extend_from_slice(&self.timings.batch_size.to_le_bytes());
        out.push(rows as u8);
        out.push(self.action_dim as u8);
        out.push(self.tokens.len() as u8);
        out.push(self.server_id.len() as u8);
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(self.fingerprint.as_bytes());
        out.extend_from_slice(self.server_id.as_bytes());
        for value in self.actions {
            out.extend_from_slice(&value.to_le_bytes());
        }
        for token in self.tokens {
            out.extend_from_slice(&token.to_le_bytes());
        }
        out.extend_from_slice(message.as_bytes());
        Ok(())
    }
}

impl<'a> Reply<'a> {
    /// Decodes and checks a reply. Never panics, whatever the bytes; non-finite actions in
    /// an `Ok` reply are refused here.
    pub fn decode(payload: &'a [u8]) -> Result<Self, WireError> {
        check_header(payload, REPLY_HEADER_LEN, REPLY_MAGIC, "reply")?;
        let status = ReplyStatus::from_u8(payload[6])
            .ok_or_else(|| field("status", format!("{} is not a known status", payload[6])))?;
        let fingerprint_len = payload[7] as usize;
        let rows = payload[34] as usize;
        let action_dim = payload[35] as usize;
        let tokens_len = payload[36] as usize;
        let server_len = payload[37] as usize;
        let message_len = u16_at(payload, 38) as usize;
        if rows > MAX_REPLY_ROWS || action_dim > MAX_ACTION_DIM {
            return Err(field(
                "rows/action_dim",
                format!("{rows} × {action_dim}: at most {MAX_REPLY_ROWS} × {MAX_ACTION_DIM}"),
            ));
        }
        // What `ReplyParts::encode` writes: rows of no values cannot be written.
        if rows > 0 && action_dim == 0 {
            return Err(field(
                "rows/action_dim",
                format!("{rows} rows of no values"),
            ));
        }
        if message_len > MAX_REPLY_MESSAGE {
            return Err(field(
                "message",
                format!("{message_len} bytes, at most {MAX_REPLY_MESSAGE}"),
            ));
        }
        let actions_len = rows * action_dim * 4;
        let expected = REPLY_HEADER_LEN
            + fingerprint_len
            + server_len
            + actions_len
            + tokens_len * 4
            + message_len;
        if payload.len() != expected {
            return Err(WireError::Length {
                len: payload.len(),
                expected,
            });
        }
        let mut rest = &payload[REPLY_HEADER_LEN..];
        let fingerprint = utf8("fingerprint", take(&mut rest, fingerprint_len))?;
        let server_id = utf8("server_id", take(&mut rest, server_len))?;
        let actions = take(&mut rest, actions_len);
        let tokens = take(&mut rest, tokens_len * 4);
        let message = utf8("message", rest)?;
        let reply = Self {
            status,
            request_id: u64_at(payload, 8),
            capture_time_ns: u64_at(payload, 16),
            timings: ServerTimings {
                queue_us: u32_at(payload, 24),
                compute_us: u32_at(payload, 28),
                batch_size: u16_at(payload, 32),
            },
            fingerprint,
            server_id,
            rows,
            action_dim,
            actions,
            tokens,
            message,
        };
        if status == ReplyStatus::Ok {
            if rows == 0 {
                return Err(field("rows", "an ok reply carries at least one action row"));
            }
            for row in 0..rows {
                for column in 0..action_dim {
                    let value = reply.action(row, column);
                    if !value.is_finite() {
                        return Err(field(
                            "actions",
                            format!("row {row} column {column} is {value}"),
                        ));
                    }
                }
            }
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(frame: &[u8]) -> Request<'_> {
        Request {
            request_id: 7,
            capture_time_ns: 123_456_789,
            budget_us: 200_000,
            robot_id: "arm0",
            unnorm_key: "tiny_bridge",
            instruction: InstructionField::Text("pick up the red block"),
            encoding: FrameEncoding::Raw,
            width: 2,
            height: 2,
            frame,
        }
    }

    #[test]
    fn a_request_survives_encoding() {
        let frame: Vec<u8> = (0..12).collect();
        let sent = request(&frame);
        let mut bytes = Vec::new();
        sent.encode(&mut bytes).unwrap();
        assert_eq!(&bytes[..4], b"VLAQ");
        assert_eq!(
            bytes.len(),
            REQUEST_HEADER_LEN + 4 + 11 + "pick up the red block".len() + 12
        );
        assert_eq!(Request::decode(&bytes).unwrap(), sent);

        let hashed = Request {
            instruction: InstructionField::Hash(instruction_hash("pick up the red block")),
            ..request(&frame)
        };
        hashed.encode(&mut bytes).unwrap();
        assert_eq!(Request::decode(&bytes).unwrap(), hashed);
    }

    #[test]
    fn bad_requests_name_their_field() {
        let frame = [0u8; 12];
        let mut bytes = Vec::new();
        request(&frame).encode(&mut bytes).unwrap();
        let refuse = |mutate: &dyn Fn(&mut Vec<u8>)| {
            let mut copy = bytes.clone();
            mutate(&mut copy);
            Request::decode(&copy).unwrap_err().to_string()
        };
        assert!(refuse(&|b| b[0] = b'X').contains("not a vla-rt request"));
        assert!(refuse(&|b| b[4] = 2).contains("version 2"));
        assert!(refuse(&|b| b[28] = 9).contains("frame_encoding"));
        assert!(refuse(&|b| b.truncate(REQUEST_HEADER_LEN - 1)).contains("header"));
        assert!(refuse(&|b| b.push(0)).contains("add up to"));
        // A raw frame whose size is not width · height · 3.
        assert!(refuse(&|b| b[32] = 3).contains("field frame"));
        // Bytes that are not UTF-8 in the robot id.
        assert!(refuse(&|b| b[REQUEST_HEADER_LEN] = 0xff).contains("robot_id"));
        assert!(refuse(&|b| b[32..34].copy_from_slice(&0u16.to_le_bytes())).contains("width"));
    }

    #[test]
    fn a_reply_survives_encoding_and_refuses_non_finite_actions() {
        let actions: Vec<f32> = (0..14).map(|i| i as f32 * 0.5 - 3.0).collect();
        let parts = ReplyParts {
            status: ReplyStatus::Ok,
            request_id: 99,
            capture_time_ns: 5,
            timings: ServerTimings {
                queue_us: 10,
                compute_us: 20,
                batch_size: 3,
            },
            fingerprint: "sha256:abcd",
            server_id: "server-a",
            actions: &actions,
            action_dim: 7,
            tokens: &[31_000, 31_001],
            message: "",
        };
        let mut bytes = Vec::new();
        parts.encode(&mut bytes).unwrap();
        let reply = Reply::decode(&bytes).unwrap();
        assert_eq!(reply.status, ReplyStatus::Ok);
        assert_eq!(reply.request_id, 99);
        assert_eq!((reply.rows, reply.action_dim), (2, 7));
        assert_eq!(reply.action(1, 6), actions[13]);
        assert_eq!(reply.tokens().collect::<Vec<_>>(), vec![31_000, 31_001]);
        assert_eq!(reply.fingerprint, "sha256:abcd");
        assert_eq!(reply.server_id, "server-a");
        assert_eq!(reply.timings.batch_size, 3);

        let mut poisoned = actions.clone();
        poisoned[3] = f32::NAN;
        ReplyParts {
            actions: &poisoned,
            ..parts.clone()
        }
        .encode(&mut bytes)
        .unwrap();
        let error = Reply::decode(&bytes).unwrap_err().to_string();
        assert!(error.contains("row 0 column 3"), "{error}");

        ReplyParts {
            status: ReplyStatus::Busy,
            actions: &[],
            tokens: &[],
            message: "queue full (32 waiting)",
            ..parts
        }
        .encode(&mut bytes)
        .unwrap();
        let busy = Reply::decode(&bytes).unwrap();
        assert_eq!(busy.status, ReplyStatus::Busy);
        assert_eq!(busy.message, "queue full (32 waiting)");

        // Rows of no values: not something encode writes, refused.
        bytes[34] = 2;
        bytes[35] = 0;
        let error = Reply::decode(&bytes).unwrap_err().to_string();
        assert!(error.contains("2 rows of no values"), "{error}");
    }
}
