//! Feeds arbitrary bytes to the client-frame parser and checks its invariants
//! (`wsctl::fuzz::client_frame`): no panic, documented codes only, and what is accepted builds an
//! envelope every receiver can parse. Seeds: fuzz/corpus/client_frame/.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wsctl::fuzz::client_frame(data);
});
