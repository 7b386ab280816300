//! Framing of a container's output into CRI log lines, as kubelet reads them:
//!
//! ```text
//! 2024-05-01T10:20:30.123456789Z stdout F hello
//! 2024-05-01T10:20:30.123456789Z stderr P first 16 KiB of a long line…
//! 2024-05-01T10:20:30.123456789Z stderr F …its end
//! ```
//!
//! `F` marks the record that ends a line, `P` a piece of a line that continues in the next
//! record of the same stream. A line longer than [`MAX_RECORD`] is cut into `P` pieces and a
//! final `F`; output that ends without a newline (the stream closed) is written as `P`, so that
//! a reader that joins records reproduces the bytes exactly (kubelet adds a newline after `F`
//! only). The newline itself is not part of the message; bytes are written as they came (no
//! UTF-8 validation, `\r` kept), like containerd and CRI-O do.

use std::time::SystemTime;

use crate::timefmt::write_rfc3339_nano;

/// Largest message in one record; longer lines are split (containerd and CRI-O use 16 KiB).
pub const MAX_RECORD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Cuts one stream into records. Holds the unfinished line between reads.
#[derive(Debug)]
pub struct LineFramer {
    stream: Stream,
    partial: Vec<u8>,
}

impl LineFramer {
    pub fn new(stream: Stream) -> LineFramer {
        LineFramer {
            stream,
            partial: Vec::new(),
        }
    }

    /// Frames `data`, read at `now`, appending complete records to `out`. Bytes after the last
    /// newline are kept until more data (or [`LineFramer::finish`]) comes, except that a line
    /// that grew beyond [`MAX_RECORD`] is flushed in `P` pieces right away.
    pub fn feed(&mut self, data: &[u8], now: SystemTime, out: &mut Vec<u8>) {
        let mut rest = data;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&rest[..i]);
                    self.flush_pieces(now, out);
                    self.record(b'F', now, out);
                    rest = &rest[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(rest);
                    self.flush_pieces(now, out);
                    rest = &[];
                }
            }
        }
        // Do not keep a large buffer around after a burst of long lines.
        if self.partial.is_empty() && self.partial.capacity() > 2 * MAX_RECORD {
            self.partial = Vec::new();
        }
    }

    /// The stream closed: writes what is left of an unterminated line as a `P` record.
    pub fn finish(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            self.record(b'P', now, out);
        }
        self.partial = Vec::new();
    }

    /// Bytes held for an unfinished line.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Emits `P` records while more than one record's worth is pending.
    fn flush_pieces(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        while self.partial.len() > MAX_RECORD {
            write_record(out, now, self.stream, b'P', &self.partial[..MAX_RECORD]);
            self.partial.drain(..MAX_RECORD);
        }
    }

    fn record(&mut self, tag: u8, now: SystemTime, out: &mut Vec<u8>) {
        write_record(out, now, self.stream, tag, &self.partial);
        self.partial.clear();
    }
}

fn write_record(out: &mut Vec<u8>, now: SystemTime, stream: Stream, tag: u8, msg: &[u8]) {
    out.reserve(msg.len() + 48);
    write_rfc3339_nano(out, now);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(tag);
    out.push(b' ');
    out.extend_from_slice(msg);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const TS: &str = "2001-09-09T01:46:40.000000007Z";

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_000_000_000, 7)
    }

    /// (stream, tag, message) of each record, checking the timestamp on the way.
    fn records(out: &[u8]) -> Vec<(String, char, Vec<u8>)> {
        let mut recs = Vec::new();
        let mut rest = out;
        while !rest.is_empty() {
            let nl = rest
                .iter()
                .position(|&b| b == b'\n')
                .expect("record ends in newline");
            let line = &rest[..nl];
            rest = &rest[nl + 1..];
            let ts = TS.len();
            assert_eq!(&line[..ts], TS.as_bytes());
            let s = &line[ts + 1..];
            let sp = s.iter().position(|&b| b == b' ').unwrap();
            let stream = String::from_utf8(s[..sp].to_vec()).unwrap();
            let tag = s[sp + 1] as char;
            assert_eq!(s[sp + 2], b' ');
            recs.push((stream, tag, s[sp + 3..].to_vec()));
        }
        recs
    }

    #[test]
    fn whole_lines_are_full_records() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = Vec::new();
        f.feed(b"hello\n\nworld\n", now(), &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            format!("{TS} stdout F hello\n{TS} stdout F \n{TS} stdout F world\n")
        );
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_line_split_across_reads_is_joined() {
        let mut f = LineFramer::new(Stream::Stderr);
        let mut out = Vec::new();
        f.feed(b"hel", now(), &mut out);
        assert!(out.is_empty());
        f.feed(b"lo\nbye", now(), &mut out);
        assert_eq!(
            records(&out),
            vec![("stderr".into(), 'F', b"hello".to_vec())]
        );
        out.clear();
        f.finish(now(), &mut out);
        assert_eq!(records(&out), vec![("stderr".into(), 'P', b"bye".to_vec())]);
    }

    #[test]
    fn long_lines_are_cut_into_partial_records() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = Vec::new();
        let mut line = vec![b'a'; MAX_RECORD];
        line.extend(vec![b'b'; MAX_RECORD]);
        line.extend(b"tail");
        // Fed in odd-sized chunks, then the newline.
        for chunk in line.chunks(5000) {
            f.feed(chunk, now(), &mut out);
        }
        f.feed(b"\n", now(), &mut out);
        let recs = records(&out);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], ("stdout".into(), 'P', vec![b'a'; MAX_RECORD]));
        assert_eq!(recs[1], ("stdout".into(), 'P', vec![b'b'; MAX_RECORD]));
        assert_eq!(recs[2], ("stdout".into(), 'F', b"tail".to_vec()));
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_record() {
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = Vec::new();
        let mut data = vec![b'x'; MAX_RECORD];
        data.push(b'\n');
        f.feed(&data, now(), &mut out);
        let recs = records(&out);
        assert_eq!(recs, vec![("stdout".into(), 'F', vec![b'x'; MAX_RECORD])]);
    }

    #[test]
    fn joining_records_gives_back_the_bytes() {
        let input: Vec<u8> = (0..100_000u32)
            .map(|i| {
                if i % 7919 == 0 {
                    b'\n'
                } else {
                    b'a' + (i % 26) as u8
                }
            })
            .chain(b"no newline at end".iter().copied())
            .collect();
        let mut f = LineFramer::new(Stream::Stdout);
        let mut out = Vec::new();
        for chunk in input.chunks(4096) {
            f.feed(chunk, now(), &mut out);
        }
        f.finish(now(), &mut out);
        let mut joined = Vec::new();
        for (_, tag, msg) in records(&out) {
            assert!(msg.len() <= MAX_RECORD);
            joined.extend(msg);
            if tag == 'F' {
                joined.push(b'\n');
            }
        }
        assert_eq!(joined, input);
    }
}
