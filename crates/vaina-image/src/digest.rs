//! Content digests (`sha256:<hex>`) and streams that hash what passes
//! through them.
//!
//! Only sha256 is accepted: it is the only algorithm registries and
//! runtimes use for image content, and a store keyed by one algorithm keeps
//! every blob at exactly one path. Anything else is refused by name rather
//! than stored under a second key.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

const ALGORITHM: &str = "sha256";
const HEX_LEN: usize = 64;

/// A sha256 content digest, held as its 64 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("digest {digest:?} uses algorithm {algorithm:?}; only sha256 is supported")]
    UnsupportedAlgorithm { digest: String, algorithm: String },
    #[error("invalid digest {digest:?}: {reason}")]
    Invalid {
        digest: String,
        reason: &'static str,
    },
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(DigestError::Invalid {
                digest: s.to_owned(),
                reason: "expected <algorithm>:<hex>",
            });
        };
        if algorithm != ALGORITHM {
            let well_formed = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+._-".contains(&b));
            if !well_formed {
                return Err(DigestError::Invalid {
                    digest: s.to_owned(),
                    reason: "malformed algorithm",
                });
            }
            return Err(DigestError::UnsupportedAlgorithm {
                digest: s.to_owned(),
                algorithm: algorithm.to_owned(),
            });
        }
        Digest::from_hex(hex).map_err(|reason| DigestError::Invalid {
            digest: s.to_owned(),
            reason,
        })
    }

    fn from_hex(hex: &str) -> Result<Digest, &'static str> {
        if hex.len() != HEX_LEN {
            return Err("a sha256 digest has 64 hex digits");
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err("a sha256 digest is lowercase hex");
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        let sum = hasher.finalize();
        let mut hex = String::with_capacity(HEX_LEN);
        for b in sum {
            use fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
        }
        Digest { hex }
    }

    /// `"sha256"`.
    pub fn algorithm(&self) -> &'static str {
        ALGORITHM
    }

    /// The 64 hex digits: the file name of a blob, snapshot or image record.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The first 12 hex digits, as `docker images` and `crictl images` show ids.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALGORITHM}:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What went through a [`DigestReader`] or [`DigestWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashed {
    pub digest: Digest,
    pub size: u64,
}

/// A reader that hashes every byte read through it.
///
/// With [`DigestReader::verifying`] it also checks the content while it
/// streams: reading past the expected size fails at once, and reaching EOF
/// with the wrong digest or size fails that final read, so a consumer that
/// reads to the end can never take wrong content for complete content.
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    expected: Option<(Digest, Option<u64>)>,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> Self {
        DigestReader {
            inner,
            hasher: Sha256::new(),
            size: 0,
            expected: None,
        }
    }

    /// Fails the read that reaches EOF unless the content has digest
    /// `expected` (and `size` bytes, when given). The error is
    /// `io::ErrorKind::InvalidData` wrapping a [`VerifyError`].
    pub fn verifying(inner: R, expected: Digest, size: Option<u64>) -> Self {
        DigestReader {
            expected: Some((expected, size)),
            ..DigestReader::new(inner)
        }
    }

    /// The digest and size of what was read so far.
    pub fn finish(self) -> Hashed {
        Hashed {
            digest: Digest::from_hasher(self.hasher),
            size: self.size,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        if let Some((expected, size)) = &self.expected {
            if let Some(size) = *size
                && self.size > size
            {
                return Err(VerifyError::TooLong { expected: size }.into());
            }
            if n == 0 && !buf.is_empty() {
                let actual = Digest::from_hasher(self.hasher.clone());
                if let Some(size) = *size
                    && self.size != size
                {
                    return Err(VerifyError::Size {
                        expected: size,
                        actual: self.size,
                    }
                    .into());
                }
                if actual != *expected {
                    return Err(VerifyError::Digest {
                        expected: expected.clone(),
                        actual,
                    }
                    .into());
                }
            }
        }
        Ok(n)
    }
}

/// Why a [`DigestReader::verifying`] stream failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("content has digest {actual}, expected {expected}")]
    Digest { expected: Digest, actual: Digest },
    #[error("content has {actual} bytes, expected {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("content is longer than the expected {expected} bytes")]
    TooLong { expected: u64 },
}

impl From<VerifyError> for io::Error {
    fn from(e: VerifyError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl VerifyError {
    /// The verification failure inside `e`, if that is what `e` is.
    pub fn from_io(e: &io::Error) -> Option<&VerifyError> {
        e.get_ref()?.downcast_ref()
    }
}

/// A writer that hashes every byte written through it.
pub struct DigestWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> DigestWriter<W> {
    pub fn new(inner: W) -> Self {
        DigestWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// The inner writer and the digest and size of what was written.
    pub fn finish(self) -> (W, Hashed) {
        let hashed = Hashed {
            digest: Digest::from_hasher(self.hasher),
            size: self.size,
        };
        (self.inner, hashed)
    }

    /// Like [`DigestWriter::finish`], but fails unless the content has
    /// digest `expected` (and `size` bytes, when given).
    pub fn verify(self, expected: &Digest, size: Option<u64>) -> Result<W, VerifyError> {
        let (inner, hashed) = self.finish();
        if let Some(size) = size
            && hashed.size != size
        {
            return Err(VerifyError::Size {
                expected: size,
                actual: hashed.size,
            });
        }
        if hashed.digest != *expected {
            return Err(VerifyError::Digest {
                expected: expected.clone(),
                actual: hashed.digest,
            });
        }
        Ok(inner)
    }
}

impl<W: Write> Write for DigestWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parse_and_display_round_trip() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
        assert_eq!(d.short(), "e3b0c44298fc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }

    #[test]
    fn rejects_other_algorithms_and_bad_hex() {
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let err = Digest::parse(&sha512).unwrap_err();
        assert!(matches!(err, DigestError::UnsupportedAlgorithm { .. }));
        assert!(err.to_string().contains("sha512"), "{err}");
        for bad in [
            "",
            "e3b0c442",
            "sha256:abc",
            &EMPTY.to_uppercase().replace("SHA256", "sha256"),
            &format!("{EMPTY}0"),
            "sha256:zz",
            ":abc",
        ] {
            let err = Digest::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn verifying_reader_accepts_right_content() {
        let mut r = DigestReader::verifying(&b"hello"[..], Digest::of(b"hello"), Some(5));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(r.finish().size, 5);
    }

    #[test]
    fn verifying_reader_fails_at_eof_on_wrong_content() {
        let mut r = DigestReader::verifying(&b"hellO"[..], Digest::of(b"hello"), None);
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(matches!(
            VerifyError::from_io(&err),
            Some(VerifyError::Digest { .. })
        ));
        let mut r = DigestReader::verifying(&b"hello"[..], Digest::of(b"hello"), Some(4));
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(matches!(
            VerifyError::from_io(&err),
            Some(VerifyError::TooLong { expected: 4 })
        ));
        let mut r = DigestReader::verifying(&b"hello"[..], Digest::of(b"hello"), Some(6));
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(matches!(
            VerifyError::from_io(&err),
            Some(VerifyError::Size { .. })
        ));
    }

    #[test]
    fn writer_hashes_and_verifies() {
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        let out = w.verify(&Digest::of(b"hello"), Some(5)).unwrap();
        assert_eq!(out, b"hello");
        let mut w = DigestWriter::new(Vec::new());
        w.write_all(b"hello").unwrap();
        assert!(w.verify(&Digest::of(b"other"), None).is_err());
    }
}
