//! Terminal resize events: a stream of JSON `remotecommand.TerminalSize` objects
//! (`{"Width":80,"Height":24}`), decoded as kubelet's `handleResizeEvents` does.

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::runtime::TermSize;

/// Go's `encoding/json` matches field names case-insensitively and ignores unknown
/// fields; missing fields stay 0.
#[derive(Deserialize)]
struct WireSize {
    #[serde(default, alias = "width", alias = "WIDTH")]
    #[serde(rename = "Width")]
    width: u16,
    #[serde(default, alias = "height", alias = "HEIGHT")]
    #[serde(rename = "Height")]
    height: u16,
}

/// The JSON a client writes for one resize event.
pub fn encode(size: TermSize) -> Vec<u8> {
    format!(r#"{{"Width":{},"Height":{}}}"#, size.width, size.height).into_bytes()
}

/// Reads resize events from `reader` and sends them to `tx` until the stream ends.
/// Malformed JSON ends the events (as in kubelet), but the stream is still drained to its
/// end so that a misbehaving client cannot stall the connection it shares with stdin.
pub async fn pump<R: AsyncRead + Unpin>(mut reader: R, tx: mpsc::Sender<TermSize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut tx = Some(tx);
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(sender) = tx.as_ref() else {
            continue; // refused earlier: drain only
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut failed = false;
        {
            let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<WireSize>();
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        consumed = it.byte_offset();
                        let size = TermSize {
                            width: s.width,
                            height: s.height,
                        };
                        if sender.send(size).await.is_err() {
                            failed = true; // the runtime stopped listening
                            break;
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::warn!(
                            "malformed terminal resize event, ignoring further resizes: {e}"
                        );
                        failed = true;
                        break;
                    }
                    None => {
                        consumed = buf.len();
                        break;
                    }
                }
            }
        }
        if failed {
            tx = None;
            buf = Vec::new();
        } else {
            buf.drain(..consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8]) -> Vec<TermSize> {
        let (tx, mut rx) = mpsc::channel(16);
        pump(input, tx).await;
        let mut out = Vec::new();
        while let Ok(s) = rx.try_recv() {
            out.push(s);
        }
        out
    }

    #[tokio::test]
    async fn decodes_a_stream_of_objects() {
        let got = run(br#"{"Width":80,"Height":24}{"width":100,"height":30} {"Height":5}"#).await;
        assert_eq!(
            got,
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 30
                },
                TermSize {
                    width: 0,
                    height: 5
                },
            ]
        );
    }

    #[tokio::test]
    async fn malformed_json_stops_events() {
        let got = run(br#"{"Width":80,"Height":24}{"Width":"x"}{"Width":1,"Height":1}"#).await;
        assert_eq!(
            got,
            vec![TermSize {
                width: 80,
                height: 24
            }]
        );
        assert!(run(br#"{"Width":70000,"Height":1}"#).await.is_empty());
    }

    #[test]
    fn encodes_like_go() {
        assert_eq!(
            encode(TermSize {
                width: 1,
                height: 2
            }),
            br#"{"Width":1,"Height":2}"#
        );
    }
}
