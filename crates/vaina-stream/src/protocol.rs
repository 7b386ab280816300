//! Names Kubernetes gives to protocols, headers and streams
//! (`k8s.io/apimachinery/pkg/util/remotecommand`, `httpstream`, `wsstream`,
//! `k8s.io/api/core/v1` constants).

/// `X-Stream-Protocol-Version`: the client offers one header per protocol, the server
/// answers the one it chose.
pub const HEADER_PROTOCOL_VERSION: &str = "X-Stream-Protocol-Version";
/// `X-Accepted-Stream-Protocol-Versions`: sent with a 403 when negotiation fails.
pub const HEADER_ACCEPTED_PROTOCOL_VERSIONS: &str = "X-Accepted-Stream-Protocol-Versions";
/// The `Upgrade` token of SPDY.
pub const SPDY_31: &str = "SPDY/3.1";

pub const STREAM_PROTOCOL_V1: &str = "channel.k8s.io";
pub const STREAM_PROTOCOL_V2: &str = "v2.channel.k8s.io";
pub const STREAM_PROTOCOL_V3: &str = "v3.channel.k8s.io";
pub const STREAM_PROTOCOL_V4: &str = "v4.channel.k8s.io";
pub const STREAM_PROTOCOL_V5: &str = "v5.channel.k8s.io";
/// Remote command protocols over SPDY, preferred first (`SupportedStreamingProtocols`).
pub const REMOTE_COMMAND_PROTOCOLS: [&str; 5] = [
    STREAM_PROTOCOL_V5,
    STREAM_PROTOCOL_V4,
    STREAM_PROTOCOL_V3,
    STREAM_PROTOCOL_V2,
    STREAM_PROTOCOL_V1,
];
/// Port forwarding over SPDY (`portforward.PortForwardProtocolV1Name`).
pub const PORT_FORWARD_PROTOCOL_V1: &str = "portforward.k8s.io";
pub const PORT_FORWARD_PROTOCOLS: [&str; 1] = [PORT_FORWARD_PROTOCOL_V1];

/// WebSocket sub-protocols (`wsstream`): binary frames, first byte the channel.
pub const WS_CHANNEL: &str = "channel.k8s.io";
/// Text frames: first character `'0' + channel`, then the data in standard base64.
pub const WS_BASE64_CHANNEL: &str = "base64.channel.k8s.io";
pub const WS_V4_CHANNEL: &str = "v4.channel.k8s.io";
pub const WS_V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";
/// v4 plus the close signal `[255, channel]` a client sends to half-close a channel.
pub const WS_V5_CHANNEL: &str = "v5.channel.k8s.io";
/// The first byte of a v5 close signal (`remotecommand.StreamClose`).
pub const WS_STREAM_CLOSE: u8 = 255;

/// SPDY header naming a stream's role.
pub const HEADER_STREAM_TYPE: &str = "streamType";
/// SPDY port-forward headers.
pub const HEADER_PORT: &str = "port";
pub const HEADER_REQUEST_ID: &str = "requestID";

pub const STREAM_TYPE_STDIN: &str = "stdin";
pub const STREAM_TYPE_STDOUT: &str = "stdout";
pub const STREAM_TYPE_STDERR: &str = "stderr";
pub const STREAM_TYPE_ERROR: &str = "error";
pub const STREAM_TYPE_RESIZE: &str = "resize";
pub const STREAM_TYPE_DATA: &str = "data";

/// WebSocket remote command channels.
pub const CHANNEL_STDIN: u8 = 0;
pub const CHANNEL_STDOUT: u8 = 1;
pub const CHANNEL_STDERR: u8 = 2;
pub const CHANNEL_ERROR: u8 = 3;
pub const CHANNEL_RESIZE: u8 = 4;

/// A negotiated remote command protocol version, 1 to 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RemoteCommandVersion(pub u8);

impl RemoteCommandVersion {
    pub fn from_spdy_protocol(name: &str) -> Option<Self> {
        Some(Self(match name {
            STREAM_PROTOCOL_V1 => 1,
            STREAM_PROTOCOL_V2 => 2,
            STREAM_PROTOCOL_V3 => 3,
            STREAM_PROTOCOL_V4 => 4,
            STREAM_PROTOCOL_V5 => 5,
            _ => return None,
        }))
    }

    /// Whether the error stream carries a JSON `metav1.Status` (v4+) rather than text.
    pub fn status_json(self) -> bool {
        self.0 >= 4
    }

    /// Whether a resize stream exists (v3+).
    pub fn supports_resize(self) -> bool {
        self.0 >= 3
    }
}

/// The first protocol in the client's order that the server supports, as
/// `httpstream.negotiateProtocol`.
pub fn negotiate<'a>(client: &'a [String], server: &[&str]) -> Option<&'a str> {
    client
        .iter()
        .map(String::as_str)
        .find(|c| server.contains(c))
}
