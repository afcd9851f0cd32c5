//! The wire protocol (../shared/spec/protocol.md): parsing client frames, writing envelopes,
//! acks and errors, and the close codes. Pure functions over bytes, no I/O.
//!
//! Client frames are parsed without building a `serde_json::Value`: `payload` and `id` stay raw
//! JSON text and are copied into the outgoing envelope untouched, and the `receiverID` key is
//! matched case-insensitively as the original server did.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A frame ready to write to a client: text known to be UTF-8, cheap to clone per receiver.
pub type Frame = axum::extract::ws::Utf8Bytes;

/// Frame types a client may send.
pub const TYPE_CHAT: &str = "chat_message";
/// A client-measured latency sample, in milliseconds; feeds metrics, never forwarded.
pub const TYPE_LATENCY: &str = "latency_report";
/// Keeps the connection and its presence (`user_online`) alive (spec Part B).
pub const TYPE_HEARTBEAT: &str = "heartbeat";
/// Server answer to a client frame that carried an `id`.
pub const TYPE_ACK: &str = "ack";
/// Server answer to a bad or failed client frame.
pub const TYPE_ERROR: &str = "error";

/// WebSocket close codes used by the server (spec Part B).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer went away (idle timeout on our side).
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame was not valid UTF-8 (RFC 6455 requires failing the connection).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (auth, origin).
    pub const POLICY: u16 = 1008;
    /// A frame exceeded the maximum frame size.
    pub const TOO_LARGE: u16 = 1009;
    /// The server hit an internal error.
    pub const INTERNAL: u16 = 1011;
    /// The node is draining: reconnect, to any node.
    pub const DRAINING: u16 = 1012;
    /// The connection's send queue overflowed: it did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client sent faster than allowed.
    pub const RATE_LIMITED: u16 = 4029;
}

/// Stable error codes carried by `{"type":"error","code":...}` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not JSON.
    BadJson,
    /// The frame is JSON but not an object.
    NotObject,
    /// The object has no string `type`.
    MissingType,
    /// `type` is not one this server handles.
    UnknownType,
    /// `chat_message` without a non-empty string `receiverID`.
    MissingReceiver,
    /// The frame exceeded the maximum frame size.
    TooLarge,
    /// The frame's bytes are not UTF-8.
    InvalidUtf8,
    /// `payload` has the wrong type for this frame type (e.g. latency not a number >= 0).
    BadPayload,
    /// The broker (Redis) is unreachable: delivery to other nodes failed.
    Unavailable,
    /// The node's internal queue towards the broker is full: try again later.
    Overloaded,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::NotObject => "not_object",
            ErrorCode::MissingType => "missing_type",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingReceiver => "missing_receiver",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a client frame was rejected: the code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl FrameError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        FrameError { code, message: message.into() }
    }
}

/// A parsed client frame. Borrowed from the input bytes where possible.
#[derive(Debug, Default)]
pub struct ClientFrame<'a> {
    /// `type`.
    pub kind: Cow<'a, str>,
    /// Optional correlation id, any JSON value, echoed verbatim in `ack`/`error`.
    pub id: Option<&'a RawValue>,
    /// `payload`, raw JSON text.
    pub payload: Option<&'a RawValue>,
    /// `receiverID`, matched case-insensitively.
    pub receiver: Option<Cow<'a, str>>,
}

impl<'de: 'a, 'a> Deserialize<'de> for ClientFrame<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FrameVisitor;
        impl<'de> Visitor<'de> for FrameVisitor {
            type Value = ClientFrame<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut frame = ClientFrame::default();
                let mut has_type = false;
                while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                    match key.as_ref() {
                        "type" => {
                            frame.kind = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0).unwrap_or_default();
                            has_type = true;
                        }
                        "id" => frame.id = Some(map.next_value()?),
                        "payload" => frame.payload = Some(map.next_value()?),
                        k if k.eq_ignore_ascii_case("receiverid") => {
                            frame.receiver = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                if !has_type {
                    frame.kind = Cow::Borrowed("");
                }
                Ok(frame)
            }
        }
        d.deserialize_map(FrameVisitor)
    }
}

