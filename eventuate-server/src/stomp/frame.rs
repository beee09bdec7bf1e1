//! STOMP frames and their codec (STOMP 1.2, lenient towards 1.0 and 1.1 clients).
//!
//! A frame is a command line, `name:value` header lines, a blank line, a body and a NUL. Lines
//! end with LF or CRLF. EOLs between frames are heart-beats. Header names and values are
//! unescaped (`\r`, `\n`, `\c`, `\\`; any other escape is an error) except in `CONNECT`,
//! `STOMP` and `CONNECTED` frames; values are never trimmed; the first of repeated headers
//! wins. With `content-length` the body is exactly that many octets (NULs included) and a NUL
//! must follow; without it the body ends at the first NUL. Escaping is applied for every
//! negotiated version: Eventuate's own clients sent no `accept-version` (1.0) yet escaped `:`
//! in their destinations as `\c`.

use std::fmt;

/// The decoder's limits; a frame over any of them is an error (the session answers ERROR and
/// closes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Longest command or header line, in bytes, EOL excluded (default 8 KiB).
    pub max_line_length: usize,
    /// Most headers in one frame (default 64).
    pub max_headers: usize,
    /// Largest body, in bytes (default 64 KiB: clients have no reason to send big bodies to
    /// this server, which refuses SEND).
    pub max_body: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_line_length: 8 << 10,
            max_headers: 64,
            max_body: 64 << 10,
        }
    }
}

/// A STOMP frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// `CONNECT`, `SUBSCRIBE`, `MESSAGE`, ...
    pub command: String,
    /// Headers in the order received or to be sent (repeats kept; [`Frame::header`] returns
    /// the first).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Frame {
    /// A frame without headers or body.
    pub fn new(command: impl Into<String>) -> Self {
        Frame {
            command: command.into(),
            ..Frame::default()
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header (repeated headers: the first wins).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this frame's headers are sent and received unescaped.
    fn raw_headers(command: &str) -> bool {
        matches!(command, "CONNECT" | "STOMP" | "CONNECTED")
    }

    /// The frame on the wire: headers escaped (but those of `CONNECTED`), `content-length`
    /// added when there is a body and none was given, then the NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.body.len());
        out.extend_from_slice(self.command.as_bytes());
        out.push(b'\n');
        let raw = Frame::raw_headers(&self.command);
        let mut has_length = false;
        for (name, value) in &self.headers {
            has_length |= name == "content-length";
            if raw {
                out.extend_from_slice(name.as_bytes());
                out.push(b':');
                out.extend_from_slice(value.as_bytes());
            } else {
                escape_into(name, &mut out);
                out.push(b':');
                escape_into(value, &mut out);
            }
            out.push(b'\n');
        }
        if !has_length && (!self.body.is_empty() || matches!(&*self.command, "MESSAGE" | "ERROR")) {
            out.extend_from_slice(format!("content-length:{}\n", self.body.len()).as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(&self.body);
        out.push(0);
        out
    }
}

fn escape_into(text: &str, out: &mut Vec<u8>) {
    for byte in text.bytes() {
        match byte {
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            other => out.push(other),
        }
    }
}

/// Why a frame could not be decoded: fatal for the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

fn error<T>(message: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError(message.into()))
}

/// Undoes the STOMP 1.2 header escapes.
pub fn unescape(text: &[u8]) -> Result<String, FrameError> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.iter();
    while let Some(&byte) = bytes.next() {
        if byte != b'\\' {
            out.push(byte);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b'c') => out.push(b':'),
            Some(b'\\') => out.push(b'\\'),
            Some(&other) => {
                return error(format!(
                    "undefined escape sequence `\\{}` in a header (STOMP 1.2 defines only \\r, \\n, \\c and \\\\)",
                    char::from(other).escape_default()
                ));
            }
            None => return error("a header ends with a lone backslash (an unfinished escape)"),
        }
    }
    String::from_utf8(out).map_err(|_| FrameError("a header is not valid UTF-8".into()))
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Not enough bytes yet.
    Incomplete,
    /// EOLs between frames (heart-beats): this many bytes.
    HeartBeat(usize),
    /// A frame, which took this many bytes.
    Frame(Frame, usize),
}

