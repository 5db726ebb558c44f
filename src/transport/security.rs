//! What the service's Zenoh session exposes, judged from its configuration: which endpoints
//! are reachable from other hosts without TLS, whether peers must present a certificate, and
//! whether the session enforces an access-control policy. Authentication and authorisation
//! themselves are Zenoh's (TLS transport, `access_control`); this module only reads the
//! configuration, refuses an exposed one when `[zenoh] require_tls` asks for it, and bounds
//! the size of the messages the session accepts.

use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// Link protocols this binary is built with (zenoh features `transport_tcp`, `transport_udp`,
/// `transport_tls`). An endpoint naming another one would be ignored by Zenoh: it is refused.
pub const BUILT_IN_PROTOCOLS: [&str; 3] = ["tcp", "udp", "tls"];

/// What the session's configuration says about its exposure and authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TransportSecurity {
    /// Every endpoint the session listens on or connects to is `tls/`, and links found by
    /// scouting cannot be anything else (scouting off, or `transport/link/protocols` = tls).
    pub tls: bool,
    /// `tls` and `transport/link/tls/enable_mtls`: each peer proves itself with a certificate
    /// signed by `root_ca_certificate`, and the service does the same.
    pub mutual: bool,
    /// The session enforces Zenoh `access_control` with `default_permission` deny. A policy a
    /// router enforces further on is not visible from here.
    pub access_control: bool,
    /// Every endpoint is on loopback and scouting cannot add links: no other host can reach
    /// the session.
    pub loopback_only: bool,
    /// Endpoints (or the scouting key) through which other hosts reach the session without
    /// TLS.
    #[serde(skip)]
    pub exposed: Vec<String>,
    /// The endpoints in effect, listen first (for the start-up log line).
    #[serde(skip)]
    pub endpoints: Vec<String>,
    /// Multicast scouting is on (`scouting/multicast/enabled`): peers find the session, and
    /// it finds them, without any endpoint configured.
    #[serde(skip)]
    pub multicast_scouting: bool,
}

/// A configuration this binary cannot honour, or one `require_tls` refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecurityProblem {
    /// An endpoint whose protocol is not built in.
    UnknownProtocol { endpoint: String },
    /// A configuration value that cannot be read.
    Unreadable { key: String, message: String },
    /// Settings of an authentication method this binary is built without (Zenoh's
    /// `auth_usrpwd` and `auth_pubkey`), which Zenoh would ignore without a word.
    AuthNotBuiltIn { key: String },
}

/// Zenoh authentication settings that this build does not compile in.
const AUTH_NOT_BUILT_IN: [&str; 2] = ["transport/auth/usrpwd", "transport/auth/pubkey"];

/// The largest inbound Zenoh message the session accepts for `largest_payload` bytes of
/// legitimate payload (the instruction): twice the payload, plus 2 KiB for the key
/// expression, the Zenoh headers and extensions.
pub fn inbound_message_limit(largest_payload: usize) -> usize {
    largest_payload.saturating_mul(2).saturating_add(2048)
}

/// Bounds what a peer can make the session hold for one message: batches no larger than
/// `limit` (the smaller of the two sides' batch sizes wins, so a peer must fragment anything
/// longer) and at most `limit` bytes reassembled from fragments (larger messages are dropped
/// by Zenoh, the link stays up).
pub fn limit_inbound_messages(config: &mut zenoh::Config, limit: usize) -> Result<(), String> {
    let batch = limit.clamp(1024, usize::from(u16::MAX));
    for (key, value) in [
        ("transport/link/tx/batch_size", batch),
        ("transport/link/rx/max_message_size", limit),
    ] {
        config
            .insert_json5(key, &value.to_string())
            .map_err(|e| format!("{key}: {}", super::zenoh_error_text(&*e)))?;
    }
    Ok(())
}