/// A string borrowed from the input when it has no escapes, owned otherwise. (serde's own
/// `Cow<str>` impl always allocates.)
struct CowStr<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Parses one client frame. The error says which stable code applies.
pub fn parse_client_frame(bytes: &[u8]) -> Result<ClientFrame<'_>, FrameError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| FrameError::new(ErrorCode::InvalidUtf8, format!("frame is not valid UTF-8: {e}")))?;
    match serde_json::from_str::<ClientFrame<'_>>(text) {
        Ok(frame) if frame.kind.is_empty() => {
            Err(FrameError::new(ErrorCode::MissingType, "frame has no string \"type\""))
        }
        Ok(frame) => Ok(frame),
        Err(e) => {
            if serde_json::from_str::<IgnoredAny>(text).is_ok() {
                if text.trim_start().starts_with('{') {
                    // An object whose known fields have the wrong JSON type.
                    Err(FrameError::new(ErrorCode::BadJson, format!("bad field: {e}")))
                } else {
                    Err(FrameError::new(ErrorCode::NotObject, "frame must be a JSON object"))
                }
            } else {
                Err(FrameError::new(ErrorCode::BadJson, format!("frame is not JSON: {e}")))
            }
        }
    }
}

/// The current time as the spec writes it: RFC 3339, nanoseconds, UTC.
pub fn timestamp_now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

/// Parses an envelope `timestamp` written by [`timestamp_now`] (or by the Go server).
pub fn parse_timestamp(ts: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(ts).ok()
}

/// Turns bytes we wrote as JSON (from `str` pieces and raw JSON that parsed as `str`) into a frame.
fn frame(out: Vec<u8>) -> Frame {
    Frame::try_from(out).expect("JSON written from str pieces is UTF-8")
}

/// Writes `s` as a JSON string literal.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec");
}

/// Builds the envelope delivered to receivers, exactly the original server's shape:
/// `{"type":..,"payload":..,"receiverID":..,"senderId":..,"timestamp":..}`.
pub fn encode_envelope(kind: &str, payload: Option<&RawValue>, receiver: &str, sender: &str, timestamp: &str) -> Frame {
    let payload = payload.map_or("null", RawValue::get);
    let mut out = Vec::with_capacity(80 + kind.len() + payload.len() + receiver.len() + sender.len() + timestamp.len());
    out.extend_from_slice(b"{\"type\":");
    push_json_str(&mut out, kind);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    out.extend_from_slice(b",\"receiverID\":");
    push_json_str(&mut out, receiver);
    out.extend_from_slice(b",\"senderId\":");
    push_json_str(&mut out, sender);
    out.extend_from_slice(b",\"timestamp\":");
    push_json_str(&mut out, timestamp);
    out.push(b'}');
    frame(out)
}

/// `{"type":"ack","id":..}` plus, for chat messages, `"online":bool` (whether any connection of
/// the receiver was found, on any node).
pub fn encode_ack(id: &RawValue, online: Option<bool>) -> Frame {
    let mut out = Vec::with_capacity(40 + id.get().len());
    out.extend_from_slice(b"{\"type\":\"ack\",\"id\":");
    out.extend_from_slice(id.get().as_bytes());
    match online {
        Some(true) => out.extend_from_slice(b",\"online\":true"),
        Some(false) => out.extend_from_slice(b",\"online\":false"),
        None => {}
    }
    out.push(b'}');
    frame(out)
}

/// `{"type":"ack","id":..,"online":bool,"stored":true}` for a chat message: `stored` when the
/// message went into the receiver's history (so `online:false` does not mean lost).
pub fn encode_chat_ack(id: &RawValue, online: bool, stored: bool) -> Frame {
    let ack = encode_ack(id, Some(online));
    if !stored {
        return ack;
    }
    let mut out = Vec::from(&ack.as_bytes()[..ack.len() - 1]);
    out.extend_from_slice(b",\"stored\":true}");
    frame(out)
}

