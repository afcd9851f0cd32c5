//! The wire protocol (../shared/spec/protocol.md): parsing client frames, writing envelopes,
//! acks and errors, and the close codes. Pure functions over bytes, no I/O.
//!
//! Client frames are parsed without building a `serde_json::Value`: `payload` and `id` stay raw
//! JSON text and are copied into the outgoing envelope untouched, and the `receiverID` key is
//! matched case-insensitively as the original server did.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
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
/// Joins a room (spec Part B, docs/rooms.md).
pub const TYPE_JOIN: &str = "join";
/// Leaves a room.
pub const TYPE_LEAVE: &str = "leave";
/// A message to every member of a room, on every node, the sending connection excluded.
pub const TYPE_ROOM_MESSAGE: &str = "room_message";
/// Server frame announcing a history replay's end (reserved: backends may not publish it).
pub const TYPE_RECOVERY: &str = "recovery";
/// Server answer to a client frame that carried an `id`.
pub const TYPE_ACK: &str = "ack";
/// Server answer to a bad or failed client frame.
pub const TYPE_ERROR: &str = "error";
/// `{"type":"left","room":..,"reason":..}`: the node took this connection out of a room.
pub const TYPE_LEFT: &str = "left";

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
    /// The node may have dropped messages to this connection (its subscriber fell behind Redis):
    /// reconnect and resume (`since`/`epoch`) to get them from history. Sent only with history on.
    pub const RESUME: u16 = 4009;
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
    /// A missing room name, or one too long or with characters outside `[A-Za-z0-9_.:@-]`.
    BadRoom,
    /// A join past the rooms-per-connection cap.
    TooManyRooms,
    /// A join past the connections-per-room cap on this node.
    RoomFull,
    /// A `leave` or `room_message` for a room this connection has not joined.
    NotMember,
    /// A known field (`type`, `receiverID`) has the wrong JSON type.
    BadField,
    /// JSON nested deeper than serde_json's recursion limit (128).
    TooDeep,
    /// `receiverID` over [`MAX_USER_ID`] bytes or with control characters.
    BadReceiver,
    /// The connection sends faster than its rate limit: frames are being dropped.
    RateLimited,
    /// An `idem` key that is empty, too long or has control characters.
    BadIdem,
    /// A join (or a room message) this connection's grants do not allow.
    Forbidden,
    /// The node dropped messages from other nodes (its subscriber fell behind Redis); some may
    /// have been for this connection. Without history there is nothing to resume from.
    MessagesLost,
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
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::NotMember => "not_member",
            ErrorCode::BadField => "bad_field",
            ErrorCode::TooDeep => "too_deep",
            ErrorCode::BadReceiver => "bad_receiver",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MessagesLost => "messages_lost",
            ErrorCode::BadIdem => "bad_idem",
            ErrorCode::Forbidden => "forbidden",
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
    /// `room`, for join, leave and room_message.
    pub room: Option<Cow<'a, str>>,
    /// `idem`: the client's idempotency key for a chat_message (see [`check_idem_key`]).
    pub idem: Option<Cow<'a, str>>,
    /// `token`: a room token on a `join`.
    pub token: Option<Cow<'a, str>>,
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
                        "room" => frame.room = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0),
                        "idem" => frame.idem = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0),
                        "token" => frame.token = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0),
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
    if nesting_exceeds(text.as_bytes(), MAX_JSON_DEPTH) {
        return Err(FrameError::new(ErrorCode::TooDeep, "JSON nested more than 128 levels deep"));
    }
    match serde_json::from_str::<ClientFrame<'_>>(text) {
        Ok(frame) if frame.kind.is_empty() => {
            Err(FrameError::new(ErrorCode::MissingType, "frame has no string \"type\""))
        }
        Ok(frame) => Ok(frame),
        Err(e) => Err(classify_parse_error(text, &e)),
    }
}

/// Deepest JSON nesting accepted in a client frame, payload included: serde_json's own
/// recursion limit, so every receiver that parses envelopes with serde_json's defaults can parse
/// what we deliver.
pub const MAX_JSON_DEPTH: usize = 128;

