//! Feeds arbitrary bytes to the inbound check of a node's Redis channel (anyone who can reach
//! Redis can PUBLISH there) and checks its invariants (`wsctl::fuzz::broker_message`): no panic,
//! a skip mark is taken only when it is one, and offsets come from the top level only.
//! Seeds: fuzz/corpus/broker_message/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsctl::fuzz::broker_message(data);
});
