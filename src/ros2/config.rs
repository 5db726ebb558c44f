//! `[ros2]` (ARCHITECTURE.md §7, §15): the ROS 2 node vla-rt shows on an rmw_zenoh network.

use serde::Deserialize;

/// Largest ROS 2 domain id (ROS 2's own limit for DDS; rmw_zenoh uses it as a key chunk).
pub const MAX_DOMAIN_ID: u32 = 232;

/// `[ros2]` (*contract*). Off by default; with it on, the native `vla/<robot_id>/...` keys
/// stay as they are and the ROS 2 topics are published from the same ticks.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ros2Config {
    pub enabled: bool,
    /// The first chunk of every ROS 2 key expression (`ROS_DOMAIN_ID`).
    pub domain_id: u32,
    /// The node's namespace; unset: `/<robot_id>`.
    pub namespace: Option<String>,
    pub node_name: String,
    /// `geometry_msgs/msg/TwistStamped`, for MoveIt Servo's `delta_twist_cmds`.
    pub twist_topic: String,
    /// `std_msgs/msg/Float64MultiArray`, for a ros2_control forward command controller.
    pub gripper_topic: String,
    /// `diagnostic_msgs/msg/DiagnosticArray`, at the status rate.
    pub diagnostics_topic: String,
    /// `std_msgs/msg/String`, subscribed: the instruction.
    pub instruction_topic: String,
    /// `std_msgs/msg/Bool`, subscribed: `true` latches the e-stop.
    pub estop_topic: String,
    /// `header.frame_id` of the twist: the frame the policy's deltas are expressed in.
    pub frame_id: String,
    /// The gripper joint position published for a record's gripper 0 (closed) and 1 (open);
    /// values in between are linear.
    pub gripper_closed: f64,
    pub gripper_open: f64,
}

impl Default for Ros2Config {
    fn default() -> Self {
        Self {
            enabled: false,
            domain_id: 0,
            namespace: None,
            node_name: "vla_rt".into(),
            twist_topic: "delta_twist_cmds".into(),
            gripper_topic: "gripper_controller/commands".into(),
            diagnostics_topic: "/diagnostics".into(),
            instruction_topic: "instruction".into(),
            estop_topic: "estop".into(),
            frame_id: "base_link".into(),
            gripper_closed: 0.0,
            gripper_open: 1.0,
        }
    }
}

/// The fully qualified names of the node and its topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ros2Names {
    pub domain_id: u32,
    /// `/` or `/a/b`.
    pub namespace: String,
    pub node_name: String,
    pub twist: String,
    pub gripper: String,
    pub diagnostics: String,
    pub instruction: String,
    pub estop: String,
}

impl Ros2Config {
    /// The namespace in force: the configured one, or `/<robot_id>`.
    pub fn namespace_for(&self, robot_id: &str) -> String {
        self.namespace
            .clone()
            .unwrap_or_else(|| format!("/{robot_id}"))
    }

    /// Resolves the topic names against the namespace (a relative name is put under it, an
    /// absolute one stays). Call after [`Ros2Config::validate`].
    pub fn names(&self, robot_id: &str) -> Ros2Names {
        let namespace = self.namespace_for(robot_id);
        let resolve = |topic: &str| resolve_topic(&namespace, topic);
        Ros2Names {
            domain_id: self.domain_id,
            twist: resolve(&self.twist_topic),
            gripper: resolve(&self.gripper_topic),
            diagnostics: resolve(&self.diagnostics_topic),
            instruction: resolve(&self.instruction_topic),
            estop: resolve(&self.estop_topic),
            node_name: self.node_name.clone(),
            namespace,
        }
    }

    /// Checks every key; `Err((key, message))` names the first bad one. With `[ros2]` off,
    /// the namespace derived from the robot id is not judged (a robot id such as `arm-7`
    /// is no ROS 2 name, and needs `namespace` only once ROS 2 is on).
    pub fn validate(&self, robot_id: &str) -> Result<(), (String, String)> {
        let key = |name: &str| format!("ros2.{name}");
        if self.domain_id > MAX_DOMAIN_ID {
            return Err((
                key("domain_id"),
                format!("{} is not in 0..={MAX_DOMAIN_ID}", self.domain_id),
            ));
        }
        match &self.namespace {
            Some(namespace) => {
                check_namespace(namespace).map_err(|m| (key("namespace"), m))?;
            }
            None if self.enabled => {
                let derived = self.namespace_for(robot_id);
                check_namespace(&derived).map_err(|m| {
                    (
                        key("namespace"),
                        format!(
                            "unset, so `{derived}` (from robot_id), which is not a ROS 2 \
                             namespace: {m}; set ros2.namespace"
                        ),
                    )
                })?;
            }
            None => {}
        }
        check_token(&self.node_name).map_err(|m| (key("node_name"), m))?;
        for (name, topic) in [
            ("twist_topic", &self.twist_topic),
            ("gripper_topic", &self.gripper_topic),
            ("diagnostics_topic", &self.diagnostics_topic),
            ("instruction_topic", &self.instruction_topic),
            ("estop_topic", &self.estop_topic),
        ] {
            check_topic(topic).map_err(|m| (key(name), m))?;
        }
        if self.enabled {
            let names = self.names(robot_id);
            let all = [
                ("twist_topic", &names.twist),
                ("gripper_topic", &names.gripper),
                ("diagnostics_topic", &names.diagnostics),
                ("instruction_topic", &names.instruction),
                ("estop_topic", &names.estop),
            ];
            for (i, (name, topic)) in all.iter().enumerate() {
                if let Some((other, _)) = all[..i].iter().find(|(_, t)| t == topic) {
                    return Err((
                        key(name),
                        format!("`{topic}` is also ros2.{other}: each topic has one type"),
                    ));
                }
            }
        }
        if self.frame_id.is_empty() || self.frame_id.len() > 256 {
            return Err((key("frame_id"), "must be 1 to 256 bytes".into()));
        }
        if self.frame_id.chars().any(char::is_control) {
            return Err((
                key("frame_id"),
                "must not contain control characters".into(),
            ));
        }
        for (name, value) in [
            ("gripper_closed", self.gripper_closed),
            ("gripper_open", self.gripper_open),
        ] {
            if !value.is_finite() {
                return Err((key(name), format!("{value} is not a finite number")));
            }
        }
        Ok(())
    }
}

