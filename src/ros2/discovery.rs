//! rmw_zenoh's conventions for finding and framing data: the data key expression of a topic,
//! the liveliness tokens of a node and its endpoints, and the 33-byte attachment every
//! sample carries.
//!
//! - Data: `<domain_id>/<topic without its leading slash>/<DDS type name>/<type hash>`.
//! - Node token: `@ros2_lv/<domain>/<zid>/<nid>/<nid>/NN/<enclave>/<namespace>/<node>`.
//! - Endpoint token: `@ros2_lv/<domain>/<zid>/<nid>/<eid>/<MP|MS>/<enclave>/<namespace>/
//!   <node>/<topic>/<type>/<hash>/<qos>`, names with `/` written as `%`, an empty part as `%`.
//! - Attachment: sequence number (i64 LE), source timestamp in ns since the epoch (i64 LE),
//!   the byte 16 (the GID's length), the 16-byte GID. rmw_zenoh drops a sample without it.

use super::types::MessageType;

/// Length of the attachment.
pub const ATTACHMENT_LEN: usize = 33;
/// Length of a GID.
pub const GID_LEN: usize = 16;

/// The attachment of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    pub sequence: i64,
    pub source_timestamp_ns: i64,
    pub gid: [u8; GID_LEN],
}

impl Attachment {
    pub fn encode(&self) -> [u8; ATTACHMENT_LEN] {
        let mut out = [0u8; ATTACHMENT_LEN];
        out[0..8].copy_from_slice(&self.sequence.to_le_bytes());
        out[8..16].copy_from_slice(&self.source_timestamp_ns.to_le_bytes());
        out[16] = GID_LEN as u8;
        out[17..].copy_from_slice(&self.gid);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != ATTACHMENT_LEN {
            return Err(format!(
                "attachment of {} bytes, expected {ATTACHMENT_LEN}",
                bytes.len()
            ));
        }
        if bytes[16] != GID_LEN as u8 {
            return Err(format!(
                "attachment GID length {}, expected {GID_LEN}",
                bytes[16]
            ));
        }
        let i64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            i64::from_le_bytes(b)
        };
        let mut gid = [0u8; GID_LEN];
        gid.copy_from_slice(&bytes[17..]);
        Ok(Self {
            sequence: i64_at(0),
            source_timestamp_ns: i64_at(8),
            gid,
        })
    }
}

/// The data key expression of `topic` (fully qualified) with `message`.
pub fn data_key(domain_id: u32, topic: &str, message: &MessageType) -> String {
    format!(
        "{domain_id}/{}/{}/{}",
        topic.trim_start_matches('/'),
        message.dds_name,
        message.hash
    )
}

/// What subscribes to every type on `topic`, so that a sample of the wrong type on the right
/// name is seen (and refused, counted) rather than silently missed.
pub fn any_type_key(domain_id: u32, topic: &str) -> String {
    format!("{domain_id}/{}/*/*", topic.trim_start_matches('/'))
}

/// The type and hash chunks of a data key expression (its last two chunks).
pub fn type_of_key(key: &str) -> Option<(&str, &str)> {
    let mut chunks = key.rsplitn(3, '/');
    let hash = chunks.next()?;
    let dds_name = chunks.next()?;
    chunks.next()?;
    Some((dds_name, hash))
}

/// A name with `/` written as `%`; an empty name (or `/`) is `%`.
pub fn mangle(name: &str) -> String {
    if name.is_empty() || name == "/" {
        return "%".into();
    }
    name.replace('/', "%")
}

/// Whether an endpoint publishes or subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    Publisher,
    Subscription,
}

/// QoS as rmw_zenoh writes it in a token:
/// `<reliability>:<durability>:<history>,<depth>:<deadline s>,<ns>:<lifespan s>,<ns>:
/// <liveliness>,<lease s>,<ns>`, where an empty field is the default (reliable, volatile,
/// keep last, infinite durations, automatic liveliness).
pub fn qos_chunk(best_effort: bool, depth: u32) -> String {
    format!("{}::,{depth}:,:,:,,", if best_effort { "2" } else { "" })
}