/// Reads the session's endpoints, TLS and access-control settings from `config`, and refuses
/// authentication settings this build would ignore.
pub fn assess(config: &zenoh::Config) -> Result<TransportSecurity, SecurityProblem> {
    for section in AUTH_NOT_BUILT_IN {
        if let serde_json::Value::Object(fields) = get_json(config, section)? {
            if let Some((field, _)) = fields.iter().find(|(_, value)| !value.is_null()) {
                return Err(SecurityProblem::AuthNotBuiltIn {
                    key: format!("{section}/{field}"),
                });
            }
        }
    }
    let mode = get_json(config, "mode")?
        .as_str()
        .unwrap_or("peer")
        .to_string();
    let listen = endpoints(config, "listen/endpoints", &mode)?;
    let connect = endpoints(config, "connect/endpoints", &mode)?;
    let protocols: Option<Vec<String>> = get_json(config, "transport/link/protocols")?
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        });
    let multicast = get_json(config, "scouting/multicast/enabled")?
        .as_bool()
        .unwrap_or(true);
    // Scouting opens links to peers it hears of, over any protocol they offer unless the
    // protocols are pinned. Gossip only spreads among peers already linked, so it adds no
    // host that could not reach the session already; multicast does.
    let tls_only_protocols = protocols
        .as_ref()
        .is_some_and(|p| !p.is_empty() && p.iter().all(|p| p == "tls"));
    let scouted_plain_links = multicast && !tls_only_protocols;

    let mut exposed = Vec::new();
    let mut all_loopback = true;
    let mut all_tls = !(listen.is_empty() && connect.is_empty());
    for endpoint in listen.iter().chain(&connect) {
        let parsed = zenoh::config::EndPoint::from_str(endpoint).map_err(|e| {
            SecurityProblem::Unreadable {
                key: endpoint.clone(),
                message: super::zenoh_error_text(&*e),
            }
        })?;
        let protocol = parsed.protocol().as_str().to_string();
        if !BUILT_IN_PROTOCOLS.contains(&protocol.as_str()) {
            return Err(SecurityProblem::UnknownProtocol {
                endpoint: endpoint.clone(),
            });
        }
        let loopback = is_loopback_address(parsed.address().as_str());
        all_loopback &= loopback;
        let tls = protocol == "tls";
        all_tls &= tls;
        if !tls && !loopback {
            exposed.push(endpoint.clone());
        }
    }
    if scouted_plain_links {
        exposed.push("scouting/multicast/enabled".to_string());
    }
    let tls = all_tls && !scouted_plain_links;
    let mtls = get_json(config, "transport/link/tls/enable_mtls")?
        .as_bool()
        .unwrap_or(false);
    let acl_enabled = get_json(config, "access_control/enabled")?
        .as_bool()
        .unwrap_or(false);
    let default_deny =
        get_json(config, "access_control/default_permission")?.as_str() == Some("deny");
    Ok(TransportSecurity {
        tls,
        mutual: tls && mtls,
        access_control: acl_enabled && default_deny,
        loopback_only: all_loopback && !multicast,
        exposed,
        endpoints: listen
            .iter()
            .map(|e| format!("listen {e}"))
            .chain(connect.iter().map(|e| format!("connect {e}")))
            .collect(),
        multicast_scouting: multicast,
    })
}

fn get_json(config: &zenoh::Config, key: &str) -> Result<serde_json::Value, SecurityProblem> {
    let unreadable = |message: String| SecurityProblem::Unreadable {
        key: key.to_string(),
        message,
    };
    let text = config
        .get_json(key)
        .map_err(|e| unreadable(super::zenoh_error_text(&*e)))?;
    serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))
}

