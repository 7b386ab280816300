//! Image references, parsed and normalised the way Docker and containerd do
//! (`github.com/distribution/reference`, `ParseDockerRef`): `busybox` is
//! `docker.io/library/busybox:latest`, `foo/bar:1` is `docker.io/foo/bar:1`.
//!
//! The first path component is a registry only when it looks like a host:
//! it contains a `.` or a `:`, is `localhost`, or has an uppercase letter
//! (repositories are lowercase, so it cannot be one). `index.docker.io` is
//! the legacy name of `docker.io`. `:latest` is added only when the reference
//! has neither a tag nor a digest, so `busybox@sha256:…` stays digest-only.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references that name neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// distribution/reference's limit on `registry/repository`.
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A normalised image reference: always a registry and a repository, and a
/// tag, a digest or both.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: String,
}

impl Reference {
    /// Parses and normalises a full or short reference.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(fail("empty reference"));
        }
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(fail(
                "a 64-digit hexadecimal string is an image id, not a repository name",
            ));
        }

        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = Digest::parse(d).map_err(|e| fail(&e.to_string()))?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        let (name, tag) = match name_tag.rfind(':') {
            Some(i) if !name_tag[i + 1..].contains('/') => {
                (&name_tag[..i], Some(&name_tag[i + 1..]))
            }
            _ => (name_tag, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(fail(&format!(
                "invalid tag {tag:?} (letters, digits, '_', '.', '-', at most 128, not starting with '.' or '-')"
            )));
        }

        let (registry, remainder) = split_registry(name);
        if remainder.is_empty() {
            return Err(fail("missing repository name"));
        }
        if remainder.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(fail(&format!(
                "repository name {remainder:?} must be lowercase"
            )));
        }
        let registry = if registry == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY
        } else {
            registry
        };
        if !valid_registry(registry) {
            return Err(fail(&format!("invalid registry host {registry:?}")));
        }
        let repository = if registry == DEFAULT_REGISTRY && !remainder.contains('/') {
            format!("{OFFICIAL_PREFIX}{remainder}")
        } else {
            remainder.to_owned()
        };
        if let Some(bad) = repository.split('/').find(|c| !valid_path_component(c)) {
            return Err(fail(&format!(
                "invalid repository path component {bad:?} (lowercase letters and digits, separated by '.', '_', '__' or '-')"
            )));
        }
        if registry.len() + 1 + repository.len() > NAME_MAX {
            return Err(fail(&format!(
                "repository name is longer than {NAME_MAX} characters"
            )));
        }

        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (t, _) => t.map(str::to_owned),
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port): `docker.io`, `localhost:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry: `library/busybox`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The name as Docker shows it: `busybox`, `foo/bar`, `registry.k8s.io/pause`.
    pub fn familiar_name(&self) -> String {
        if self.registry != DEFAULT_REGISTRY {
            return self.name();
        }
        match self.repository.strip_prefix(OFFICIAL_PREFIX) {
            Some(short) if !short.contains('/') => short.to_owned(),
            _ => self.repository.clone(),
        }
    }

    /// The short form Docker prints: `busybox:latest`, `foo/bar:1@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_name();
        self.push_tag_digest(&mut s);
        s
    }

    /// This repository at `digest`, without a tag: the form of a repo digest
    /// (`docker.io/library/busybox@sha256:…`).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// `registry/repository:tag` without the digest, if there is a tag:
    /// the form of a repo tag.
    pub fn tagged(&self) -> Option<Reference> {
        self.tag.as_ref().map(|_| Reference {
            digest: None,
            ..self.clone()
        })
    }

    fn push_tag_digest(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(&digest.to_string());
        }
    }
}

/// Docker's `splitDockerDomain`: the first component is a registry only if
/// it looks like a host.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

/// `host[:port]`, host a dotted DNS name or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if registry.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        })
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.name();
        self.push_tag_digest(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// As its normalised string, so records stay readable and stable.
impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str, &str)] = &[
            // input, normalised, familiar
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
                "busybox:1",
            ),
            ("foo/bar:1", "docker.io/foo/bar:1", "foo/bar:1"),
            (
                "foo/bar/baz",
                "docker.io/foo/bar/baz:latest",
                "foo/bar/baz:latest",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
            (
                "localhost:5000/x",
                "localhost:5000/x:latest",
                "localhost:5000/x:latest",
            ),
            (
                "127.0.0.1:5000/team/app:v2",
                "127.0.0.1:5000/team/app:v2",
                "127.0.0.1:5000/team/app:v2",
            ),
            ("[::1]:5000/x:1", "[::1]:5000/x:1", "[::1]:5000/x:1"),
            (
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io/pause:3.9",
                "registry.k8s.io/pause:3.9",
            ),
            (
                "Registry.Example/a",
                "Registry.Example/a:latest",
                "Registry.Example/a:latest",
            ),
            (
                "a.b-c/d__e/e--f.g_h:T_1.x-2",
                "a.b-c/d__e/e--f.g_h:T_1.x-2",
                "a.b-c/d__e/e--f.g_h:T_1.x-2",
            ),
        ];
        for (input, normalised, familiar) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *normalised, "{input}");
            assert_eq!(r.familiar(), *familiar, "{input}");
            assert_eq!(Reference::parse(normalised).unwrap(), r, "{input} twice");
        }
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.familiar(), format!("busybox@{D}"));

        let r = Reference::parse(&format!("localhost:5000/x:1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("localhost:5000/x:1@{D}"));
        assert_eq!(r.tag(), Some("1"));
        assert_eq!(r.tagged().unwrap().to_string(), "localhost:5000/x:1");
        assert_eq!(Reference::parse(&format!("x@{D}")).unwrap().tagged(), None);
        assert_eq!(
            r.with_digest(r.digest().unwrap().clone()).to_string(),
            format!("localhost:5000/x@{D}")
        );
    }

    #[test]
    fn parts() {
        let r = Reference::parse("registry.k8s.io/e2e-test-images/busybox:1.29").unwrap();
        assert_eq!(r.registry(), "registry.k8s.io");
        assert_eq!(r.repository(), "e2e-test-images/busybox");
        assert_eq!(r.tag(), Some("1.29"));
        assert_eq!(r.name(), "registry.k8s.io/e2e-test-images/busybox");
        assert_eq!(r.familiar_name(), "registry.k8s.io/e2e-test-images/busybox");
    }

    #[test]
    fn rejects_invalid_references_by_name() {
        let long = format!("a/{}", "b".repeat(260));
        let bad_tag = format!("busybox:{}", "t".repeat(129));
        let hex_id = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        for (input, why) in [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("foo/Bar", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            (&bad_tag, "tag"),
            ("busybox@sha256:abc", "64 hex"),
            ("busybox@sha512:abc", "only sha256"),
            ("a//b", "component"),
            ("a/-b", "component"),
            ("a/b_", "component"),
            ("a/b...c", "component"),
            ("a/b___c", "component"),
            ("localhost:5000/", "missing repository"),
            ("my-.host.io/x", "registry"),
            ("host:port/x", "registry"),
            ("a_b.io/x", "registry"),
            ("[::1/x", "registry"),
            (&long, "longer than"),
            (hex_id, "image id"),
            ("busy box", "component"),
        ] {
            let err = Reference::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(&format!("{input:?}")), "{msg}");
            assert!(msg.contains(why), "{input}: {msg}");
        }
    }
}