/// Whether `json` nests arrays/objects deeper than `max`. serde_json enforces its limit only
/// where it recurses: `payload` and ignored fields are skipped without a depth check
/// (RawValue, IgnoredAny), so a 60 KiB `[[[[...` payload would be forwarded to receivers that
/// cannot parse it. One pass over bytes, counting brackets outside strings; it does not validate,
/// serde_json does that next.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Which code a frame that did not parse as a [`ClientFrame`] gets. Only called on the error
/// path: it may parse the text a second time.
fn classify_parse_error(text: &str, e: &serde_json::Error) -> FrameError {
    // serde_json reports its recursion limit (128 levels) as a syntax error; the message is the
    // only way to tell it apart.
    let too_deep = |e: &serde_json::Error| e.to_string().starts_with("recursion limit exceeded");
    if too_deep(e) {
        return FrameError::new(ErrorCode::TooDeep, "JSON nested more than 128 levels deep");
    }
    match serde_json::from_str::<IgnoredAny>(text) {
        Ok(_) if text.trim_start().starts_with('{') => {
            // An object whose known fields have the wrong JSON type.
            FrameError::new(ErrorCode::BadField, format!("bad field: {e}"))
        }
        Ok(_) => FrameError::new(ErrorCode::NotObject, "frame must be a JSON object"),
        Err(e2) if too_deep(&e2) => FrameError::new(ErrorCode::TooDeep, "JSON nested more than 128 levels deep"),
        Err(_) => FrameError::new(ErrorCode::BadJson, format!("frame is not JSON: {e}")),
    }
}

/// Longest user id accepted, in bytes, for `userId`, a token's `sub` and `receiverID`. Ids are
/// Redis key parts (`user_servers:<id>`) refreshed every 30 s and printed by `wsctl routes`;
/// real ids (UUIDs, emails, numeric ids) are far shorter.
pub const MAX_USER_ID: usize = 256;

/// Longest idempotency key (`idem` on a frame, `idempotency_key` on the API), bytes: room for a
/// UUID or a client's counter with a prefix, and one bounded Redis key per message.
pub const MAX_IDEM_KEY: usize = 64;

/// Checks an idempotency key: 1 to [`MAX_IDEM_KEY`] bytes, no control characters.
pub fn check_idem_key(key: &str) -> Result<(), FrameError> {
    if key.is_empty() || key.len() > MAX_IDEM_KEY || key.chars().any(char::is_control) {
        return Err(FrameError::new(ErrorCode::BadIdem, format!("\"idem\" must be 1-{MAX_IDEM_KEY} bytes without control characters")));
    }
    Ok(())
}

/// Why a user id is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserIdError {
    Empty,
    /// Over [`MAX_USER_ID`] bytes.
    TooLong,
    /// Contains a control character (C0, DEL or C1): such ids could rewrite a terminal that
    /// prints the route table, or hide in logs.
    Control,
}