/// Server frame ending a resume's replay (spec Part B, history).
pub const TYPE_RECOVERY: &str = "recovery";

/// `{"type":"recovery","complete":..,"count":N,"epoch":"E","offset":O}` plus `"reason"` when not
/// complete: `offset` and `epoch` are where the client stands after the replay, to resume from
/// next time.
pub fn encode_recovery(complete: bool, count: usize, epoch: &str, offset: u64, reason: Option<&str>) -> Frame {
    let mut out = Vec::with_capacity(96 + epoch.len());
    out.extend_from_slice(b"{\"type\":\"recovery\",\"complete\":");
    out.extend_from_slice(if complete { b"true" } else { b"false" });
    out.extend_from_slice(format!(",\"count\":{count},\"epoch\":").as_bytes());
    push_json_str(&mut out, epoch);
    out.extend_from_slice(format!(",\"offset\":{offset}").as_bytes());
    if let Some(reason) = reason {
        out.extend_from_slice(b",\"reason\":");
        push_json_str(&mut out, reason);
    }
    out.push(b'}');
    frame(out)
}

/// The history offset of an envelope a history node wrote, read cheaply: the last `"offset":`
/// key, which the history script appends at the very end (after any payload).
pub fn envelope_offset(bytes: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b",\"offset\":";
    let at = bytes.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&bytes[at..at + digits]).ok()?.parse().ok()
}

/// The history epoch of an envelope a history node wrote (the last `"epoch":` key, see
/// [`envelope_offset`]).
pub fn envelope_epoch(bytes: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b",\"epoch\":\"";
    let at = bytes.windows(KEY.len()).rposition(|w| w == KEY)? + KEY.len();
    let len = bytes[at..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&bytes[at..at + len]).ok()
}

/// `{"type":"error","id":..,"code":..,"message":..}` (`id` only when the client gave one).
pub fn encode_error(id: Option<&RawValue>, err: &FrameError) -> Frame {
    let mut out = Vec::with_capacity(64 + err.message.len());
    out.extend_from_slice(b"{\"type\":\"error\"");
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.get().as_bytes());
    }
    out.extend_from_slice(b",\"code\":");
    push_json_str(&mut out, err.code.as_str());
    out.extend_from_slice(b",\"message\":");
    push_json_str(&mut out, &err.message);
    out.push(b'}');
    frame(out)
}

/// The fields a node needs from an envelope that arrived from the broker: whom it is for, and
/// when the sending node took it in. Everything else is forwarded untouched.
#[derive(Debug)]
pub struct RoutedEnvelope<'a> {
    pub receiver: Cow<'a, str>,
    pub timestamp: Option<Cow<'a, str>>,
}

/// Reads the receiver (case-insensitive key, as on input) and timestamp of a broker envelope.
pub fn parse_routed(bytes: &[u8]) -> Option<RoutedEnvelope<'_>> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = RoutedEnvelope<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an envelope object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut receiver = None;
            let mut timestamp = None;
            while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                if key.eq_ignore_ascii_case("receiverid") {
                    receiver = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                } else if key == "timestamp" {
                    timestamp = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            let receiver = receiver.ok_or_else(|| de::Error::missing_field("receiverID"))?;
            Ok(RoutedEnvelope { receiver, timestamp })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(V).ok()
}

