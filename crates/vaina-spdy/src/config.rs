//! Session tuning knobs.

use crate::frame::{DEFAULT_WINDOW, MAX_PAYLOAD_LEN, MAX_WINDOW};
use crate::headers::DEFAULT_MAX_HEADER_BLOCK_LEN;

/// Settings for one session. Start from [`Config::default`] and change fields; values
/// outside what the protocol allows are clamped into range when the session starts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame payload accepted from the peer; a bigger frame is a connection error,
    /// refused before it is buffered. At most 2^24 - 1.
    pub max_frame_len: usize,
    /// Largest decompressed header block accepted from the peer (zlib bomb guard).
    pub max_header_block_len: usize,
    /// Per-stream receive window we advertise (SETTINGS_INITIAL_WINDOW_SIZE).
    pub initial_window_size: u32,
    /// Connection-level receive window (SPDY/3.1); raised from the 64 KiB default with a
    /// WINDOW_UPDATE on stream 0 when the session starts.
    pub connection_window_size: u32,
    /// Largest DATA payload we send in one frame; writes are split to fit it and the
    /// peer's windows.
    pub max_send_frame_len: usize,
    /// Streams the peer may have open at once; more are refused with REFUSED_STREAM.
    pub max_concurrent_streams: u32,
    /// Enforce SPDY/3.1 flow control. When `false` our writers ignore the peer's windows
    /// and an overrun of ours is tolerated (the reader then stalls the connection instead
    /// of buffering without bound). Needed for peers that never send WINDOW_UPDATE, which
    /// includes moby/spdystream, i.e. kubectl and crictl.
    pub flow_control: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_frame_len: 1024 * 1024,
            max_header_block_len: DEFAULT_MAX_HEADER_BLOCK_LEN,
            initial_window_size: DEFAULT_WINDOW,
            connection_window_size: 1024 * 1024,
            max_send_frame_len: 16 * 1024,
            max_concurrent_streams: 100,
            flow_control: true,
        }
    }
}

impl Config {
    /// Brings every field into the range the protocol allows.
    pub(crate) fn normalized(mut self) -> Self {
        self.max_frame_len = self.max_frame_len.clamp(1024, MAX_PAYLOAD_LEN);
        self.max_header_block_len = self.max_header_block_len.clamp(64, 64 * 1024 * 1024);
        self.initial_window_size = self.initial_window_size.clamp(1, MAX_WINDOW);
        self.connection_window_size = self
            .connection_window_size
            .clamp(DEFAULT_WINDOW, MAX_WINDOW);
        self.max_send_frame_len = self.max_send_frame_len.clamp(1, MAX_PAYLOAD_LEN);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_clamps_into_protocol_ranges() {
        let c = Config {
            max_frame_len: usize::MAX,
            initial_window_size: 0,
            connection_window_size: 1,
            max_send_frame_len: 0,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.max_frame_len, MAX_PAYLOAD_LEN);
        assert_eq!(c.initial_window_size, 1);
        assert_eq!(c.connection_window_size, DEFAULT_WINDOW);
        assert_eq!(c.max_send_frame_len, 1);
        let c = Config {
            initial_window_size: u32::MAX,
            ..Config::default()
        }
        .normalized();
        assert_eq!(c.initial_window_size, MAX_WINDOW);
    }
}
