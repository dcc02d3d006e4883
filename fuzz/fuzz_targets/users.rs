#![no_main]
//! Auth-file and SCRAM verifier parsing. Plain-text passwords cost a PBKDF2 run each, so
//! inputs to the file parser are kept short. A verifier that parses must survive its own
//! encoding and the auth-file line `walrelay passwd --user` writes for it.
use libfuzzer_sys::fuzz_target;
use walrelay::access::users::{format_entry, Lookup, ScramVerifier, UserList};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = ScramVerifier::parse(text) {
        let encoded = v.encode();
        let again = match ScramVerifier::parse(&encoded) {
            Ok(a) => a,
            Err(_) => panic!("{text:?} encodes as {encoded:?}, which does not parse"),
        };
        assert_eq!(again.encode(), encoded);
        assert_eq!(again.iterations(), v.iterations());
        assert_eq!(again.salt_b64(), v.salt_b64());
        // A name with a quote in it, which the writer doubles.
        let name = "r\"ep";
        let users = match UserList::parse(&format_entry(name, &encoded), "fuzz") {
            Ok(u) => u,
            Err(e) => panic!("the line for {encoded:?} does not parse: {e}"),
        };
        match users.lookup(name) {
            Lookup::Scram(found) => assert_eq!(found.encode(), encoded),
            other => panic!("{encoded:?}: {other:?}"),
        }
    }
    if text.len() <= 256 {
        let _ = UserList::parse(text, "fuzz");
    }
});