/// Checks a user id (or receiver id) against [`MAX_USER_ID`] and control characters.
pub fn check_user_id(id: &str) -> Result<(), UserIdError> {
    if id.is_empty() {
        Err(UserIdError::Empty)
    } else if id.len() > MAX_USER_ID {
        Err(UserIdError::TooLong)
    } else if id.chars().any(char::is_control) {
        Err(UserIdError::Control)
    } else {
        Ok(())
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

/// A field value for [`write_object`].
#[derive(Clone, Copy)]
enum Json<'a> {
    /// Text, written as a JSON string literal (quoted and escaped).
    Str(&'a str),
    /// Already JSON (a client's `id` or `payload`, `true`, `null`): written as it is.
    Raw(&'a str),
    /// A number, written in decimal.
    Uint(u64),
    /// An optional field not given: the key is left out.
    Absent,
}

/// Room for a few escaped characters (`"` becomes `\"`, a control character `\u00XX`) before a
/// frame's buffer has to grow; frames' strings are ids and timestamps, which rarely need any.
const ESCAPE_SLACK: usize = 16;
/// Most decimal digits of a `u64`.
const UINT_DIGITS: usize = 20;

impl Json<'_> {
    /// Bytes the value takes, escapes aside (at most, for a number).
    fn room(self) -> usize {
        match self {
            Json::Str(s) => s.len() + 2,
            Json::Raw(s) => s.len(),
            Json::Uint(_) => UINT_DIGITS,
            Json::Absent => 0,
        }
    }

    fn write_to(self, out: &mut Vec<u8>) {
        match self {
            // serde_json escapes exactly as JSON requires; writing into a Vec cannot fail.
            Json::Str(s) => serde_json::to_writer(&mut *out, s).expect("writing to a Vec"),
            Json::Raw(s) => out.extend_from_slice(s.as_bytes()),
            Json::Uint(n) => write!(out, "{n}").expect("writing to a Vec"),
            Json::Absent => {}
        }
    }
}

/// Writes the JSON object `{"key":value,..}` of `fields` in order, skipping [`Json::Absent`], in
/// one buffer sized up front. Keys are this file's constants and need no escaping.
fn write_object(fields: &[(&'static str, Json<'_>)]) -> Frame {
    let present = || fields.iter().filter(|(_, v)| !matches!(v, Json::Absent));
    // Per field `{"key":` or `,"key":` and the value; then the closing brace.
    let size: usize = present().map(|(k, v)| k.len() + 4 + v.room()).sum::<usize>() + 1;
    let mut out = Vec::with_capacity(size + ESCAPE_SLACK);
    out.push(b'{');
    for (i, (key, value)) in present().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        value.write_to(&mut out);
    }
    out.push(b'}');
    Frame::try_from(out).expect("JSON written from str pieces is UTF-8")
}

/// `true` or `false`, as raw JSON.
fn bool_json(b: bool) -> Json<'static> {
    Json::Raw(if b { "true" } else { "false" })
}

/// Builds the envelope delivered to receivers, exactly the original server's shape:
/// `{"type":..,"payload":..,"receiverID":..,"senderId":..,"timestamp":..}`.
pub fn encode_envelope(kind: &str, payload: Option<&RawValue>, receiver: &str, sender: &str, timestamp: &str) -> Frame {
    write_object(&[
        ("type", Json::Str(kind)),
        ("payload", Json::Raw(payload.map_or("null", RawValue::get))),
        ("receiverID", Json::Str(receiver)),
        ("senderId", Json::Str(sender)),
        ("timestamp", Json::Str(timestamp)),
    ])
}

/// The envelope delivered to room members:
/// `{"type":..,"room":..,"payload":..,"senderId":..,"timestamp":..}`.
pub fn encode_room_envelope(kind: &str, room: &str, payload: Option<&RawValue>, sender: &str, timestamp: &str) -> Frame {
    write_object(&[
        ("type", Json::Str(kind)),
        ("room", Json::Str(room)),
        ("payload", Json::Raw(payload.map_or("null", RawValue::get))),
        ("senderId", Json::Str(sender)),
        ("timestamp", Json::Str(timestamp)),
    ])
}

/// `{"type":"ack","id":..,"members":M,"nodes":N}` for a room message: `members` connections
/// reached on this node, `nodes` other nodes subscribed to the room (docs/rooms.md); plus
/// `"duplicate":true` for a retry of an idempotency key, which went nowhere.
pub fn encode_room_ack(id: &RawValue, members: usize, nodes: u32, duplicate: bool) -> Frame {
    write_object(&[
        ("type", Json::Str(TYPE_ACK)),
        ("id", Json::Raw(id.get())),
        ("members", Json::Uint(members as u64)),
        ("nodes", Json::Uint(u64::from(nodes))),
        ("duplicate", if duplicate { bool_json(true) } else { Json::Absent }),
    ])
}

/// `{"type":"ack","id":..}` plus, for chat messages, `"online":bool` (whether any connection of
/// the receiver was found, on any node).
pub fn encode_ack(id: &RawValue, online: Option<bool>) -> Frame {
    write_object(&[("type", Json::Str(TYPE_ACK)), ("id", Json::Raw(id.get())), ("online", online.map_or(Json::Absent, bool_json))])
}

