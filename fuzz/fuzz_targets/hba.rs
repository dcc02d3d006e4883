#![no_main]
//! `pg_hba.conf` parsing, and a decision for whatever parsed.
use libfuzzer_sys::fuzz_target;
use walrelay::access::hba::{Client, HbaRules};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rules) = HbaRules::parse(text, "fuzz") {
        for (peer, tls) in [
            ("127.0.0.1", false),
            ("::ffff:10.1.2.3", true),
            ("2001:db8::1", false),
        ] {
            let c = Client {
                peer: peer.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                local: std::net::Ipv4Addr::LOCALHOST.into(),
                tls,
                user: "u",
                interfaces: &[],
            };
            let d = rules.decide(&c);
            let _ = d.refusal(&c);
        }
    }
});