/// `topic` under `namespace` unless it is absolute.
pub fn resolve_topic(namespace: &str, topic: &str) -> String {
    if topic.starts_with('/') {
        topic.to_string()
    } else if namespace == "/" {
        format!("/{topic}")
    } else {
        format!("{namespace}/{topic}")
    }
}

/// One token of a ROS 2 name: letters, digits and `_`, not starting with a digit.
fn check_token(token: &str) -> Result<(), String> {
    let mut chars = token.chars();
    match chars.next() {
        None => Err("must not be empty".into()),
        Some(c) if c.is_ascii_digit() => Err(format!("`{token}` starts with a digit")),
        Some(_) => match token
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
        {
            Some(c) => Err(format!(
                "`{token}` contains `{c}` (ROS 2 names hold letters, digits and `_`)"
            )),
            None => Ok(()),
        },
    }
}

fn check_tokens(name: &str, path: &str) -> Result<(), String> {
    for token in path.split('/') {
        check_token(token).map_err(|m| {
            if token.is_empty() {
                format!("`{name}` has an empty part (`//` or a trailing `/`)")
            } else {
                m
            }
        })?;
    }
    Ok(())
}

/// A namespace: `/` or `/a/b`.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace == "/" {
        return Ok(());
    }
    let Some(rest) = namespace.strip_prefix('/') else {
        return Err(format!("`{namespace}` does not start with `/`"));
    };
    check_tokens(namespace, rest)
}

/// A topic name, absolute (`/a/b`) or relative (`a/b`); no `~` or substitutions.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > 200 {
        return Err(format!("{} bytes, more than 200", topic.len()));
    }
    let rest = topic.strip_prefix('/').unwrap_or(topic);
    check_tokens(topic, rest)
}

/// An absolute topic name (`[camera] source = "ros2:/camera/image_raw/compressed"`).
pub fn check_absolute_topic(topic: &str) -> Result<(), String> {
    if !topic.starts_with('/') {
        return Err(format!("`{topic}` is not absolute (starts with `/`)"));
    }
    check_topic(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_against_the_namespace() {
        let config = Ros2Config::default();
        let names = config.names("arm7");
        assert_eq!(names.namespace, "/arm7");
        assert_eq!(names.twist, "/arm7/delta_twist_cmds");
        assert_eq!(names.gripper, "/arm7/gripper_controller/commands");
        assert_eq!(names.diagnostics, "/diagnostics");
        assert_eq!(names.instruction, "/arm7/instruction");
        assert_eq!(names.estop, "/arm7/estop");
        let root = Ros2Config {
            namespace: Some("/".into()),
            ..Ros2Config::default()
        };
        assert_eq!(root.names("x").twist, "/delta_twist_cmds");
    }

    #[test]
    fn bad_values_name_their_key() {
        let check = |config: Ros2Config, robot: &str| config.validate(robot).unwrap_err();
        let on = Ros2Config {
            enabled: true,
            ..Ros2Config::default()
        };
        let (key, message) = check(on.clone(), "arm-7");
        assert_eq!(key, "ros2.namespace");
        assert!(
            message.contains("`/arm-7`") && message.contains("`-`"),
            "{message}"
        );
        // Off, the derived namespace is not judged.
        assert!(Ros2Config::default().validate("arm-7").is_ok());
        let (key, _) = check(
            Ros2Config {
                domain_id: 233,
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.domain_id");
        let (key, message) = check(
            Ros2Config {
                twist_topic: "servo//cmds".into(),
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.twist_topic");
        assert!(message.contains("empty part"), "{message}");
        let (key, _) = check(
            Ros2Config {
                node_name: "1node".into(),
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.node_name");
        let (key, _) = check(
            Ros2Config {
                namespace: Some("robots/a".into()),
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.namespace");
        let (key, message) = check(
            Ros2Config {
                estop_topic: "/a/instruction".into(),
                ..on.clone()
            },
            "a",
        );
        assert_eq!(key, "ros2.estop_topic");
        assert!(message.contains("ros2.instruction_topic"), "{message}");
        let (key, _) = check(
            Ros2Config {
                frame_id: String::new(),
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.frame_id");
        let (key, _) = check(
            Ros2Config {
                gripper_open: f64::NAN,
                ..Ros2Config::default()
            },
            "a",
        );
        assert_eq!(key, "ros2.gripper_open");
        assert!(check_absolute_topic("camera/image").is_err());
        assert!(check_absolute_topic("/camera/image_raw/compressed").is_ok());
    }
}
