//! Header blocks against zlib streams made and read by other code than headers.rs, so the
//! encoder and decoder cannot agree on the same mistake.

mod common;

use flate2::{Decompress, FlushDecompress};
use vaina_spdy::headers::{
    HeaderCompressor, HeaderDecompressor, SPDY3_DICTIONARY, SPDY3_DICTIONARY_ID, decode_block,
    encode_block,
};
use vaina_spdy::{HeaderError, Headers};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Adler-32 written out here rather than taken from zlib.
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65521;
        b = (b + a) % 65521;
    }
    b << 16 | a
}

#[test]
fn dictionary_is_the_spdy3_one() {
    assert_eq!(SPDY3_DICTIONARY.len(), 1423);
    // 0xe3c6a7c2 is the dictionary id every SPDY/3 zlib header carries.
    assert_eq!(adler32(SPDY3_DICTIONARY), 0xe3c6_a7c2);
    assert_eq!(SPDY3_DICTIONARY_ID, 0xe3c6_a7c2);
    // Structure of section 2.6.10.1: 65 length-prefixed words, then a run of text.
    let mut rest = &SPDY3_DICTIONARY[..];
    let mut words = Vec::new();
    while rest[0] == 0 {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        words.push(std::str::from_utf8(&rest[4..4 + len]).unwrap());
        rest = &rest[4 + len..];
    }
    assert_eq!(words.len(), 65);
    assert_eq!(words[..4], ["options", "head", "post", "put"]);
    assert_eq!(
        words[words.len() - 3..],
        ["set-cookie", "keep-alive", "origin"]
    );
    assert!(rest.starts_with(b"100101201202205206300302"));
    assert!(rest.ends_with(b"charset=iso-8859-1,utf-,*,enq=0."));
}

#[test]
fn blocks_compressed_by_another_zlib_decode_across_one_context() {
    // Three consecutive blocks of one connection, compressed by CPython's zlib with the
    // SPDY/3 dictionary, each ended by Z_SYNC_FLUSH. The later ones refer back to the
    // earlier ones, so they only decode in order on one context.
    let blocks = [
        hex("78f9e3c6a7c202e50e703a2b294a4dcc851625acc525c03c0164701641a22d13949c190d00000000ffff"),
        hex("c2aa1898bc53f2c1a5369a6a00000000ffff"),
        hex("02a56748d15e04ce451606160618ba41a556224af1ce9cc89004000000ffff"),
    ];
    let expected = [
        Headers::from([("streamtype", "stdin"), ("requestid", "0")]),
        Headers::from([("streamtype", "stdout"), ("requestid", "0")]),
        {
            let mut h = Headers::from([("port", "8080"), ("streamtype", "data")]);
            h.append("accept", "a").append("accept", "b"); // sent NUL-joined: "a\0b"
            h
        },
    ];
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    for (block, want) in blocks.iter().zip(&expected) {
        assert_eq!(&ctx.decompress(block).unwrap(), want);
    }
    assert_eq!(expected[2].get_all("accept"), ["a", "b"]);
    // Out of context, the second block means nothing.
    assert!(
        HeaderDecompressor::new(64 * 1024)
            .decompress(&blocks[1])
            .is_err()
    );
}

#[test]
fn plain_flate2_compressor_with_dictionary_is_understood() {
    let mut plain = common::PlainCompressor::new();
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    let sets: [&[(&str, &str)]; 3] = [
        &[("streamtype", "error"), ("requestid", "1")],
        &[("streamtype", "stdout"), ("requestid", "1")],
        &[
            (":status", "200"),
            ("content-type", "text/plain"),
            ("x", ""),
        ],
    ];
    for pairs in sets {
        let compressed = plain.block(&common::raw_block(pairs));
        let got = ctx.decompress(&compressed).unwrap();
        let want: Headers = pairs.iter().copied().collect();
        assert_eq!(got, want);
    }
}

#[test]
fn our_blocks_read_back_with_plain_flate2() {
    let mut ours = HeaderCompressor::new();
    let mut plain = Decompress::new(true);
    let sets: [&[(&str, &str)]; 4] = [
        &[("streamtype", "stdin"), ("requestid", "3")],
        &[("streamtype", "stdin"), ("requestid", "3")],
        &[("port", "443")],
        &[],
    ];
    for (i, pairs) in sets.into_iter().enumerate() {
        let headers: Headers = pairs.iter().copied().collect();
        let mut compressed = Vec::new();
        ours.compress(&headers, &mut compressed).unwrap();
        assert!(
            compressed.ends_with(&[0x00, 0x00, 0xff, 0xff]),
            "block {i} must end with a SYNC_FLUSH"
        );
        if i == 0 {
            // zlib header announcing a preset dictionary, then its id.
            assert_eq!(compressed[1] & 0x20, 0x20, "FDICT flag");
            assert_eq!(compressed[2..6], SPDY3_DICTIONARY_ID.to_be_bytes());
        }
        let raw = plain_inflate(&mut plain, &compressed);
        assert_eq!(raw, common::raw_block(pairs), "block {i}");
    }
}

/// Inflates one block with flate2 directly, supplying the dictionary when asked.
fn plain_inflate(d: &mut Decompress, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    let mut pos = 0;
    loop {
        let before = d.total_in();
        let res = d.decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
        pos += (d.total_in() - before) as usize;
        match res {
            Ok(_) if pos == input.len() => return out,
            Ok(_) => continue,
            Err(e) => {
                assert_eq!(e.needs_dictionary(), Some(0xe3c6_a7c2));
                d.set_dictionary(SPDY3_DICTIONARY).unwrap();
            }
        }
    }
}

