//! Name/value header blocks (SPDY/3 section 2.6.10) and their zlib compression.
//!
//! A block is `u32 count` followed by `count` pairs of `u32 length + bytes` for the name and
//! the value; several values for one name travel NUL-joined in one value. Blocks are
//! compressed with zlib primed with the fixed SPDY/3 dictionary, and the zlib stream is
//! *one per direction per connection*: every block continues the previous one and ends
//! with a SYNC_FLUSH, so a decoder that skips or fails one block can never decode the next.
//! That is why decompression failures are connection errors, while a block that inflates
//! fine but is malformed inside only costs its stream.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The zlib dictionary of SPDY/3 (section 2.6.10.1), byte for byte.
///
/// Its Adler-32 is [`SPDY3_DICTIONARY_ID`], which is the dictionary id a peer's zlib header
/// names; a stream asking for any other dictionary is rejected.
pub const SPDY3_DICTIONARY: &[u8; 1423] = b"\
    \x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\x00\x00\x00\x03put\
    \x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
    \x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\
    \x00\x00\x00\x0faccept-language\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\
    \x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\x00\x00\x00\x0dcache-control\
    \x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
    \x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\
    \x00\x00\x00\x0econtent-length\x00\x00\x00\x10content-location\
    \x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\x00\x00\x00\x0ccontent-type\
    \x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\
    \x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\
    \x00\x00\x00\x08if-match\x00\x00\x00\x11if-modified-since\
    \x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
    \x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\
    \x00\x00\x00\x08location\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\
    \x00\x00\x00\x12proxy-authenticate\x00\x00\x00\x13proxy-authorization\
    \x00\x00\x00\x05range\x00\x00\x00\x07referer\x00\x00\x00\x0bretry-after\
    \x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
    \x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
    \x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\
    \x00\x00\x00\x10www-authenticate\x00\x00\x00\x06method\x00\x00\x00\x03get\
    \x00\x00\x00\x06status\x00\x00\x00\x06200 OK\x00\x00\x00\x07version\
    \x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
    \x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
    1001012012022052063003023033043053063074024054064074084094104114\
    12413414415416417502504505203 Non-Authoritative Information204 N\
    o Content301 Moved Permanently400 Bad Request401 Unauthorized40\
    3 Forbidden404 Not Found500 Internal Server Error501 Not Impleme\
    nted503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept \
    Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunk\
    ed,text/html,image/png,image/jpg,image/gif,application/xml,appli\
    cation/xhtml+xml,text/plain,text/javascript,publicprivatemax-age\
    =gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Adler-32 of [`SPDY3_DICTIONARY`], as carried in the zlib header of every SPDY/3 block.
pub const SPDY3_DICTIONARY_ID: u32 = 0xe3c6_a7c2;

/// Default cap on one decompressed header block; kubelet's streams carry a handful of short
/// headers, so anything near this is either a bug or a zlib bomb.
pub const DEFAULT_MAX_HEADER_BLOCK_LEN: usize = 256 * 1024;

/// Largest uncompressed block we will compress: well below the 24-bit frame length even
/// after zlib's worst-case expansion, so an accepted block always fits in one frame.
pub const MAX_ENCODED_BLOCK_LEN: usize = 8 * 1024 * 1024;

/// What is wrong with a header block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header block is truncated")]
    Truncated,
    #[error("header block has {0} bytes after its last header")]
    TrailingBytes(usize),
    #[error("header name is empty")]
    EmptyName,
    #[error("header name {0:?} is not lowercase")]
    UppercaseName(String),
    #[error("header name {0:?} contains a NUL byte")]
    NulInName(String),
    #[error("value of header {0:?} contains a NUL byte")]
    NulInValue(String),
    #[error("header name {0:?} appears twice")]
    DuplicateName(String),
    #[error("header name or value is not valid UTF-8")]
    InvalidUtf8,
    #[error("header block of {len} bytes exceeds the {limit} byte limit")]
    BlockTooLarge { len: usize, limit: usize },
    #[error("decompressed header block exceeds the {limit} byte limit")]
    DecompressedTooLarge { limit: usize },
    #[error("zlib stream asks for dictionary {0:#010x}, not the SPDY/3 dictionary")]
    WrongDictionary(u32),
    #[error("zlib stream was finished by the peer; later blocks cannot be decoded")]
    StreamFinished,
    #[error("invalid zlib data: {0}")]
    Zlib(String),
}

