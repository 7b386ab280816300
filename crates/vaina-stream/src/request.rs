//! The CRI streaming requests the server hands out URLs for, and their validation.

/// A CRI `ExecRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A CRI `AttachRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub stdin: bool,
    pub tty: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A CRI `PortForwardRequest`. `ports` is used by the WebSocket transport, which opens a
/// channel pair per port up front (kubelet's `BuildV4Options(pf.Port)`); SPDY clients name
/// the port on each stream. When empty, a WebSocket client may give the ports in `port`
/// query parameters (kubelet's `NewV4Options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<i32>,
}

/// Why `get_exec` / `get_attach` / `get_port_forward` refused a request. The CRI layer maps
/// `InvalidArgument` to gRPC `InvalidArgument` and `TooManyInFlight` to
/// `ResourceExhausted`, as kubelet does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("maximum number of in-flight requests exceeded")]
    TooManyInFlight,
    #[error("failed to generate a request token: {0}")]
    Token(String),
}

fn invalid(msg: &str) -> RequestError {
    RequestError::InvalidArgument(msg.to_owned())
}

/// The stdio rules kubelet applies to exec and attach (`validateExecRequest`).
fn validate_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), RequestError> {
    if tty && stderr {
        // With a TTY stdout and stderr are one stream: multiplexing is not supported.
        return Err(invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

impl ExecRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        if self.cmd.is_empty() {
            return Err(invalid("missing required cmd"));
        }
        validate_stdio(self.stdin, self.stdout, self.stderr, self.tty)
    }
}

impl AttachRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.container_id.is_empty() {
            return Err(invalid("missing required container_id"));
        }
        validate_stdio(self.stdin, self.stdout, self.stderr, self.tty)
    }
}

impl PortForwardRequest {
    pub fn validate(&self) -> Result<(), RequestError> {
        if self.pod_sandbox_id.is_empty() {
            return Err(invalid("missing required pod_sandbox_id"));
        }
        if let Some(p) = self.ports.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(RequestError::InvalidArgument(format!("invalid port {p}")));
        }
        Ok(())
    }
}

/// A validated request waiting in the token cache.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

impl Pending {
    /// The URL path segment that serves this kind of request.
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach(_) => "attach",
            Pending::PortForward(_) => "portforward",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> ExecRequest {
        ExecRequest {
            container_id: "c".into(),
            cmd: vec!["sh".into()],
            stdout: true,
            ..Default::default()
        }
    }

    #[test]
    fn exec_rules_match_kubelet() {
        assert!(exec().validate().is_ok());
        let e = ExecRequest {
            cmd: vec![],
            ..exec()
        };
        assert_eq!(e.validate(), Err(invalid("missing required cmd")));
        let e = ExecRequest {
            container_id: String::new(),
            ..exec()
        };
        assert_eq!(e.validate(), Err(invalid("missing required container_id")));
        let e = ExecRequest {
            tty: true,
            stderr: true,
            ..exec()
        };
        assert_eq!(
            e.validate(),
            Err(invalid("tty and stderr cannot both be true"))
        );
        let e = ExecRequest {
            stdout: false,
            ..exec()
        };
        assert_eq!(
            e.validate(),
            Err(invalid("one of stdin, stdout, or stderr must be set"))
        );
        let e = ExecRequest {
            stdout: false,
            stdin: true,
            tty: true,
            ..exec()
        };
        assert!(e.validate().is_ok());
    }

    #[test]
    fn attach_and_port_forward_rules() {
        let a = AttachRequest {
            container_id: "c".into(),
            stdin: true,
            ..Default::default()
        };
        assert!(a.validate().is_ok());
        let a = AttachRequest {
            container_id: "c".into(),
            ..Default::default()
        };
        assert!(a.validate().is_err());
        let a = AttachRequest {
            container_id: "c".into(),
            tty: true,
            stderr: true,
            stdout: true,
            ..Default::default()
        };
        assert!(a.validate().is_err());
        assert_eq!(
            PortForwardRequest::default().validate(),
            Err(invalid("missing required pod_sandbox_id"))
        );
        let p = PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80, 0],
        };
        assert!(p.validate().is_err());
        let p = PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80],
        };
        assert!(p.validate().is_ok());
    }
}