/// The node's identity in the graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    pub domain_id: u32,
    /// The Zenoh session id as rmw_zenoh writes it (lowercase hex).
    pub zid: String,
    pub node_id: u32,
    pub namespace: String,
    pub node_name: String,
}

impl NodeIdentity {
    fn prefix(&self, entity_id: u32, kind: &str) -> String {
        format!(
            "@ros2_lv/{}/{}/{}/{entity_id}/{kind}/%/{}/{}",
            self.domain_id,
            self.zid,
            self.node_id,
            mangle(&self.namespace),
            self.node_name
        )
    }

    /// The node's liveliness token.
    pub fn node_token(&self) -> String {
        self.prefix(self.node_id, "NN")
    }

    /// An endpoint's liveliness token.
    pub fn endpoint_token(
        &self,
        entity_id: u32,
        kind: EndpointKind,
        topic: &str,
        message: &MessageType,
        qos: &str,
    ) -> String {
        format!(
            "{}/{}/{}/{}/{qos}",
            self.prefix(
                entity_id,
                match kind {
                    EndpointKind::Publisher => "MP",
                    EndpointKind::Subscription => "MS",
                }
            ),
            mangle(topic),
            message.dds_name,
            message.hash
        )
    }
}

/// A GID for one endpoint: the first 16 bytes of SHA-256 over the session id and the
/// entity id (stable for the session, distinct between endpoints and sessions).
pub fn endpoint_gid(zid: &str, entity_id: u32) -> [u8; GID_LEN] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(zid.as_bytes());
    hasher.update(entity_id.to_le_bytes());
    let digest = hasher.finalize();
    let mut gid = [0u8; GID_LEN];
    gid.copy_from_slice(&digest[..GID_LEN]);
    gid
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros2::types::{STRING, TWIST_STAMPED};

    #[test]
    fn keys_follow_rmw_zenoh() {
        // The example of rmw_zenoh's design document.
        assert_eq!(
            data_key(0, "/robot1/chatter", &STRING),
            "0/robot1/chatter/std_msgs::msg::dds_::String_/\
             RIHS01_df668c740482bbd48fb39d76a70dfd4bd59db1288021743503259e948f6b1a18"
        );
        assert_eq!(any_type_key(3, "/a/b"), "3/a/b/*/*");
        assert_eq!(
            type_of_key("0/a/b/std_msgs::msg::dds_::String_/RIHS01_x"),
            Some(("std_msgs::msg::dds_::String_", "RIHS01_x"))
        );
        let node = NodeIdentity {
            domain_id: 0,
            zid: "1f2e".into(),
            node_id: 0,
            namespace: "/arm7".into(),
            node_name: "vla_rt".into(),
        };
        assert_eq!(node.node_token(), "@ros2_lv/0/1f2e/0/0/NN/%/%arm7/vla_rt");
        assert_eq!(
            node.endpoint_token(
                2,
                EndpointKind::Publisher,
                "/arm7/delta_twist_cmds",
                &TWIST_STAMPED,
                &qos_chunk(false, 1)
            ),
            format!(
                "@ros2_lv/0/1f2e/0/2/MP/%/%arm7/vla_rt/%arm7%delta_twist_cmds/\
                 geometry_msgs::msg::dds_::TwistStamped_/{}/::,1:,:,:,,",
                TWIST_STAMPED.hash
            )
        );
        assert_eq!(mangle("/"), "%");
        assert_eq!(qos_chunk(true, 5), "2::,5:,:,:,,");
    }

    #[test]
    fn attachment_layout() {
        let attachment = Attachment {
            sequence: 0x0102,
            source_timestamp_ns: 1_700_000_000_000_000_001,
            gid: [7; 16],
        };
        let bytes = attachment.encode();
        assert_eq!(&bytes[..8], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes[16], 16);
        assert_eq!(Attachment::decode(&bytes), Ok(attachment));
        assert!(Attachment::decode(&bytes[..32]).is_err());
        let mut bad = bytes;
        bad[16] = 8;
        assert!(Attachment::decode(&bad)
            .unwrap_err()
            .contains("GID length 8"));
        assert_ne!(endpoint_gid("a", 1), endpoint_gid("a", 2));
    }
}
