//! WebSocket client framing for the generator (RFC 6455): the HTTP upgrade, masked client
//! frames written into a shared buffer, and a bounded parser of server frames that borrows
//! from the bytes read. Nothing here allocates per frame.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Longest HTTP answer to the upgrade request we read (status line and headers).
pub const MAX_HANDSHAKE_ANSWER: usize = 8 * 1024;
/// Headers the upgrade answer may carry.
const MAX_HEADERS: usize = 64;
/// Longest payload of a control frame (ping, pong, close), per RFC 6455 5.5.
const MAX_CONTROL: u64 = 125;

/// A server frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of the header itself (2, 4 or 10).
    pub header_len: usize,
    pub payload_len: usize,
}

/// Why the server's bytes are not a frame we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Breaks RFC 6455 (a masked server frame, reserved bits, an unknown opcode, a fragmented
    /// or oversized control frame, a continuation out of place).
    Protocol(&'static str),
    /// Longer than the largest frame or message we accept.
    TooLarge,
}

impl FrameError {
    /// How the report names a connection broken by this (`unexpected_closes`).
    pub fn as_str(self) -> &'static str {
        match self {
            FrameError::Protocol(_) => "protocol",
            FrameError::TooLarge => "capacity",
        }
    }
}

/// Parses the header at the start of `buf`; `None` until enough bytes are there. A payload
/// longer than `max` is refused from its header, so nothing waits for it to arrive.
pub fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Protocol("masked server frame"));
    }
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
    let control = opcode >= OP_CLOSE;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG if !fin => return Err(FrameError::Protocol("fragmented control frame")),
        OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("unknown opcode")),
    }
    let (len, header_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if control && len > MAX_CONTROL {
        return Err(FrameError::Protocol("control frame over 125 bytes"));
    }
    if len > max as u64 {
        return Err(FrameError::TooLarge);
    }
    Ok(Some(Header { fin, opcode, header_len, payload_len: len as usize }))
}

/// Appends one final, masked client frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Frames a connection is about to write, and the scratch its text is built in.
///
/// The masking keys come from a xorshift generator: RFC 6455 asks for unpredictable keys to
/// protect proxies from scripts in a browser, and a load generator is not one.
pub struct Outbox {
    pub bytes: Vec<u8>,
    /// Where a frame's text is written before it is framed.
    pub scratch: String,
    mask: u64,
}

impl Outbox {
    pub fn new(seed: u64) -> Outbox {
        Outbox { bytes: Vec::with_capacity(16 * 1024), scratch: String::with_capacity(1024), mask: seed | 1 }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask = x;
        (x as u32).to_be_bytes()
    }

    pub fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.next_mask();
        write_frame(&mut self.bytes, opcode, payload, mask);
    }

    pub fn text(&mut self, text: &str) {
        self.frame(OP_TEXT, text.as_bytes());
    }

    /// Frames what was written into `scratch`.
    pub fn text_from_scratch(&mut self) {
        let mask = self.next_mask();
        write_frame(&mut self.bytes, OP_TEXT, self.scratch.as_bytes(), mask);
    }

    pub fn close(&mut self, code: u16) {
        self.frame(OP_CLOSE, &code.to_be_bytes());
    }
}

/// The WebSocket upgrade over `stream` for `url` (`ws://`); returns the bytes that followed the
/// server's answer (frames it sent at once). Errors read `handshake: <why>`. The caller bounds
/// its time (`--connect-timeout`).
pub async fn handshake(stream: &mut TcpStream, url: &url::Url) -> Result<Vec<u8>, String> {
    let key = generate_key();
    let request = upgrade_request(url, &key);
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("handshake: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if stream.read_buf(&mut buf).await.map_err(|e| format!("handshake: {e}"))? == 0 {
            return Err("handshake: connection closed before the answer".to_string());
        }
        if let Some(at) = check_answer(&buf, &key)? {
            return Ok(buf.split_off(at));
        }
        if buf.len() >= MAX_HANDSHAKE_ANSWER {
            return Err(format!("handshake: answer longer than {MAX_HANDSHAKE_ANSWER} bytes"));
        }
    }
}

