#![no_main]
//! Upstream conninfo strings, key=value and URI form, with no environment. What parsed must
//! render (redacted, for logs) to a key=value string that parses again to the same settings
//! (the password aside, which the rendering masks), and renders the same way again.
use libfuzzer_sys::fuzz_target;
use walrelay::config::conninfo::ConnInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ci) = ConnInfo::parse_with_env(text, |_| None) else {
        return;
    };
    let shown = ci.redacted();
    let again = match ConnInfo::parse_with_env(&shown, |_| None) {
        Ok(c) => c,
        Err(e) => panic!("{text:?} rendered as {shown:?}, which does not parse: {e}"),
    };
    assert_eq!(again.redacted(), shown, "{text:?}");
    let mut unmasked = again;
    unmasked.password = ci.password.clone();
    assert!(unmasked == ci, "{text:?} -> {shown:?} parsed differently");
});