/// `{"type":"ack","id":..,"online":bool,"stored":true,"duplicate":true}` for a chat message:
/// `stored` when the message went into the receiver's history (so `online:false` does not mean
/// lost); `duplicate` when its idempotency key was seen within the window, so this copy was not
/// delivered (`online` and `stored` are then the first copy's, as far as known).
pub fn encode_chat_ack(id: &RawValue, online: bool, stored: bool, duplicate: bool) -> Frame {
    write_object(&[
        ("type", Json::Str(TYPE_ACK)),
        ("id", Json::Raw(id.get())),
        ("online", bool_json(online)),
        ("stored", if stored { bool_json(true) } else { Json::Absent }),
        ("duplicate", if duplicate { bool_json(true) } else { Json::Absent }),
    ])
}

/// `{"type":"recovery","complete":..,"count":N,"epoch":"E","offset":O}` plus `"reason"` when not
/// complete: `offset` and `epoch` are where the client stands after the replay, to resume from
/// next time.
pub fn encode_recovery(complete: bool, count: usize, epoch: &str, offset: u64, reason: Option<&str>) -> Frame {
    write_object(&[
        ("type", Json::Str(TYPE_RECOVERY)),
        ("complete", bool_json(complete)),
        ("count", Json::Uint(count as u64)),
        ("epoch", Json::Str(epoch)),
        ("offset", Json::Uint(offset)),
        ("reason", reason.map_or(Json::Absent, Json::Str)),
    ])
}

/// `{"type":"error","id":..,"code":..,"message":..}` (`id` only when the client gave one).
pub fn encode_error(id: Option<&RawValue>, err: &FrameError) -> Frame {
    write_object(&[
        ("type", Json::Str(TYPE_ERROR)),
        ("id", id.map_or(Json::Absent, |id| Json::Raw(id.get()))),
        ("code", Json::Str(err.code.as_str())),
        ("message", Json::Str(&err.message)),
    ])
}

/// `{"type":"error","id":..,"code":..,"message":..,"room":..}`: a refused room frame.
pub fn encode_room_error(id: Option<&RawValue>, room: &str, err: &FrameError) -> Frame {
    write_object(&[
        ("type", Json::Str(TYPE_ERROR)),
        ("id", id.map_or(Json::Absent, |id| Json::Raw(id.get()))),
        ("code", Json::Str(err.code.as_str())),
        ("message", Json::Str(&err.message)),
        ("room", Json::Str(room)),
    ])
}

/// `{"type":"left","room":..,"reason":..}`: the node removed the connection from `room`.
pub fn encode_left(room: &str, reason: &str) -> Frame {
    write_object(&[("type", Json::Str(TYPE_LEFT)), ("room", Json::Str(room)), ("reason", Json::Str(reason))])
}

/// The fields a node needs from an envelope that arrived from the broker: whom it is for, when
/// the sending node took it in, and (history on) its offset and epoch. Top-level keys only, read
/// by the JSON parser: a payload or id that holds an `"offset"` is never taken for one.
/// Everything else is forwarded untouched.
#[derive(Debug)]
pub struct RoutedEnvelope<'a> {
    pub receiver: Cow<'a, str>,
    pub timestamp: Option<Cow<'a, str>>,
    /// The receiver's history offset, when the history script numbered the envelope.
    pub offset: Option<u64>,
    /// The history's epoch, beside the offset.
    pub epoch: Option<Cow<'a, str>>,
}

/// Reads the receiver (case-insensitive key, as on input), timestamp, offset and epoch of a
/// broker envelope.
pub fn parse_routed(bytes: &[u8]) -> Option<RoutedEnvelope<'_>> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = RoutedEnvelope<'de>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an envelope object")
        }
        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let (mut receiver, mut timestamp, mut offset, mut epoch) = (None, None, None, None);
            while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
                if key.eq_ignore_ascii_case("receiverid") {
                    receiver = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                } else if key == "timestamp" {
                    timestamp = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                } else if key == "offset" {
                    // Not a u64 (a foreign publisher's value): no offset, not a broken envelope.
                    offset = map.next_value::<serde_json::Value>()?.as_u64();
                } else if key == "epoch" {
                    epoch = map.next_value::<Option<CowStr<'de>>>()?.map(|v| v.0);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            let receiver = receiver.ok_or_else(|| de::Error::missing_field("receiverID"))?;
            Ok(RoutedEnvelope { receiver, timestamp, offset, epoch })
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    // Whole input: an envelope followed by anything else is not JSON a client can parse.
    de.deserialize_map(V).ok().filter(|_| de.end().is_ok())
}

