//! What arrives from the server, read with a real JSON parser (serde_json, borrowed fields: no
//! tree, no copy of the frame) so any server of the protocol is understood: any whitespace and
//! key order, escaped strings, extra fields, and numbers written as integers or as integral
//! floats. `wsctl load` is meant to test servers that are not wsctl, and a scan for exact bytes
//! once reported every message of a correct server as lost (issue 12).
//!
//! Numbers: the stamp's fields, ack ids, offsets and counts must be integers. A float with a
//! zero fraction (`7.0`, `7e0`, as Python or a JavaScript server may write them) is read as that
//! integer, because serde_json hands it over as an f64 at no extra cost; `7.5` or `"7"` is not a
//! number of ours and makes the frame unrecognized (counted by reason, never guessed).
//!
//! Measured with `perf record` on a release generator at 40,000 msgs/s (scripts/bench-load-core):
//! `wire::parse` and serde_json together are ~4% of the generator's CPU (about 1 µs a frame),
//! against ~65% spent in the kernel's socket calls. `parse_cost` below times it alone
//! (`cargo test --release --lib load::wire -- --ignored --nocapture`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An integer from the wire: JSON integers, or floats with no fraction (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireInt(pub i128);

/// Largest magnitude accepted from a float: beyond 2^63 an f64 is no longer an exact count.
const MAX_FLOAT_INT: f64 = 9.223_372_036_854_776e18;