/// Finds the next line in `buf[from..]`: (end of its content, start of the next line).
fn line(
    buf: &[u8],
    from: usize,
    limits: &FrameLimits,
) -> Result<Option<(usize, usize)>, FrameError> {
    let rest = &buf[from.min(buf.len())..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(at) => {
            let end = if at > 0 && rest[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            if end > limits.max_line_length {
                return error(format!(
                    "a line of {end} bytes is longer than the server's limit of {} bytes",
                    limits.max_line_length
                ));
            }
            Ok(Some((from + end, from + at + 1)))
        }
        None if rest.len() > limits.max_line_length + 1 => error(format!(
            "a line is longer than the server's limit of {} bytes",
            limits.max_line_length
        )),
        None => Ok(None),
    }
}

/// Decodes what starts `buf`: heart-beat EOLs, a complete frame, or nothing yet.
pub fn decode(buf: &[u8], limits: &FrameLimits) -> Result<Decoded, FrameError> {
    // Heart-beats: LF or CRLF.
    let mut at = 0;
    loop {
        match buf.get(at..) {
            Some([b'\n', ..]) => at += 1,
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\r']) => {
                return Ok(if at > 0 {
                    Decoded::HeartBeat(at)
                } else {
                    Decoded::Incomplete
                });
            }
            _ => break,
        }
    }
    if at > 0 {
        return Ok(Decoded::HeartBeat(at));
    }
    if buf.is_empty() {
        return Ok(Decoded::Incomplete);
    }
    let Some((end, mut next)) = line(buf, 0, limits)? else {
        return Ok(Decoded::Incomplete);
    };
    let command = std::str::from_utf8(&buf[..end])
        .map_err(|_| FrameError("the command is not valid UTF-8".into()))?;
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_uppercase()) {
        return error(format!(
            "`{}` is not a STOMP command",
            command.escape_default()
        ));
    }
    let raw = Frame::raw_headers(command);
    let mut frame = Frame::new(command);
    loop {
        let Some((end, after)) = line(buf, next, limits)? else {
            return Ok(Decoded::Incomplete);
        };
        let content = &buf[next..end];
        next = after;
        if content.is_empty() {
            break;
        }
        if frame.headers.len() >= limits.max_headers {
            return error(format!(
                "more than the server's limit of {} headers in one frame",
                limits.max_headers
            ));
        }
        let Some(colon) = content.iter().position(|&b| b == b':') else {
            return error(format!(
                "header line `{}` has no `:`",
                String::from_utf8_lossy(content).escape_default()
            ));
        };
        let (name, value) = (&content[..colon], &content[colon + 1..]);
        let (name, value) = if raw {
            let text = |b: &[u8]| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| FrameError("a header is not valid UTF-8".into()))
            };
            (text(name)?, text(value)?)
        } else {
            (unescape(name)?, unescape(value)?)
        };
        frame.headers.push((name, value));
    }
    let body_start = next;
    let body_end = match frame.get("content-length") {
        Some(length) => {
            let length: usize = length.parse().map_err(|_| {
                FrameError(format!(
                    "content-length `{length}` is not a number of octets"
                ))
            })?;
            if length > limits.max_body {
                return error(format!(
                    "a body of {length} bytes is larger than the server's limit of {} bytes",
                    limits.max_body
                ));
            }
            let end = body_start + length;
            match buf.get(end) {
                None => return Ok(Decoded::Incomplete),
                Some(0) => end,
                Some(_) => {
                    return error(format!(
                        "the body is not followed by a NUL after its content-length of {length} octets"
                    ));
                }
            }
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(length) if length > limits.max_body => {
                return error(format!(
                    "a body of {length} bytes is larger than the server's limit of {} bytes",
                    limits.max_body
                ));
            }
            Some(length) => body_start + length,
            None if buf.len() - body_start > limits.max_body => {
                return error(format!(
                    "a body larger than the server's limit of {} bytes",
                    limits.max_body
                ));
            }
            None => return Ok(Decoded::Incomplete),
        },
    };
    frame.body = buf[body_start..body_end].to_vec();
    Ok(Decoded::Frame(frame, body_end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Decoded, FrameError> {
        decode(bytes, &FrameLimits::default())
    }

    fn frame(bytes: &[u8]) -> Frame {
        match one(bytes) {
            Ok(Decoded::Frame(frame, used)) => {
                assert_eq!(used, bytes.len(), "the whole input is one frame");
                frame
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn a_frame_with_lf_or_crlf_lines() {
        let lf = frame(b"SUBSCRIBE\nid:0\ndestination:/a\n\n\0");
        let crlf = frame(b"SUBSCRIBE\r\nid:0\r\ndestination:/a\r\n\r\n\0");
        assert_eq!(lf, crlf);
        assert_eq!(lf.command, "SUBSCRIBE");
        assert_eq!(lf.get("id"), Some("0"));
        assert_eq!(lf.get("destination"), Some("/a"));
        assert!(lf.body.is_empty());
    }

    #[test]
    fn heart_beats_between_frames() {
        assert_eq!(one(b"\n\r\n\nSEND").unwrap(), Decoded::HeartBeat(4));
        assert_eq!(one(b"").unwrap(), Decoded::Incomplete);
        assert_eq!(one(b"\r").unwrap(), Decoded::Incomplete);
        assert_eq!(one(b"\n\r").unwrap(), Decoded::HeartBeat(1));
    }

    #[test]
    fn incomplete_until_the_nul() {
        let whole = b"SEND\ndestination:/a\n\nhello\0";
        for cut in 0..whole.len() {
            assert_eq!(
                one(&whole[..cut]).unwrap(),
                Decoded::Incomplete,
                "cut at {cut}"
            );
        }
        assert_eq!(frame(whole).body, b"hello");
    }

    #[test]
    fn content_length_bodies_may_hold_nul() {
        let f = frame(b"SEND\ncontent-length:5\n\na\0b\0c\0");
        assert_eq!(f.body, b"a\0b\0c");
        assert_eq!(
            one(b"SEND\ncontent-length:5\n\na\0b\0").unwrap(),
            Decoded::Incomplete
        );
        assert!(
            one(b"SEND\ncontent-length:2\n\nabc\0").is_err(),
            "no NUL after the body"
        );
        assert!(one(b"SEND\ncontent-length:x\n\n\0").is_err());
    }

    #[test]
    fn header_escapes() {
        let f = frame(b"SUBSCRIBE\nde\\cst:a\\cb\\nc\\rd\\\\e\n\n\0");
        assert_eq!(f.get("de:st"), Some("a:b\nc\rd\\e"));
        let err = one(b"SUBSCRIBE\nid:a\\tb\n\n\0").unwrap_err();
        assert!(err.0.contains("escape"), "{err}");
        assert!(
            one(b"SUBSCRIBE\nid:ab\\\n\n\0").is_err(),
            "a lone backslash"
        );
    }

    #[test]
    fn connect_headers_are_not_unescaped() {
        let f = frame(b"CONNECT\nlogin:a\\tb\npasscode:x:y\n\n\0");
        assert_eq!(f.get("login"), Some("a\\tb"));
        assert_eq!(f.get("passcode"), Some("x:y"), "split at the first colon");
        let f = frame(b"STOMP\nlogin:a\\cb\n\n\0");
        assert_eq!(f.get("login"), Some("a\\cb"));
    }

    #[test]
    fn values_are_not_trimmed_and_the_first_repeat_wins() {
        let f = frame(b"SUBSCRIBE\nid: x \nid:second\n\n\0");
        assert_eq!(f.get("id"), Some(" x "));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn limits() {
        let limits = FrameLimits {
            max_line_length: 16,
            max_headers: 2,
            max_body: 4,
        };
        let long = b"SUBSCRIBE\nid:0123456789abcdef\n\n\0";
        assert!(decode(long, &limits).unwrap_err().0.contains("longer"));
        let endless = [b'A'; 40];
        assert!(
            decode(&endless, &limits).is_err(),
            "a command line without an end"
        );
        let many = b"SUBSCRIBE\na:1\nb:2\nc:3\n\n\0";
        assert!(decode(many, &limits).unwrap_err().0.contains("headers"));
        assert!(decode(b"SEND\n\n12345\0", &limits).is_err());
        assert!(
            decode(b"SEND\n\n123456789", &limits).is_err(),
            "before the NUL arrives"
        );
        assert!(decode(b"SEND\ncontent-length:5\n\n", &limits).is_err());
        assert!(decode(b"SEND\n\n1234\0", &limits).is_ok());
    }

    #[test]
    fn bad_lines() {
        assert!(one(b"SUBSCRIBE\nno-colon\n\n\0").is_err());
        assert!(one(b"subscribe\n\n\0").is_err());
    }

    #[test]
    fn encode_escapes_and_adds_content_length() {
        let f = Frame::new("MESSAGE")
            .header("destination", "{\"a\":1}\n\\")
            .body(b"x\0y".to_vec());
        let bytes = f.encode();
        assert_eq!(
            bytes,
            b"MESSAGE\ndestination:{\"a\"\\c1}\\n\\\\\ncontent-length:3\n\nx\0y\0".to_vec()
        );
        let back = frame(&bytes);
        assert_eq!(back.get("destination"), f.get("destination"));
        assert_eq!(back.body, f.body);
        let connected = Frame::new("CONNECTED").header("server", "a:b").encode();
        assert_eq!(connected, b"CONNECTED\nserver:a:b\n\n\0".to_vec());
    }
}