#[test]
fn garbage_is_a_zlib_error() {
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    assert!(matches!(
        ctx.decompress(b"\x00\x01\x02garbage!"),
        Err(HeaderError::Zlib(_))
    ));
    // A valid zlib header followed by nonsense.
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    assert!(matches!(
        ctx.decompress(&[0x78, 0x9c, 0xff, 0xff, 0xff, 0xff]),
        Err(HeaderError::Zlib(_))
    ));
}

#[test]
fn a_stream_asking_for_another_dictionary_is_refused() {
    let mut c = flate2::Compress::new(flate2::Compression::default(), true);
    c.set_dictionary(b"some other dictionary").unwrap();
    let mut out = Vec::with_capacity(1024);
    c.compress_vec(
        &common::raw_block(&[("a", "b")]),
        &mut out,
        flate2::FlushCompress::Sync,
    )
    .unwrap();
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    assert!(
        matches!(ctx.decompress(&out), Err(HeaderError::WrongDictionary(id)) if id != SPDY3_DICTIONARY_ID)
    );
}

#[test]
fn decompression_bomb_is_stopped_at_the_limit() {
    // 4 MiB of 'a' inside one header value compresses to a few KiB.
    let mut raw = common::raw_block(&[("bomb", "")]);
    let value_len = 4 * 1024 * 1024;
    let at = raw.len() - 4;
    raw[at..].copy_from_slice(&(value_len as u32).to_be_bytes());
    raw.resize(raw.len() + value_len, b'a');
    let mut c = flate2::Compress::new(flate2::Compression::fast(), true);
    c.set_dictionary(SPDY3_DICTIONARY).unwrap();
    let mut compressed = Vec::with_capacity(256 * 1024);
    c.compress_vec(&raw, &mut compressed, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(
        compressed.len() < 256 * 1024,
        "bomb is small: {}",
        compressed.len()
    );

    let mut ctx = HeaderDecompressor::new(64 * 1024);
    assert_eq!(
        ctx.decompress(&compressed),
        Err(HeaderError::DecompressedTooLarge { limit: 64 * 1024 })
    );
    // A limit that fits the block exactly lets it through: the limit is exact.
    let exact = raw.len();
    let mut ctx = HeaderDecompressor::new(exact);
    assert_eq!(
        ctx.decompress(&compressed)
            .unwrap()
            .get("bomb")
            .map(str::len),
        Some(value_len)
    );
}

#[test]
fn a_finished_zlib_stream_is_refused() {
    let mut c = flate2::Compress::new(flate2::Compression::default(), true);
    c.set_dictionary(SPDY3_DICTIONARY).unwrap();
    let mut out = Vec::with_capacity(1024);
    c.compress_vec(
        &common::raw_block(&[("a", "b")]),
        &mut out,
        flate2::FlushCompress::Finish,
    )
    .unwrap();
    let mut ctx = HeaderDecompressor::new(64 * 1024);
    assert_eq!(ctx.decompress(&out), Err(HeaderError::StreamFinished));
}

#[test]
fn raw_block_rules() {
    let ok = common::raw_block(&[("a", "1\x002"), ("b", "")]);
    let headers = decode_block(&ok).unwrap();
    assert_eq!(headers.get_all("a"), ["1", "2"]);
    assert_eq!(headers.get("b"), Some(""));
    assert_eq!(encode_block(&headers).unwrap(), ok);

    assert_eq!(
        decode_block(&common::raw_block(&[("Host", "x")])),
        Err(HeaderError::UppercaseName("Host".into()))
    );
    assert_eq!(
        decode_block(&common::raw_block(&[("a", "1"), ("a", "2")])),
        Err(HeaderError::DuplicateName("a".into()))
    );
    assert_eq!(
        decode_block(&common::raw_block(&[("", "x")])),
        Err(HeaderError::EmptyName)
    );
    assert_eq!(decode_block(&[0, 0, 0]), Err(HeaderError::Truncated));
    let mut cut = common::raw_block(&[("abc", "def")]);
    cut.pop();
    assert_eq!(decode_block(&cut), Err(HeaderError::Truncated));
    let mut extra = common::raw_block(&[("abc", "def")]);
    extra.push(0);
    assert_eq!(decode_block(&extra), Err(HeaderError::TrailingBytes(1)));
    // A count far larger than the bytes behind it is refused without allocating for it.
    assert_eq!(
        decode_block(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]),
        Err(HeaderError::Truncated)
    );
    let mut bad_utf8 = common::raw_block(&[("a", "x")]);
    let last = bad_utf8.len() - 1;
    bad_utf8[last] = 0xff;
    assert_eq!(decode_block(&bad_utf8), Err(HeaderError::InvalidUtf8));
}

#[test]
fn headers_are_lowercased_and_looked_up_case_insensitively() {
    let mut h = Headers::new();
    h.insert("StreamType", "stdin")
        .append("X-Multi", "a")
        .append("x-multi", "b");
    assert_eq!(h.get("streamtype"), Some("stdin"));
    assert_eq!(h.get("STREAMTYPE"), Some("stdin"));
    assert_eq!(h.get_all("x-multi"), ["a", "b"]);
    let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["streamtype", "x-multi"]);
    h.insert("x-multi", "c");
    assert_eq!(h.get_all("x-multi"), ["c"]);
    assert_eq!(h.remove("X-MULTI"), Some(vec!["c".to_owned()]));
    assert_eq!(h.len(), 1);
    assert_eq!(
        encode_block(&Headers::from([("a", "x\0y")])),
        Err(HeaderError::NulInValue("a".into()))
    );
}
