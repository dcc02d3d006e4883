#![no_main]
//! Auth-file and SCRAM verifier parsing. Plain-text passwords cost a PBKDF2 run each, so
//! inputs are kept short.
use libfuzzer_sys::fuzz_target;
use walrelay::access::users::{ScramVerifier, UserList};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = ScramVerifier::parse(text);
    if text.len() <= 256 {
        let _ = UserList::parse(text, "fuzz");
    }
});