/// Largest `latency_report` accepted, milliseconds: one hour. A client's clock or bug can report
/// anything; without a bound one report of 1e300 saturates the fleet's average.
pub const MAX_LATENCY_MS: f64 = 3_600_000.0;

/// A `latency_report` payload: a finite JSON number in 0..=[`MAX_LATENCY_MS`], in milliseconds.
pub fn parse_latency_ms(payload: Option<&RawValue>) -> Result<f64, FrameError> {
    let bad = || FrameError::new(ErrorCode::BadPayload, "latency_report payload must be a number of milliseconds, 0 to 3600000");
    let raw = payload.ok_or_else(bad)?;
    let v: f64 = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    if v.is_finite() && (0.0..=MAX_LATENCY_MS).contains(&v) {
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
        assert_eq!(code(b"{\"type\":7}"), ErrorCode::BadField);
        assert_eq!(code(b"{\"type\":\"chat_message\",\"receiverID\":[1]}"), ErrorCode::BadField);
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(code(deep.as_bytes()), ErrorCode::TooDeep);
        let ok = format!("{{\"type\":\"x\",\"payload\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        assert_eq!(parse_client_frame(ok.as_bytes()).unwrap().kind, "x");
        let in_string = format!("{{\"type\":\"x\",\"payload\":\"{}\\\"{}\"}}", "[".repeat(300), "{".repeat(300));
        assert_eq!(parse_client_frame(in_string.as_bytes()).unwrap().kind, "x");
        let deep_payload = format!("{{\"type\":\"x\",\"payload\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(code(deep_payload.as_bytes()), ErrorCode::TooDeep);
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

    /// The exact bytes of every encoder, escapes, optional fields and number edges included:
    /// clients and the Go server's tests compare frames as text.
    #[test]
    fn encoders_write_exactly_these_bytes() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let (payload, id, obj_id) = (raw(r#"{"a":[1,"x\n"]}"#), raw("7"), raw(r#"{"n":"q"}"#));
        let ts = "2026-01-02T03:04:05.000000001Z";
        let cases: [(Frame, &str); 15] = [
            (
                encode_envelope("chat_message", Some(&payload), "b\"ob", "al\u{1}é", ts),
                r#"{"type":"chat_message","payload":{"a":[1,"x\n"]},"receiverID":"b\"ob","senderId":"al\u0001é","timestamp":"2026-01-02T03:04:05.000000001Z"}"#,
            ),
            (encode_envelope("chat_message", None, "", "a", ""), r#"{"type":"chat_message","payload":null,"receiverID":"","senderId":"a","timestamp":""}"#),
            (
                encode_room_envelope("room_message", "lo\\bby", Some(&payload), "al", ts),
                r#"{"type":"room_message","room":"lo\\bby","payload":{"a":[1,"x\n"]},"senderId":"al","timestamp":"2026-01-02T03:04:05.000000001Z"}"#,
            ),
            (encode_room_envelope("room_message", "r", None, "a", "t"), r#"{"type":"room_message","room":"r","payload":null,"senderId":"a","timestamp":"t"}"#),
            (encode_room_ack(&id, 3, 0, false), r#"{"type":"ack","id":7,"members":3,"nodes":0}"#),
            (encode_room_ack(&obj_id, usize::MAX, u32::MAX, false), r#"{"type":"ack","id":{"n":"q"},"members":18446744073709551615,"nodes":4294967295}"#),
            (encode_ack(&id, None), r#"{"type":"ack","id":7}"#),
            (encode_ack(&obj_id, Some(true)), r#"{"type":"ack","id":{"n":"q"},"online":true}"#),
            (encode_chat_ack(&id, false, false, false), r#"{"type":"ack","id":7,"online":false}"#),
            (encode_chat_ack(&id, true, true, false), r#"{"type":"ack","id":7,"online":true,"stored":true}"#),
            (encode_chat_ack(&id, true, false, true), r#"{"type":"ack","id":7,"online":true,"duplicate":true}"#),
            (encode_recovery(true, 0, "", 0, None), r#"{"type":"recovery","complete":true,"count":0,"epoch":"","offset":0}"#),
            (
                encode_recovery(false, 12, "k\"3", u64::MAX, Some("too_far_behind")),
                r#"{"type":"recovery","complete":false,"count":12,"epoch":"k\"3","offset":18446744073709551615,"reason":"too_far_behind"}"#,
            ),
            (
                encode_error(None, &FrameError::new(ErrorCode::UnknownType, "unknown type \"x\"\t")),
                r#"{"type":"error","code":"unknown_type","message":"unknown type \"x\"\t"}"#,
            ),
            (encode_error(Some(&obj_id), &FrameError::new(ErrorCode::BadJson, "")), r#"{"type":"error","id":{"n":"q"},"code":"bad_json","message":""}"#),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_str(), want);
        }
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
        let routed = parse_routed(env).unwrap();
        assert_eq!((routed.offset, routed.epoch.as_deref()), (Some(17), Some("k3x9")));
        // Only top-level keys count: a payload's "offset" is the payload's.
        let env = br#"{"type":"chat_message","payload":{"a":1,"offset":3,"epoch":"x"},"receiverID":"b"}"#;
        let routed = parse_routed(env).unwrap();
        assert_eq!((routed.offset, routed.epoch), (None, None));
        let id = RawValue::from_string("1".into()).unwrap();
        let ack: serde_json::Value = serde_json::from_str(&encode_chat_ack(&id, false, true, false)).unwrap();
        assert_eq!(ack, serde_json::json!({"type":"ack","id":1,"online":false,"stored":true}));
        let r: serde_json::Value = serde_json::from_str(&encode_recovery(false, 2, "e", 9, Some("trimmed"))).unwrap();
        assert_eq!(r, serde_json::json!({"type":"recovery","complete":false,"count":2,"epoch":"e","offset":9,"reason":"trimmed"}));
    }

    #[test]
    fn latency_payload_must_be_a_non_negative_number() {
        let p = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        assert_eq!(parse_latency_ms(Some(&p("12.5"))).unwrap(), 12.5);
        assert!(parse_latency_ms(Some(&p("-1"))).is_err());
        assert!(parse_latency_ms(Some(&p("1e300"))).is_err());
        assert!(parse_latency_ms(Some(&p("1e400"))).is_err());
        assert!(parse_latency_ms(Some(&p("3600001"))).is_err());
        assert_eq!(parse_latency_ms(Some(&p("3600000"))).unwrap(), 3_600_000.0);
        assert!(parse_latency_ms(Some(&p("\"12\""))).is_err());
        assert!(parse_latency_ms(None).is_err());
    }

    #[test]
    fn user_ids_are_bounded_and_printable() {
        assert_eq!(check_user_id("alice@example.com"), Ok(()));
        assert_eq!(check_user_id(&"x".repeat(MAX_USER_ID)), Ok(()));
        assert_eq!(check_user_id(&"x".repeat(MAX_USER_ID + 1)), Err(UserIdError::TooLong));
        assert_eq!(check_user_id(""), Err(UserIdError::Empty));
        for bad in ["a\nb", "\u{1b}[2J", "x\u{7f}", "x\u{85}", "\0"] {
            assert_eq!(check_user_id(bad), Err(UserIdError::Control), "{bad:?}");
        }
        assert_eq!(check_user_id("ünï cødé 用户"), Ok(()));
    }

    #[test]
    fn timestamp_round_trips_with_nanoseconds() {
        let ts = timestamp_now();
        assert!(ts.ends_with('Z') && ts.len() == 30, "{ts}");
        assert!(parse_timestamp(&ts).is_some());
    }
}
