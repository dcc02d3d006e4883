#![no_main]
//! The SCRAM server exchange: the input is split at the first 0xFF byte into the
//! SASLInitialResponse body and the client-final message; every binding kind is tried.
//! A role that is not in the auth file never authenticates, and nothing is accepted after
//! the client-final message.
use libfuzzer_sys::fuzz_target;
use walrelay::access::scram::{parse_sasl_initial_response, Binding, MockKey, ScramExchange, Step};
use walrelay::access::users::UserList;

const ENTRY: &str = "\"x\" \"SCRAM-SHA-256$4096:f2VAmwAQwsmsN97hhfVeXw==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=\"";

fuzz_target!(|data: &[u8]| {
    let (first, last) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = parse_sasl_initial_response(first);
    let Ok(users) = UserList::parse(ENTRY, "fuzz") else {
        return;
    };
    let mock = MockKey::from_bytes([1; 32]);
    for binding in [
        Binding::Plain,
        Binding::TlsUnbound,
        Binding::Tls(vec![7; 32]),
    ] {
        for user in ["x", "ghost"] {
            if let Ok((mut ex, _)) = ScramExchange::from_initial_response(
                user,
                users.lookup(user),
                &mock,
                binding.clone(),
                first,
            ) {
                let second = ex.step(Some(last));
                // A role the auth file does not have runs the exchange with a mock verifier
                // and must fail whatever the client sends.
                if user == "ghost" {
                    assert!(
                        !matches!(second, Ok(Step::Success(_))),
                        "ghost authenticated"
                    );
                }
                // The exchange is over after the client-final message, however it ended.
                assert!(ex.step(Some(last)).is_err(), "a third step was accepted");
            }
        }
    }
});
