//! The `metav1.Status` written on the error stream, in the JSON layout Go's
//! `encoding/json` gives it (field order and `omitempty` as in apimachinery), and the
//! plain text of protocols before v4.

use serde::{Deserialize, Serialize};

/// `NonZeroExitCodeReason` / `ExitCodeCauseType` of `remotecommand`.
pub const REASON_NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
pub const CAUSE_EXIT_CODE: &str = "ExitCode";
const REASON_INTERNAL_ERROR: &str = "InternalError";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCause {
    #[serde(rename = "reason", default, skip_serializing_if = "String::is_empty")]
    pub cause_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// `metav1.Status`, reduced to the fields remote command uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(default)]
    pub metadata: ListMeta,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub code: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

impl Status {
    pub fn success() -> Self {
        Self {
            status: "Success".into(),
            ..Self::default()
        }
    }

    /// What kubelet's `ServeExec` writes when the command exited with `code` != 0. The
    /// message embeds the runtime's error text, which for containerd (and for us) is
    /// `error executing command [ARGV], exit code N`.
    pub fn non_zero_exit(cmd: &[String], code: i32) -> Self {
        Self {
            metadata: ListMeta {},
            status: "Failure".into(),
            message: format!(
                "command terminated with non-zero exit code: error executing command {}, exit code {code}",
                go_string_slice(cmd)
            ),
            reason: REASON_NON_ZERO_EXIT_CODE.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    cause_type: CAUSE_EXIT_CODE.into(),
                    message: code.to_string(),
                    field: String::new(),
                }],
            }),
            code: 0,
        }
    }

    /// `apierrors.NewInternalError(err)`.
    pub fn internal_error(err: &str) -> Self {
        Self {
            metadata: ListMeta {},
            status: "Failure".into(),
            message: format!("Internal error occurred: {err}"),
            reason: REASON_INTERNAL_ERROR.into(),
            details: Some(StatusDetails {
                causes: vec![StatusCause {
                    message: err.to_owned(),
                    ..StatusCause::default()
                }],
            }),
            code: 500,
        }
    }

    pub fn is_success(&self) -> bool {
        self.status == "Success"
    }

    /// The JSON written by v4+ (`v4WriteStatusFunc`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("Status serializes")
    }

    /// The text written by v1-v3 (`v1WriteStatusFunc`): nothing on success, else the
    /// message.
    pub fn to_text(&self) -> Vec<u8> {
        if self.is_success() {
            Vec::new()
        } else {
            self.message.clone().into_bytes()
        }
    }

    /// The exit code a v4 client derives from the status (`errorDecoderV4`): `Ok(0)` on
    /// success, `Ok(N)` for `NonZeroExitCode` with an `ExitCode` cause, else `Err` with the
    /// message.
    pub fn exit_code(&self) -> Result<i32, String> {
        if self.is_success() {
            return Ok(0);
        }
        if self.status == "Failure" && self.reason == REASON_NON_ZERO_EXIT_CODE {
            let cause = self
                .details
                .as_ref()
                .and_then(|d| d.causes.iter().find(|c| c.cause_type == CAUSE_EXIT_CODE));
            return match cause {
                Some(c) => c.message.parse().map_err(|_| {
                    format!(
                        "error stream protocol error: invalid exit code value {:?}",
                        c.message
                    )
                }),
                None => Err(format!(
                    "error stream protocol error: no {CAUSE_EXIT_CODE} cause given"
                )),
            };
        }
        Err(self.message.clone())
    }
}

/// Go's `%v` of a `[]string`: `[a b c]`.
fn go_string_slice(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_matches_go_encoding() {
        assert_eq!(
            String::from_utf8(Status::success().to_json()).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        let cmd = vec!["sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        assert_eq!(
            String::from_utf8(Status::non_zero_exit(&cmd, 3).to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
        );
        assert_eq!(
            String::from_utf8(Status::internal_error("boom").to_json()).unwrap(),
            r#"{"metadata":{},"status":"Failure","message":"Internal error occurred: boom","reason":"InternalError","details":{"causes":[{"message":"boom"}]},"code":500}"#
        );
    }

    #[test]
    fn exit_code_round_trips() {
        assert_eq!(Status::success().exit_code(), Ok(0));
        let s: Status = serde_json::from_slice(&Status::non_zero_exit(&[], 137).to_json()).unwrap();
        assert_eq!(s.exit_code(), Ok(137));
        assert_eq!(
            Status::internal_error("x").exit_code(),
            Err("Internal error occurred: x".into())
        );
        assert!(Status::success().to_text().is_empty());
    }
}
