//! Invariants of the client-frame parser, shared by the `cargo fuzz` target
//! (fuzz/fuzz_targets/client_frame.rs) and the stable-toolchain mutation test below, which runs
//! in `cargo test`. Not part of the API.
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

    /// 20,000 mutated frames, the same every run (fixed seed): a failure names its input.
    #[test]
    fn mutated_client_frames_keep_the_invariants() {
        let mut rng = StdRng::seed_from_u64(0x5ec8);
        for _ in 0..20_000 {
            let mut input = SEEDS[rng.random_range(0..SEEDS.len())].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut rng, &mut input);
            }
            let shown = String::from_utf8_lossy(&input).into_owned();
            if std::panic::catch_unwind(|| client_frame(&input)).is_err() {
                panic!("invariant broken by {shown:?}");
            }
        }
    }

    #[test]
    fn random_bytes_keep_the_invariants() {
        let mut rng = StdRng::seed_from_u64(8);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let input: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            client_frame(&input);
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