fn upgrade_request(url: &url::Url, key: &str) -> String {
    let host = url.host_str().unwrap_or_default();
    let host = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!(
        "GET {}{query} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
        url.path()
    )
}

/// `Some(length of the answer)` once `buf` holds a whole answer that accepts the upgrade.
fn check_answer(buf: &[u8], key: &str) -> Result<Option<usize>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let len = match answer.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("handshake: bad HTTP answer: {e}")),
    };
    let code = answer.code.unwrap_or(0);
    if code != 101 {
        return Err(format!("handshake: HTTP error: {code} {}", answer.reason.unwrap_or("")));
    }
    let header = |name: &str| answer.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| String::from_utf8_lossy(h.value).into_owned());
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err("handshake: no `Upgrade: websocket` in the answer".to_string());
    }
    if header("sec-websocket-accept").as_deref() != Some(derive_accept_key(key.as_bytes()).as_str()) {
        return Err("handshake: wrong Sec-WebSocket-Accept".to_string());
    }
    Ok(Some(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        write_frame(&mut f, opcode, payload, [0; 4]);
        // Unmasked, as a server writes it: drop the mask bit and the (zero) key.
        f[0] = if fin { 0x80 | opcode } else { opcode };
        f[1] &= 0x7f;
        let key_at = f.len() - payload.len() - 4;
        f.drain(key_at..key_at + 4);
        f
    }

    #[test]
    fn headers_of_every_length_form_parse() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let f = server_frame(OP_TEXT, true, &vec![b'a'; len]);
            let h = parse_header(&f, 1 << 20).unwrap().unwrap();
            assert_eq!((h.opcode, h.fin, h.payload_len, h.header_len + len), (OP_TEXT, true, len, f.len()));
            // Every prefix shorter than the header asks for more.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&f[..cut], 1 << 20), Ok(None), "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let masked = [0x81, 0x81, 1, 2, 3, 4, b'x'];
        assert_eq!(parse_header(&masked, 100), Err(FrameError::Protocol("masked server frame")));
        assert_eq!(parse_header(&[0xC1, 0], 100), Err(FrameError::Protocol("reserved bits set")));
        assert_eq!(parse_header(&[0x83, 0], 100), Err(FrameError::Protocol("unknown opcode")));
        assert_eq!(parse_header(&[0x09, 0], 100), Err(FrameError::Protocol("fragmented control frame")));
        assert_eq!(parse_header(&[0x89, 126, 0, 126], 1000), Err(FrameError::Protocol("control frame over 125 bytes")));
        // A 2^63-byte claim is refused from its header alone.
        let huge = [0x81, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_header(&huge, 64 * 1024), Err(FrameError::TooLarge));
        assert_eq!(parse_header(&server_frame(OP_TEXT, true, &[b'a'; 101]), 100), Err(FrameError::TooLarge));
    }

    #[test]
    fn client_frames_are_masked_and_unmask_to_the_payload() {
        let mut out = Outbox::new(7);
        out.text("{\"type\":\"heartbeat\"}");
        let f = &out.bytes;
        assert_eq!((f[0], f[1]), (0x81, 0x80 | 20));
        let key = [f[2], f[3], f[4], f[5]];
        let text: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ key[i & 3]).collect();
        assert_eq!(text, b"{\"type\":\"heartbeat\"}");
        out.text("x");
        assert_ne!(&out.bytes[28..32], &key, "a fresh key per frame");
    }

    #[test]
    fn the_upgrade_answer_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nConnection: upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x01\x00";
        assert_eq!(check_answer(ok.as_bytes(), key), Ok(Some(ok.len() - 2)));
        assert_eq!(check_answer(&ok.as_bytes()[..40], key), Ok(None));
        let refused = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(check_answer(refused.as_bytes(), key), Err("handshake: HTTP error: 401 Unauthorized".to_string()));
        let wrong = ok.replace("s3pP", "AAAA");
        assert_eq!(check_answer(wrong.as_bytes(), key), Err("handshake: wrong Sec-WebSocket-Accept".to_string()));
        let url = url::Url::parse("ws://[::1]:9000/ws?userId=a%2Bb").unwrap();
        assert!(upgrade_request(&url, key).starts_with("GET /ws?userId=a%2Bb HTTP/1.1\r\nHost: [::1]:9000\r\n"));
    }
}
