//! Invariants of the two parsers that take bytes from outside: the client-frame parser (what a
//! client sends) and the inbound check (what arrives on this node's Redis channel, published by
//! anyone who can reach Redis). Shared by the `cargo fuzz` targets (fuzz/fuzz_targets/) and the
//! stable-toolchain mutation tests below, which run in `cargo test`. Not part of the API.
//!
//! For any bytes: parsing never panics; a rejection carries one of the parser's documented
//! codes and a message, and its error frame is valid JSON; an accepted frame has a type, and the
//! envelope built from it (what receivers get) is JSON that serde_json parses with its default
//! limits.

use serde::de::IgnoredAny;

use crate::protocol::{self, ErrorCode};

/// Checks every invariant for one input; panics on a violation.
pub fn client_frame(bytes: &[u8]) {
    match protocol::parse_client_frame(bytes) {
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::InvalidUtf8
                        | ErrorCode::TooDeep
                        | ErrorCode::BadJson
                        | ErrorCode::NotObject
                        | ErrorCode::MissingType
                        | ErrorCode::BadField
                ),
                "undocumented parse code {:?} for {:?}",
                e.code,
                String::from_utf8_lossy(bytes)
            );
            assert!(!e.message.is_empty());
            let frame = protocol::encode_error(None, &e);
            serde_json::from_str::<IgnoredAny>(&frame).expect("error frames are JSON");
        }
        Ok(f) => {
            assert!(!f.kind.is_empty(), "accepted without a type");
            let receiver = f.receiver.as_deref().unwrap_or("r");
            if protocol::check_user_id(receiver).is_ok() {
                let env = protocol::encode_envelope(&f.kind, f.payload, receiver, "sender", "2026-01-01T00:00:00Z");
                serde_json::from_str::<IgnoredAny>(&env).expect("envelopes are JSON");
                let routed = protocol::parse_routed(env.as_bytes()).expect("envelopes route");
                assert_eq!(routed.receiver, receiver);
            }
            if let Some(id) = f.id {
                serde_json::from_str::<IgnoredAny>(&protocol::encode_ack(id, None)).expect("acks are JSON");
            }
            let _ = protocol::parse_latency_ms(f.payload);
        }
    }
}

/// Largest envelope the inbound check takes in the fuzz runs: a client's largest frame.
const FUZZ_MAX_ENVELOPE: usize = 64 * 1024;

/// Checks the inbound path (Redis → node) for one message; panics on a violation. For any bytes:
/// the check never panics; what it keeps is the input (or the input after a skip mark of `!` and
/// a UUID) and UTF-8; an envelope's routing fields parse without panicking, and its offset is
/// read only from the top level.
pub fn broker_message(bytes: &[u8]) {
    let Some((except, frame)) = crate::broker::check_inbound(bytes::Bytes::copy_from_slice(bytes), FUZZ_MAX_ENVELOPE) else {
        assert!(bytes.len() > FUZZ_MAX_ENVELOPE || std::str::from_utf8(bytes).is_err(), "dropped a deliverable message");
        return;
    };
    match except {
        Some(conn) => {
            assert_eq!(bytes.first(), Some(&b'!'));
            assert!(bytes[1..37].eq_ignore_ascii_case(conn.hyphenated().to_string().as_bytes()));
            assert_eq!(frame.as_bytes(), &bytes[37..]);
        }
        None => assert_eq!(frame.as_bytes(), bytes),
    }
    if let Some(env) = protocol::parse_routed(frame.as_bytes()) {
        let top: serde_json::Value = serde_json::from_slice(frame.as_bytes()).unwrap_or_default();
        if let Some(offset) = env.offset {
            assert_eq!(top.get("offset").and_then(serde_json::Value::as_u64), Some(offset), "offset not from the top level");
        }
    }
}

/// Seeds for the inbound path: envelopes as nodes publish them, a marked copy, a fence, and the
/// shape that once killed a subscriber (a mark cut inside a multi-byte character).
pub const BROKER_SEEDS: &[&str] = &[
    r#"{"type":"chat_message","payload":{"offset":3},"receiverID":"bob","senderId":"a","timestamp":"2026-01-01T00:00:00.000000000Z","offset":17,"epoch":"k3x9"}"#,
    r#"!0b7c2f9e-5d1a-4c3b-9e8f-7a6b5c4d3e2f{"type":"chat_message","payload":1,"receiverID":"bob"}"#,
    "!aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\u{e9}{\"receiverID\":\"bob\"}",
    r#"{"type":"wsctl_fence","nonce":"x"}"#,
    r#"{"receiverID":7,"offset":"x"}"#,
];

