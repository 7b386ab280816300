//! Single-use tokens for pending requests, as kubelet's `request_cache.go`: 8 characters
//! of base64url from 6 random bytes, valid for a TTL (1 minute by default), at most
//! `max_in_flight` waiting at once; expired entries are dropped on every insert.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::request::{Pending, RequestError};

/// Length of a token in characters (kubelet's `tokenLen`).
pub const TOKEN_LEN: usize = 8;

pub(crate) struct TokenCache {
    ttl: Duration,
    max_in_flight: usize,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration, max_in_flight: usize) -> Self {
        Self {
            ttl,
            max_in_flight,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn insert(&self, request: Pending) -> Result<String, RequestError> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let ttl = self.ttl;
        entries.retain(|_, (at, _)| now.duration_since(*at) < ttl);
        if entries.len() >= self.max_in_flight {
            return Err(RequestError::TooManyInFlight);
        }
        for _ in 0..10 {
            let token = random_token()?;
            if !entries.contains_key(&token) {
                entries.insert(token.clone(), (now, request));
                return Ok(token);
            }
        }
        Err(RequestError::Token(
            "failed to generate unique token".into(),
        ))
    }

    /// Takes the request stored under `token`, if it is there and has not expired. A
    /// token can be consumed once.
    pub(crate) fn consume(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let (at, request) = entries.remove(token)?;
        (at.elapsed() < self.ttl).then_some(request)
    }
}

fn random_token() -> Result<String, RequestError> {
    // ceil(8 * 6 / 8) = 6 bytes encode to exactly 8 unpadded base64 characters.
    let mut raw = [0u8; TOKEN_LEN * 6 / 8];
    getrandom::getrandom(&mut raw).map_err(|e| RequestError::Token(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::PortForwardRequest;

    fn pf() -> Pending {
        Pending::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![],
        })
    }

    #[test]
    fn tokens_are_single_use_url_safe_and_expire() {
        let cache = TokenCache::new(Duration::from_millis(50), 10);
        let t = cache.insert(pf()).unwrap();
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert!(cache.consume(&t).is_some());
        assert!(cache.consume(&t).is_none());
        let t = cache.insert(pf()).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.consume(&t).is_none());
    }

    #[test]
    fn in_flight_limit_counts_live_tokens_only() {
        let cache = TokenCache::new(Duration::from_millis(50), 2);
        cache.insert(pf()).unwrap();
        cache.insert(pf()).unwrap();
        assert_eq!(cache.insert(pf()), Err(RequestError::TooManyInFlight));
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.insert(pf()).is_ok());
    }
}