/// Endpoints of `key` for `mode`: either a list, or a `{router, peer, client}` map of lists.
fn endpoints(
    config: &zenoh::Config,
    key: &str,
    mode: &str,
) -> Result<Vec<String>, SecurityProblem> {
    let value = get_json(config, key)?;
    let list = match &value {
        serde_json::Value::Object(by_mode) => by_mode.get(mode).cloned().unwrap_or_default(),
        other => other.clone(),
    };
    Ok(list
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// `127.0.0.1:7447`, `[::1]:7447` and `localhost:7447` are loopback; an unspecified address
/// (`0.0.0.0`, `[::]`) and any other host name are not.
fn is_loopback_address(address: &str) -> bool {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => address,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    IpAddr::from_str(host).is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json5: &str) -> zenoh::Config {
        zenoh::Config::from_json5(json5).unwrap()
    }

    #[test]
    fn loopback_addresses() {
        for address in [
            "127.0.0.1:7447",
            "127.3.2.1:1",
            "[::1]:7447",
            "localhost:80",
        ] {
            assert!(is_loopback_address(address), "{address}");
        }
        for address in [
            "0.0.0.0:7447",
            "[::]:7447",
            "192.168.10.2:7447",
            "robot.local:7447",
        ] {
            assert!(!is_loopback_address(address), "{address}");
        }
    }

    #[test]
    fn plain_tcp_on_loopback_is_not_exposed() {
        let s = assess(&config(
            r#"{listen: {endpoints: ["tcp/127.0.0.1:7447"]}, scouting: {multicast: {enabled: false}}}"#,
        ))
        .unwrap();
        assert!(s.loopback_only && !s.tls && !s.mutual && !s.access_control);
        assert!(s.exposed.is_empty());
    }

    #[test]
    fn plain_tcp_to_a_lan_router_is_exposed() {
        let s = assess(&config(
            r#"{mode: "client", connect: {endpoints: ["tcp/192.168.10.2:7447"]}, listen: {endpoints: []}, scouting: {multicast: {enabled: false}}}"#,
        ))
        .unwrap();
        assert_eq!(s.exposed, vec!["tcp/192.168.10.2:7447".to_string()]);
        assert!(!s.loopback_only && !s.tls);
    }

    #[test]
    fn multicast_scouting_exposes_unless_protocols_are_pinned_to_tls() {
        let s = assess(&config(
            r#"{listen: {endpoints: ["tls/0.0.0.0:7447"]}, scouting: {multicast: {enabled: true}}}"#,
        ))
        .unwrap();
        assert_eq!(s.exposed, vec!["scouting/multicast/enabled".to_string()]);
        assert!(!s.tls);
        let s = assess(&config(
            r#"{listen: {endpoints: ["tls/0.0.0.0:7447"]}, scouting: {multicast: {enabled: true}},
                transport: {link: {protocols: ["tls"], tls: {enable_mtls: true}}}}"#,
        ))
        .unwrap();
        assert!(s.exposed.is_empty() && s.tls && s.mutual);
    }

    #[test]
    fn mode_dependent_endpoints_follow_the_mode() {
        let s = assess(&config(
            r#"{mode: "peer", listen: {endpoints: {router: ["tcp/0.0.0.0:7447"], peer: ["tls/0.0.0.0:7447"]}},
                scouting: {multicast: {enabled: false}}, transport: {link: {tls: {enable_mtls: true}}},
                access_control: {enabled: true, default_permission: "deny"}}"#,
        ))
        .unwrap();
        assert!(s.tls && s.mutual && s.access_control && s.exposed.is_empty());
        assert_eq!(s.endpoints, vec!["listen tls/0.0.0.0:7447".to_string()]);
    }

    #[test]
    fn an_allow_by_default_policy_is_not_reported_as_access_control() {
        let s = assess(&config(
            r#"{access_control: {enabled: true, default_permission: "allow"}}"#,
        ))
        .unwrap();
        assert!(!s.access_control);
    }

    #[test]
    fn protocols_not_built_in_are_refused() {
        let err = assess(&config(r#"{listen: {endpoints: ["quic/0.0.0.0:7447"]}}"#)).unwrap_err();
        assert_eq!(
            err,
            SecurityProblem::UnknownProtocol {
                endpoint: "quic/0.0.0.0:7447".into()
            }
        );
    }

    #[test]
    fn authentication_methods_not_built_in_are_refused() {
        let err = assess(&config(
            r#"{transport: {auth: {usrpwd: {user: "operator", password: "secret"}}}}"#,
        ))
        .unwrap_err();
        assert!(
            matches!(&err, SecurityProblem::AuthNotBuiltIn { key } if key.starts_with("transport/auth/usrpwd/")),
            "{err:?}"
        );
        let err = assess(&config(
            r#"{transport: {auth: {pubkey: {known_keys_file: "/etc/vla-rt/keys"}}}}"#,
        ))
        .unwrap_err();
        assert_eq!(
            err,
            SecurityProblem::AuthNotBuiltIn {
                key: "transport/auth/pubkey/known_keys_file".into()
            }
        );
        // Zenoh's defaults (every field null) are no request for either.
        assert!(assess(&zenoh::Config::default()).is_ok());
    }

    #[test]
    fn the_message_limit_is_applied() {
        let mut c = zenoh::Config::default();
        limit_inbound_messages(&mut c, inbound_message_limit(1024)).unwrap();
        assert_eq!(
            c.get_json("transport/link/rx/max_message_size").unwrap(),
            "4096"
        );
        assert_eq!(c.get_json("transport/link/tx/batch_size").unwrap(), "4096");
    }
}
