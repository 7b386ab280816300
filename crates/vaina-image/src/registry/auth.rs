//! Registry credentials as the CRI passes them with PullImage, and what
//! they become for the registry client.
//!
//! Like containerd's CRI, the first set field wins: `username` (with
//! `password`), `identity_token`, `auth` (base64 `user:password`), then
//! `registry_token`. A username and password are offered to whatever the
//! registry asks for: HTTP basic auth, or a bearer-token challenge, where
//! the token service gets them (oci-client runs that flow). An identity
//! token is Docker's OAuth2 refresh token: it is exchanged for an access
//! token at the challenge's realm (`grant_type=refresh_token`). A
//! registry token is sent as is, as a bearer token.
//!
//! The credentials go to every host configured for the image's registry
//! (its mirrors included), as containerd sends the CRI's. They are never
//! logged nor put in errors: `Debug` shows only which fields are set.

use std::fmt;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;

/// The CRI's `AuthConfig`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// Which registry the credentials are for, as kubelet found them; the
    /// pull uses them for the image's registry whatever this says, as
    /// containerd does.
    pub server_address: String,
    /// An OAuth2 refresh token for the registry's token service.
    pub identity_token: String,
    /// A bearer token for the registry itself.
    pub registry_token: String,
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &set(&self.username))
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("server_address", &self.server_address)
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

/// Credentials that cannot be used; says which field, never its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid registry credentials: `auth` is not base64 of \"username:password\"")]
    InvalidAuthField,
}

/// What [`AuthConfig`] amounts to.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
    IdentityToken(String),
}

impl AuthConfig {
    pub(crate) fn credentials(&self) -> Result<Credentials, AuthError> {
        if !self.username.is_empty() {
            return Ok(Credentials::Basic {
                username: self.username.clone(),
                password: self.password.clone(),
            });
        }
        if !self.identity_token.is_empty() {
            return Ok(Credentials::IdentityToken(self.identity_token.clone()));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(AuthError::InvalidAuthField)?;
            let (username, password) =
                decoded.split_once(':').ok_or(AuthError::InvalidAuthField)?;
            return Ok(Credentials::Basic {
                username: username.to_owned(),
                password: password.to_owned(),
            });
        }
        if !self.registry_token.is_empty() {
            return Ok(Credentials::Bearer(self.registry_token.clone()));
        }
        Ok(Credentials::Anonymous)
    }
}

impl Credentials {
    /// oci-client's form, for all but an identity token (which must be
    /// exchanged first).
    pub(crate) fn registry_auth(&self) -> Option<RegistryAuth> {
        match self {
            Credentials::Anonymous => Some(RegistryAuth::Anonymous),
            Credentials::Basic { username, password } => {
                Some(RegistryAuth::Basic(username.clone(), password.clone()))
            }
            Credentials::Bearer(token) => Some(RegistryAuth::Bearer(token.clone())),
            Credentials::IdentityToken(_) => None,
        }
    }
}

/// Exchanges an identity (refresh) token for an access token to pull
/// `repository` from the registry at `base` (`scheme://host`). Errors say
/// what failed, without the token.
pub(crate) async fn exchange_identity_token(
    http: &reqwest::Client,
    base: &str,
    repository: &str,
    token: &str,
) -> Result<RegistryAuth, String> {
    let probe = http
        .get(format!("{base}/v2/"))
        .send()
        .await
        .map_err(|e| crate::pull::error_chain(&e))?;
    if probe.status().is_success() {
        // The registry wants no credentials.
        return Ok(RegistryAuth::Anonymous);
    }
    let challenge = probe
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(BearerChallenge::parse)
        .ok_or("the registry asks for no bearer token, so an identity token cannot be used")?;
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", token),
        ("client_id", "vaina"),
    ];
    let scope = format!("repository:{repository}:pull");
    form.push(("scope", &scope));
    if let Some(service) = &challenge.service {
        form.push(("service", service));
    }
    let body = form
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let resp = http
        .post(&challenge.realm)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(body)
        .send()
        .await
        .map_err(|e| crate::pull::error_chain(&e))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!(
            "the token service {} refused the identity token ({status})",
            challenge.realm
        ));
    }
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        access_token: Option<String>,
        token: Option<String>,
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| crate::pull::error_chain(&e))?;
    let parsed: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the token service {} answered: {e}", challenge.realm))?;
    parsed
        .access_token
        .or(parsed.token)
        .map(RegistryAuth::Bearer)
        .ok_or_else(|| format!("the token service {} returned no token", challenge.realm))
}

/// `Bearer realm="…",service="…"` from `WWW-Authenticate`.
#[derive(Debug, PartialEq, Eq)]
struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

impl BearerChallenge {
    fn parse(header: &str) -> Option<BearerChallenge> {
        let (scheme, params) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let (mut realm, mut service) = (None, None);
        let mut rest = params.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=')?;
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_once(',').unwrap_or((after, "")),
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value.to_owned()),
                "service" => service = Some(value.to_owned()),
                _ => {}
            }
            rest = after.trim_start_matches([',', ' ']);
        }
        Some(BearerChallenge {
            realm: realm?,
            service,
        })
    }
}

/// `application/x-www-form-urlencoded` value encoding.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn fields_in_containerd_order() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("bob:s3:cret");
        let all = AuthConfig {
            username: "alice".into(),
            password: "pw".into(),
            auth: b64.clone(),
            identity_token: "idt".into(),
            registry_token: "rt".into(),
            server_address: String::new(),
        };
        assert!(all.credentials().unwrap() == basic("alice", "pw"));
        let no_user = AuthConfig {
            username: String::new(),
            ..all.clone()
        };
        assert!(no_user.credentials().unwrap() == Credentials::IdentityToken("idt".into()));
        let auth_only = AuthConfig {
            identity_token: String::new(),
            ..no_user
        };
        // The password may contain ':'.
        assert!(auth_only.credentials().unwrap() == basic("bob", "s3:cret"));
        let token_only = AuthConfig {
            registry_token: "rt".into(),
            ..Default::default()
        };
        assert_eq!(
            token_only.credentials().unwrap().registry_auth(),
            Some(RegistryAuth::Bearer("rt".into()))
        );
        assert!(AuthConfig::default().credentials().unwrap() == Credentials::Anonymous);
    }

    #[test]
    fn bad_auth_field_and_debug_hide_secrets() {
        for bad in ["%%%", "bm9jb2xvbg=="] {
            let c = AuthConfig {
                auth: bad.into(),
                ..Default::default()
            };
            let err = c.credentials().err().unwrap();
            assert_eq!(err, AuthError::InvalidAuthField);
            assert!(!err.to_string().contains(bad));
        }
        let c = AuthConfig {
            username: "alice".into(),
            password: "hunter2".into(),
            ..Default::default()
        };
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("alice"), "{dbg}");
    }

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            BearerChallenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a,b:pull""#
            ),
            Some(BearerChallenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        assert_eq!(
            BearerChallenge::parse("bearer realm=http://127.0.0.1:1/t"),
            Some(BearerChallenge {
                realm: "http://127.0.0.1:1/t".into(),
                service: None,
            })
        );
        assert_eq!(BearerChallenge::parse(r#"Basic realm="x""#), None);
        assert_eq!(BearerChallenge::parse(r#"Bearer service="x""#), None);
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(form_encode("a b+c"), "a+b%2Bc");
    }
}