/// A `latency_report` payload: a finite JSON number >= 0, in milliseconds.
pub fn parse_latency_ms(payload: Option<&RawValue>) -> Result<f64, FrameError> {
    let bad = || FrameError::new(ErrorCode::BadPayload, "latency_report payload must be a number of milliseconds >= 0");
    let raw = payload.ok_or_else(bad)?;
    let v: f64 = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_key_is_case_insensitive() {
        for key in ["receiverID", "receiverId", "RECEIVERID"] {
            let raw = format!(r#"{{"type":"chat_message","{key}":"bob","payload":{{"a":[1,2]}}}}"#);
            let f = parse_client_frame(raw.as_bytes()).unwrap();
            assert_eq!(f.kind, "chat_message");
            assert_eq!(f.receiver.as_deref(), Some("bob"));
            assert_eq!(f.payload.unwrap().get(), r#"{"a":[1,2]}"#);
        }
    }

    #[test]
    fn error_codes_for_bad_input() {
        let code = |b: &[u8]| parse_client_frame(b).unwrap_err().code;
        assert_eq!(code(b"nope"), ErrorCode::BadJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::NotObject);
        assert_eq!(code(b"\"s\""), ErrorCode::NotObject);
        assert_eq!(code(b"{}"), ErrorCode::MissingType);
        assert_eq!(code(b"{\"type\":7}"), ErrorCode::BadJson);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::InvalidUtf8);
    }

    #[test]
    fn envelope_has_the_original_shape_and_escapes() {
        let payload = RawValue::from_string("\"hi \\\"x\\\"\"".into()).unwrap();
        let env = encode_envelope("chat_message", Some(&payload), "b\"ob", "al", "2026-01-02T03:04:05.000000001Z");
        let v: serde_json::Value = serde_json::from_str(&env).unwrap();
        assert_eq!(v["type"], "chat_message");
        assert_eq!(v["payload"], "hi \"x\"");
        assert_eq!(v["receiverID"], "b\"ob");
        assert_eq!(v["senderId"], "al");
        let routed = parse_routed(env.as_bytes()).unwrap();
        assert_eq!(routed.receiver, "b\"ob");
        assert!(parse_timestamp(&routed.timestamp.unwrap()).is_some());
    }

    #[test]
    fn ack_and_error_echo_the_raw_id() {
        let id = RawValue::from_string("{\"n\":1}".into()).unwrap();
        let ack: serde_json::Value = serde_json::from_str(&encode_ack(&id, Some(false))).unwrap();
        assert_eq!(ack, serde_json::json!({"type":"ack","id":{"n":1},"online":false}));
        let err = encode_error(Some(&id), &FrameError::new(ErrorCode::UnknownType, "unknown type \"x\""));
        let err: serde_json::Value = serde_json::from_str(&err).unwrap();
        assert_eq!(err["code"], "unknown_type");
        assert_eq!(err["id"]["n"], 1);
    }

    #[test]
    fn history_fields_read_back() {
        let env = br#"{"type":"chat_message","payload":{"offset":3},"receiverID":"b","offset":17,"epoch":"k3x9"}"#;
        assert_eq!(envelope_offset(env), Some(17));
        assert_eq!(envelope_epoch(env), Some("k3x9"));
        assert_eq!(envelope_offset(br#"{"type":"chat_message"}"#), None);
        let id = RawValue::from_string("1".into()).unwrap();
        let ack: serde_json::Value = serde_json::from_str(&encode_chat_ack(&id, false, true)).unwrap();
        assert_eq!(ack, serde_json::json!({"type":"ack","id":1,"online":false,"stored":true}));
        let r: serde_json::Value = serde_json::from_str(&encode_recovery(false, 2, "e", 9, Some("trimmed"))).unwrap();
        assert_eq!(r, serde_json::json!({"type":"recovery","complete":false,"count":2,"epoch":"e","offset":9,"reason":"trimmed"}));
    }

    #[test]
    fn latency_payload_must_be_a_non_negative_number() {
        let p = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        assert_eq!(parse_latency_ms(Some(&p("12.5"))).unwrap(), 12.5);
        assert!(parse_latency_ms(Some(&p("-1"))).is_err());
        assert!(parse_latency_ms(Some(&p("\"12\""))).is_err());
        assert!(parse_latency_ms(None).is_err());
    }

    #[test]
    fn timestamp_round_trips_with_nanoseconds() {
        let ts = timestamp_now();
        assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
        assert!(parse_timestamp(&ts).is_some());
    }
}