/// An ordered set of headers: lowercase names, each with one or more values.
///
/// Names are lowercased on insertion (SPDY/3 requires lowercase names on the wire) and
/// looked up case-insensitively, so `get("streamType")` finds `streamtype` as Go's
/// canonicalised `http.Header` users expect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Vec<String>)>,
}

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to the single `value`, replacing earlier values.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let name = name.into().to_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => *values = vec![value],
            None => self.entries.push((name, vec![value])),
        }
        self
    }

    /// Adds `value` to the values of `name`.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let name = name.into().to_ascii_lowercase();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => self.entries.push((name, vec![value])),
        }
        self
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).first().map(String::as_str)
    }

    /// All values of `name`, in order; empty when absent.
    pub fn get_all(&self, name: &str) -> &[String] {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }

    pub fn remove(&mut self, name: &str) -> Option<Vec<String>> {
        let pos = self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        Some(self.entries.remove(pos).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// Number of distinct names.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Checks that the headers can be sent: names non-empty and NUL-free, values NUL-free
    /// (a NUL would silently split a value in two on the other side).
    pub fn validate(&self) -> Result<(), HeaderError> {
        for (name, values) in &self.entries {
            if name.is_empty() {
                return Err(HeaderError::EmptyName);
            }
            if name.contains('\0') {
                return Err(HeaderError::NulInName(name.clone()));
            }
            if values.iter().any(|v| v.contains('\0')) {
                return Err(HeaderError::NulInValue(name.clone()));
            }
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut h = Headers::new();
        for (k, v) in iter {
            h.append(k, v);
        }
        h
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// Serialises `headers` as an uncompressed SPDY/3 block.
pub fn encode_block(headers: &Headers) -> Result<Vec<u8>, HeaderError> {
    headers.validate()?;
    let mut out = Vec::with_capacity(64);
    put_len(&mut out, headers.entries.len())?;
    for (name, values) in &headers.entries {
        put_len(&mut out, name.len())?;
        out.extend_from_slice(name.as_bytes());
        let value_len =
            values.iter().map(String::len).sum::<usize>() + values.len().saturating_sub(1);
        put_len(&mut out, value_len)?;
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(0);
            }
            out.extend_from_slice(v.as_bytes());
        }
        if out.len() > MAX_ENCODED_BLOCK_LEN {
            return Err(HeaderError::BlockTooLarge {
                len: out.len(),
                limit: MAX_ENCODED_BLOCK_LEN,
            });
        }
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), HeaderError> {
    let len = u32::try_from(len).map_err(|_| HeaderError::BlockTooLarge {
        len,
        limit: MAX_ENCODED_BLOCK_LEN,
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Parses an uncompressed SPDY/3 block, rejecting what the spec calls a protocol error:
/// empty, uppercase or duplicate names, and bytes left over after the last header.
pub fn decode_block(block: &[u8]) -> Result<Headers, HeaderError> {
    let mut rest = block;
    let count = take_u32(&mut rest)? as usize;
    // Every header costs at least 8 bytes, so a lying count cannot make us allocate much.
    if count > rest.len() / 8 {
        return Err(HeaderError::Truncated);
    }
    let mut entries: Vec<(String, Vec<String>)> = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut rest)?;
        if name.is_empty() {
            return Err(HeaderError::EmptyName);
        }
        if name.contains('\0') {
            return Err(HeaderError::NulInName(name));
        }
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(HeaderError::UppercaseName(name));
        }
        if entries.iter().any(|(n, _)| *n == name) {
            return Err(HeaderError::DuplicateName(name));
        }
        let value = take_str(&mut rest)?;
        let values = value.split('\0').map(str::to_owned).collect();
        entries.push((name, values));
    }
    if !rest.is_empty() {
        return Err(HeaderError::TrailingBytes(rest.len()));
    }
    Ok(Headers { entries })
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, HeaderError> {
    let (head, tail) = rest
        .split_first_chunk::<4>()
        .ok_or(HeaderError::Truncated)?;
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(rest: &mut &[u8]) -> Result<String, HeaderError> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(HeaderError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(bytes.to_vec()).map_err(|_| HeaderError::InvalidUtf8)
}

/// The sending half of a connection's header compression context.
pub struct HeaderCompressor {
    zlib: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        // Must precede the first deflate call; it only fails on a misuse we do not make.
        let adler = zlib.set_dictionary(SPDY3_DICTIONARY).ok();
        debug_assert_eq!(adler, Some(SPDY3_DICTIONARY_ID));
        Self { zlib }
    }

    /// Encodes and compresses `headers`, appending one SYNC_FLUSH-terminated block to `out`.
    pub fn compress(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), HeaderError> {
        let raw = encode_block(headers)?;
        self.compress_raw(&raw, out)
    }

    /// Compresses an already encoded block (see [`encode_block`]).
    pub fn compress_raw(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), HeaderError> {
        let mut pos = 0;
        loop {
            out.reserve((raw.len() - pos) / 2 + 64);
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&raw[pos..], out, FlushCompress::Sync)
                .map_err(|e| HeaderError::Zlib(e.to_string()))?;
            pos += (self.zlib.total_in() - before) as usize;
            // zlib has finished the flush once it stops short of filling the output.
            if pos == raw.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The receiving half of a connection's header compression context.
pub struct HeaderDecompressor {
    zlib: Decompress,
    max_len: usize,
}

impl HeaderDecompressor {
    /// `max_len` caps each decompressed block, which is what defeats zlib bombs: inflation
    /// stops as soon as the output would pass it.
    pub fn new(max_len: usize) -> Self {
        // Capped so that `limit + 1` below can never overflow.
        let max_len = max_len.min(isize::MAX as usize / 2);
        Self {
            zlib: Decompress::new(true),
            max_len,
        }
    }

    /// Inflates one compressed block and parses it.
    ///
    /// Errors other than those of [`decode_block`] leave this context unusable.
    pub fn decompress(&mut self, compressed: &[u8]) -> Result<Headers, HeaderError> {
        decode_block(&self.decompress_raw(compressed)?)
    }

    /// Inflates one compressed block without parsing it.
    pub fn decompress_raw(&mut self, compressed: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let limit = self.max_len;
        let mut out: Vec<u8> =
            Vec::with_capacity(compressed.len().saturating_mul(4).max(64).min(limit + 1));
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(HeaderError::DecompressedTooLarge { limit });
                }
                let grow = out.capacity().max(64).min(limit + 1 - out.len());
                out.reserve_exact(grow);
            }
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let result =
                self.zlib
                    .decompress_vec(&compressed[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.zlib.total_in() - in_before) as usize;
            match result {
                Ok(Status::StreamEnd) => return Err(HeaderError::StreamFinished),
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(SPDY3_DICTIONARY_ID) => {
                        self.zlib
                            .set_dictionary(SPDY3_DICTIONARY)
                            .map_err(|e| HeaderError::Zlib(e.to_string()))?;
                        continue;
                    }
                    Some(other) => return Err(HeaderError::WrongDictionary(other)),
                    None => return Err(HeaderError::Zlib(e.to_string())),
                },
            }
            if out.len() > limit {
                return Err(HeaderError::DecompressedTooLarge { limit });
            }
            let progressed = self.zlib.total_in() != in_before || out.len() != out_before;
            if pos == compressed.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if !progressed && out.len() < out.capacity() {
                // Input left, room left, and zlib would not move: the data is unusable.
                return Err(HeaderError::Zlib("decompressor made no progress".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_blocks_need_several_deflate_rounds_and_survive_them() {
        // Poorly compressible text bigger than the first output reservation.
        let mut value = String::new();
        let mut x: u32 = 1;
        while value.len() < 300_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            value.push(char::from(b'!' + (x >> 24) as u8 % 90));
        }
        let headers = Headers::from([("big", value.as_str())]);
        let mut out = Vec::new();
        let mut c = HeaderCompressor::new();
        c.compress(&headers, &mut out).unwrap();
        let mut d = HeaderDecompressor::new(1 << 20);
        assert_eq!(d.decompress(&out).unwrap(), headers);
        // The limit is inclusive of exactly-fitting blocks and exclusive beyond.
        let raw_len = encode_block(&headers).unwrap().len();
        let mut c = HeaderCompressor::new();
        let mut out = Vec::new();
        c.compress(&headers, &mut out).unwrap();
        assert!(HeaderDecompressor::new(raw_len).decompress(&out).is_ok());
        let mut c = HeaderCompressor::new();
        let mut out = Vec::new();
        c.compress(&headers, &mut out).unwrap();
        assert_eq!(
            HeaderDecompressor::new(raw_len - 1).decompress(&out),
            Err(HeaderError::DecompressedTooLarge { limit: raw_len - 1 })
        );
    }

    #[test]
    fn tiny_and_huge_limits_do_not_panic() {
        let mut out = Vec::new();
        HeaderCompressor::new()
            .compress(&Headers::new(), &mut out)
            .unwrap();
        // The empty block is 4 bytes: a limit of 0 refuses it, a limit of 4 takes it.
        assert_eq!(
            HeaderDecompressor::new(0).decompress(&out),
            Err(HeaderError::DecompressedTooLarge { limit: 0 })
        );
        assert_eq!(
            HeaderDecompressor::new(4).decompress(&out),
            Ok(Headers::new())
        );
        assert_eq!(
            HeaderDecompressor::new(usize::MAX).decompress(&out),
            Ok(Headers::new())
        );
    }

    #[test]
    fn validate_rejects_what_cannot_be_sent() {
        assert_eq!(
            Headers::from([("", "x")]).validate(),
            Err(HeaderError::EmptyName)
        );
        assert_eq!(
            Headers::from([("a\0b", "x")]).validate(),
            Err(HeaderError::NulInName("a\0b".into()))
        );
        assert_eq!(
            Headers::from([("a", "x\0")]).validate(),
            Err(HeaderError::NulInValue("a".into()))
        );
        assert!(Headers::from([("a", "")]).validate().is_ok());
    }
}