/// Seeds for mutation: one of each shape the parser distinguishes.
pub const SEEDS: &[&str] = &[
    r#"{"type":"chat_message","receiverID":"bob","payload":{"text":"hi","n":[1,2.5e3,null,true]},"id":7}"#,
    r#"{"type":"latency_report","payload":12.5,"id":"x"}"#,
    r#"{"type":"heartbeat"}"#,
    r#"{"type":"chat_message","receiverId":"b\"ob\u00e9","payload":"a\\b\u0000"}"#,
    r#"{"type":7,"receiverID":[1]}"#,
    r#"[[[[{"type":"x"}]]]]"#,
    r#""just a string""#,
];

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Bytes that matter to a JSON parser, inserted more often than random ones.
    const INTERESTING: &[u8] = b"{}[]\":,\\ -+.eE0123456789tfnu\x00\x1f\x7f\xc3\xa9\xff";

    fn mutate(rng: &mut StdRng, input: &mut Vec<u8>) {
        let at = |rng: &mut StdRng, len: usize| if len == 0 { 0 } else { rng.random_range(0..len) };
        match rng.random_range(0..6) {
            0 if !input.is_empty() => {
                let i = at(rng, input.len());
                input[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = at(rng, input.len() + 1);
                let b = if rng.random_bool(0.8) { INTERESTING[rng.random_range(0..INTERESTING.len())] } else { rng.random() };
                input.insert(i.min(input.len()), b);
            }
            2 if !input.is_empty() => {
                let i = at(rng, input.len());
                let n = rng.random_range(1..=8).min(input.len() - i);
                input.drain(i..i + n);
            }
            3 if !input.is_empty() => {
                // Repeat a slice: deep nesting, long strings, duplicate keys.
                let i = at(rng, input.len());
                let n = rng.random_range(1..=16).min(input.len() - i);
                let slice: Vec<u8> = input[i..i + n].to_vec();
                for _ in 0..rng.random_range(1..200) {
                    input.splice(i..i, slice.iter().copied());
                }
            }
            4 => {
                let other = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes();
                let i = at(rng, input.len());
                let j = at(rng, other.len());
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            _ => {
                let i = at(rng, input.len());
                input.truncate(i);
            }
        }
    }

    /// 20,000 mutations of `seeds` through `check`, the same every run (fixed seed): a failure
    /// names its input.
    fn mutated(seeds: &[&str], seed: u64, check: fn(&[u8])) {
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let mut input = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut rng, &mut input);
            }
            let shown = String::from_utf8_lossy(&input).into_owned();
            if std::panic::catch_unwind(|| check(&input)).is_err() {
                panic!("invariant broken by {shown:?}");
            }
        }
    }

    #[test]
    fn mutated_client_frames_keep_the_invariants() {
        mutated(SEEDS, 0x5ec8, client_frame);
    }

    #[test]
    fn mutated_broker_messages_keep_the_invariants() {
        mutated(BROKER_SEEDS, 0xb20c, broker_message);
    }

    /// The message that killed a node's subscriber (`!`, 35 bytes, then a two-byte character
    /// across the cut at byte 37), and every short run of marks.
    #[test]
    fn a_mark_cut_inside_a_character_is_no_mark() {
        assert!(crate::broker::check_inbound(bytes::Bytes::from_static(BROKER_SEEDS[2].as_bytes()), 1024).is_some_and(|(ex, _)| ex.is_none()));
        for len in 0..40 {
            broker_message(&vec![b'!'; len]);
        }
    }

    #[test]
    fn random_bytes_keep_the_invariants() {
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let input: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            client_frame(&input);
            broker_message(&input);
        }
    }

    /// Inputs found while writing these checks, kept as regressions.
    #[test]
    fn regressions() {
        for input in [
            "[".repeat(100_000),
            format!("{{\"type\":\"x\",\"payload\":{}", "{\"a\":".repeat(200)),
            "{\"type\":\"x\",\"id\":1e999999}".into(),
            "{\"type\":\"\\ud800\"}".into(),
            "{\"type\":\"x\",\"receiverID\":\"\\u0000\"}".into(),
        ] {
            client_frame(input.as_bytes());
        }
    }
}
