//! A bearer-token service for `docker-registry`'s `auth: token` mode, as
//! Docker Hub and most registries run it: JWTs (RS256, key and self-signed
//! certificate made with the `openssl` CLI) for a username and password
//! (`GET /token`, basic auth) or for a refresh token (`POST /token`,
//! `grant_type=refresh_token`, Docker's identity-token flow).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub const ISSUER: &str = "vaina-test-issuer";
pub const SERVICE: &str = "vaina-test-registry";

pub struct TokenServer {
    pub port: u16,
    pub cert: PathBuf,
    signer: Arc<Signer>,
}

struct Signer {
    key: PathBuf,
    x5c: String,
    user: String,
    password: String,
    refresh_token: String,
}

impl TokenServer {
    /// Starts the service in a thread, with one account and one refresh
    /// token; the key and certificate go to `dir`.
    pub fn start(dir: &Path, user: &str, password: &str, refresh_token: &str) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let status = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=vaina-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt-get install -y openssl)");
        assert!(status.success(), "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let signer = Arc::new(Signer {
            key,
            x5c: STANDARD.encode(der.stdout),
            user: user.into(),
            password: password.into(),
            refresh_token: refresh_token.into(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = signer.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || s.serve(conn));
            }
        });
        TokenServer { port, cert, signer }
    }

    /// The registry's `auth:` section for this service.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.port,
            self.cert.display()
        )
    }

    /// A token for `actions` on `repository`, as the service would issue.
    pub fn token(&self, repository: &str, actions: &[&str]) -> String {
        let scope = format!("repository:{repository}:{}", actions.join(","));
        self.signer.jwt(&self.signer.user, &[scope])
    }
}

impl Signer {
    fn serve(&self, mut conn: TcpStream) {
        conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
        let Some((head, body)) = read_request(&mut conn) else {
            return;
        };
        let first = head.lines().next().unwrap_or_default().to_owned();
        let (method, target) = {
            let mut parts = first.split(' ');
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let mut scopes: Vec<String> = params(query)
            .into_iter()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v)
            .collect();
        let granted = match method {
            "GET" => {
                let basic = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("authorization")
                            .then(|| value.trim().strip_prefix("Basic ").map(str::to_owned))?
                    })
                    .and_then(|b| STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                basic == Some(format!("{}:{}", self.user, self.password))
            }
            "POST" => {
                let form = params(&body);
                let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                scopes.extend(get("scope").map(str::to_owned));
                get("grant_type") == Some("refresh_token")
                    && get("refresh_token") == Some(self.refresh_token.as_str())
                    && get("service") == Some(SERVICE)
            }
            _ => false,
        };
        let response = if granted {
            let body = format!("{{\"access_token\":\"{}\"}}", self.jwt(&self.user, &scopes));
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        } else {
            let body = "{\"details\":\"access denied\"}";
            format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let _ = conn.write_all(response.as_bytes());
    }

    /// An RS256 JWT granting `scopes` (`repository:<name>:<actions>`).
    fn jwt(&self, subject: &str, scopes: &[String]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|s| {
                let mut parts = s.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT", "x5c": [self.x5c] });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": format!("{now}-{}", std::process::id()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut openssl = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        openssl
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = openssl.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst failed");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }
}

fn read_request(conn: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if buf.len() > 64 << 10 || conn.read(&mut byte).ok()? != 1 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).ok()?;
    Some((head, String::from_utf8_lossy(&body).into_owned()))
}

/// `a=b&c=d`, percent- and `+`-decoded.
fn params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