impl<'de> Deserialize<'de> for WireInt {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireInt;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireInt, E> {
                Ok(WireInt(i128::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireInt, E> {
                Ok(WireInt(i128::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WireInt, E> {
                if v.is_finite() && v.fract() == 0.0 && v.abs() < MAX_FLOAT_INT {
                    Ok(WireInt(v as i128))
                } else {
                    Err(E::custom(format_args!("{v} is not an integer")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Any frame from the server, with the fields `wsctl load` reads. Unknown fields are skipped.
#[derive(Debug, Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    id: Option<WireInt>,
    #[serde(default)]
    online: Option<bool>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    message: Option<Cow<'a, str>>,
    #[serde(default)]
    offset: Option<WireInt>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    complete: Option<bool>,
    #[serde(default)]
    count: Option<WireInt>,
    /// Room message acks: member connections reached on the node, and other nodes reached.
    #[serde(default)]
    members: Option<WireInt>,
    #[serde(default)]
    nodes: Option<WireInt>,
}

/// Our payload: `[sender_slot, seq, intended_ns, padding...]` (see `schedule::write_stamped`).
/// Elements after the third are skipped whatever they are.
struct RawStamp(WireInt, WireInt, WireInt);

impl<'de> Deserialize<'de> for RawStamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawStamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array [sender_slot, seq, intended_ns, ...]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawStamp, A::Error> {
                let mut next = |i| seq.next_element::<WireInt>()?.ok_or_else(|| de::Error::invalid_length(i, &self));
                let (a, b, c) = (next(0)?, next(1)?, next(2)?);
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawStamp(a, b, c))
            }
        }
        d.deserialize_seq(V)
    }
}

/// Why a frame did not count. Each reason is counted, with the first frame as an example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Unrecognized {
    /// A binary frame that is not UTF-8.
    NotUtf8,
    /// Not a JSON object (or a field of ours has the wrong JSON type).
    NotJson,
    /// A JSON object without a `type`.
    NoType,
    /// A frame that carries a payload, but not a stamp of ours.
    NotOurPayload,
    /// A stamp whose sender is not a connection of this run, or whose sequence that sender
    /// cannot have reached: a hostile or confused server. Skipped by the audit.
    Foreign,
    /// An ack or error whose id we never sent (or already had answered).
    UnknownId,
}

impl Unrecognized {
    pub fn as_str(self) -> &'static str {
        match self {
            Unrecognized::NotUtf8 => "binary, not UTF-8",
            Unrecognized::NotJson => "not a JSON object of the protocol",
            Unrecognized::NoType => "JSON without a \"type\"",
            Unrecognized::NotOurPayload => "payload is not a [sender, seq, time, ...] stamp",
            Unrecognized::Foreign => "stamp from no sender of this run (foreign)",
            Unrecognized::UnknownId => "ack/error for an id we did not send",
        }
    }
}

/// One frame from the server, classified.
#[derive(Debug, PartialEq)]
pub enum Incoming<'a> {
    /// A delivered message with our stamp (raw numbers: the audit bounds them).
    Stamped { kind: Cow<'a, str>, sender_slot: i128, seq: i128, intended_ns: i128, offset: Option<u64>, epoch: Option<Cow<'a, str>> },
    Ack { id: Option<i128>, online: Option<bool> },
    Error { id: Option<i128>, code: Cow<'a, str>, message: Cow<'a, str> },
    Recovery { complete: bool, count: u64 },
    /// A well-formed frame of a type we do not act on (notifications, ...).
    Other { kind: Cow<'a, str> },
    /// Not counted, and why; with the frame's type when it has one.
    Unrecognized(Unrecognized, Option<Cow<'a, str>>),
}

/// Reads one text frame.
pub fn parse(frame: &str) -> Incoming<'_> {
    let Ok(env) = serde_json::from_str::<Envelope<'_>>(frame) else {
        return Incoming::Unrecognized(Unrecognized::NotJson, None);
    };
    let Some(kind) = env.kind else {
        return Incoming::Unrecognized(Unrecognized::NoType, None);
    };
    match kind.as_ref() {
        "ack" => {
            // A room message's ack says whom it reached instead: anyone counts as online.
            let reached = env.members.map(|m| m.0 > 0 || env.nodes.is_some_and(|n| n.0 > 0));
            return Incoming::Ack { id: env.id.map(|i| i.0), online: env.online.or(reached) };
        }
        "error" => {
            return Incoming::Error {
                id: env.id.map(|i| i.0),
                code: env.code.unwrap_or(Cow::Borrowed("unknown")),
                message: env.message.unwrap_or_default(),
            }
        }
        "recovery" => {
            let count = env.count.and_then(|c| u64::try_from(c.0).ok()).unwrap_or(0);
            return Incoming::Recovery { complete: env.complete.unwrap_or(false), count };
        }
        _ => {}
    }
    let Some(payload) = env.payload else {
        return Incoming::Other { kind };
    };
    match serde_json::from_str::<RawStamp>(payload.get()) {
        Ok(RawStamp(a, b, c)) => Incoming::Stamped {
            kind,
            sender_slot: a.0,
            seq: b.0,
            intended_ns: c.0,
            offset: env.offset.and_then(|o| u64::try_from(o.0).ok()),
            epoch: env.epoch,
        },
        Err(_) => Incoming::Unrecognized(Unrecognized::NotOurPayload, Some(kind)),
    }
}

/// Longest example frame kept per reason, in bytes (cut at a character boundary).
pub const MAX_SAMPLE: usize = 200;

/// `frame` cut to [`MAX_SAMPLE`] bytes, with `…` when cut.
pub fn sample(frame: &str) -> String {
    if frame.len() <= MAX_SAMPLE {
        return frame.to_string();
    }
    let mut end = MAX_SAMPLE;
    while !frame.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &frame[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(frame: &str) -> Option<(i128, i128, i128)> {
        match parse(frame) {
            Incoming::Stamped { sender_slot, seq, intended_ns, .. } => Some((sender_slot, seq, intended_ns)),
            _ => None,
        }
    }

    #[test]
    fn reads_our_own_compact_frames() {
        let f = r#"{"type":"chat_message","payload":[7,42,123456789,"xx"],"receiverID":"load-3","senderId":"load-1","timestamp":"t"}"#;
        assert_eq!(stamp(f), Some((7, 42, 123456789)));
    }

    #[test]
    fn reads_python_json_dumps_frames() {
        // python3 -c 'import json; print(json.dumps({"type": "chat_message", "payload": [7, 42, 123456789, "x\u00e9<"],
        //   "receiverID": "load-3", "senderId": "load-1", "timestamp": "2026-01-02T03:04:05Z", "extra": {"a": [1, 2]}}))'
        let f = r#"{"type": "chat_message", "payload": [7, 42, 123456789, "x\u00e9<"], "receiverID": "load-3", "senderId": "load-1", "timestamp": "2026-01-02T03:04:05Z", "extra": {"a": [1, 2]}}"#;
        assert_eq!(stamp(f), Some((7, 42, 123456789)));
        // json.dumps of floats: [7.0, 42.0, 123456789.0, "xx"]; and exponent form.
        let f = r#"{"type": "chat_message", "payload": [7.0, 42.0, 123456789.0, "xx"]}"#;
        assert_eq!(stamp(f), Some((7, 42, 123456789)));
        assert_eq!(stamp(r#"{"type":"chat_message","payload":[7e0,4.2e1,1.23456789E8]}"#), Some((7, 42, 123456789)));
        // Not integers: not ours, never rounded.
        assert_eq!(parse(r#"{"type": "chat_message", "payload": [7.5, 42, 1]}"#), Incoming::Unrecognized(Unrecognized::NotOurPayload, Some("chat_message".into())));
        assert_eq!(parse(r#"{"type": "chat_message", "payload": ["7", 42, 1]}"#), Incoming::Unrecognized(Unrecognized::NotOurPayload, Some("chat_message".into())));
    }

    #[test]
    fn reads_go_encoding_json_frames() {
        // Go: struct order, no spaces, HTML-escaped strings, escaped type name.
        let f = r#"{"type":"chat\u005fmessage","payload":[7,42,123456789,"\u003cb\u003e\u0026"],"receiverID":"load-3","senderId":"load-1","timestamp":"2026-01-02T03:04:05.123456789Z"}"#;
        assert_eq!(stamp(f), Some((7, 42, 123456789)));
        match parse(f) {
            Incoming::Stamped { kind, .. } => assert_eq!(kind, "chat_message"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_pretty_printed_frames_with_keys_in_any_order() {
        let v = serde_json::json!({"timestamp": "t", "senderId": "load-1", "payload": [7, 42, 123456789u64, "xx"], "type": "chat_message", "offset": 9, "epoch": "e1"});
        let f = serde_json::to_string_pretty(&v).unwrap();
        assert!(f.contains("\n  "), "{f}");
        match parse(&f) {
            Incoming::Stamped { sender_slot: 7, seq: 42, intended_ns: 123456789, offset, epoch, .. } => {
                assert_eq!((offset, epoch.as_deref()), (Some(9), Some("e1")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn acks_errors_and_other_frames() {
        assert_eq!(parse(r#"{ "type" : "ack", "id" : 5, "online" : true, "stored": true }"#), Incoming::Ack { id: Some(5), online: Some(true) });
        assert_eq!(parse(r#"{"id":6.0,"type":"ack"}"#), Incoming::Ack { id: Some(6), online: None });
        assert_eq!(parse(r#"{"type":"ack","id":8,"members":0,"nodes":2}"#), Incoming::Ack { id: Some(8), online: Some(true) });
        assert_eq!(parse(r#"{"type":"ack","id":8,"members":0,"nodes":0}"#), Incoming::Ack { id: Some(8), online: Some(false) });
        match parse(r#"{"type":"error","id":7,"code":"unavailable","message":"delivered to 1 connection(s) on this node"}"#) {
            Incoming::Error { id: Some(7), code, message } => assert_eq!((code.as_ref(), message.starts_with("delivered")), ("unavailable", true)),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse(r#"{"type":"recovery","complete":true,"count":3}"#), Incoming::Recovery { complete: true, count: 3 });
        assert!(matches!(parse(r#"{"type":"notification","payload":"hello"}"#), Incoming::Unrecognized(Unrecognized::NotOurPayload, Some(_))));
        assert!(matches!(parse(r#"{"type":"quiz_ready"}"#), Incoming::Other { .. }));
        assert_eq!(parse("not json"), Incoming::Unrecognized(Unrecognized::NotJson, None));
        assert_eq!(parse("[1,2]"), Incoming::Unrecognized(Unrecognized::NotJson, None));
        assert_eq!(parse(r#"{"payload":[1,2,3]}"#), Incoming::Unrecognized(Unrecognized::NoType, None));
    }

    #[test]
    fn samples_are_cut_at_a_character_boundary() {
        let s = "é".repeat(150);
        let cut = sample(&s);
        assert!(cut.len() <= MAX_SAMPLE + "…".len() && cut.ends_with('…'));
    }

    /// Run with `--release -- --ignored --nocapture` to see the cost per frame.
    #[test]
    #[ignore]
    fn parse_cost() {
        let f = r#"{"type":"chat_message","payload":[712,4242,123456789012,"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"],"receiverID":"load-312","senderId":"load-17","timestamp":"2026-01-02T03:04:05.123456789Z"}"#;
        let n = 1_000_000;
        let t = std::time::Instant::now();
        let mut sum = 0i128;
        for _ in 0..n {
            if let Incoming::Stamped { seq, .. } = parse(std::hint::black_box(f)) {
                sum += seq;
            }
        }
        let per = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("parse: {per:.0} ns per frame ({sum})");
    }
}
