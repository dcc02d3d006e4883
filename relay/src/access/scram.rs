//! The server side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (`tls-server-end-point` channel
//! binding, RFC 5929) as a sans-IO state machine: a port of PostgreSQL's `auth-scram.c`
//! (`scram_init`, `scram_exchange`, `read_client_first_message`,
//! `read_client_final_message`, `verify_final_nonce`, `verify_client_proof`) with its error
//! texts, and of the message handling of `auth-sasl.c` (`CheckSASLAuth`).
//!
//! The caller's part of the exchange, as PostgreSQL runs it:
//! 1. `AuthenticationSASL` with [`mechanisms`] (PLUS first, and only when the connection is
//!    TLS and the certificate's end-point hash is known);
//! 2. the client's SASLInitialResponse body goes to [`ScramExchange::from_initial_response`],
//!    which returns the exchange and its first [`Step`];
//! 3. each later SASLResponse body goes to [`ScramExchange::step`];
//! 4. [`Step::Continue`] is sent as `AuthenticationSASLContinue`, [`Step::Success`] as
//!    `AuthenticationSASLFinal` followed by `AuthenticationOk`;
//! 5. any [`ScramFailure`] ends the connection with its FATAL error; its `log_detail` goes to
//!    the server log only (never to the client).
//!
//! A user with no usable verifier (unknown, MD5 hash, no password) goes through the same
//! exchange with a mock salt derived from the user name and a [`MockKey`], as PostgreSQL's
//! `mock_scram_secret`/`scram_mock_salt`, and fails exactly as a wrong password does: FATAL
//! 28P01 `password authentication failed for user "…"`. The proof is computed and compared
//! (in constant time) in both cases.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::users::{
    hmac, sha256, Lookup, B64_LENIENT, DEFAULT_ITERATIONS, DEFAULT_SALT_LEN, KEY_LEN,
};
use crate::proto::error::{sqlstate, PgError};

pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// `PG_MAX_SASL_MESSAGE_LENGTH`: the longest SASL message the server reads.
pub const MAX_SASL_MESSAGE_LENGTH: usize = 1024;
/// `SCRAM_RAW_NONCE_LEN`.
const RAW_NONCE_LEN: usize = 18;
const CBIND_HEADER: &[u8] = b"p=tls-server-end-point,,";

/// What the transport offers for channel binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// No TLS.
    Plain,
    /// TLS, but the certificate's signature algorithm gives no end-point hash (Ed25519,
    /// RSA-PSS, …): PLUS is not offered, and a client's `y` flag is accepted.
    TlsUnbound,
    /// TLS, with the `tls-server-end-point` hash of the relay's certificate.
    Tls(Vec<u8>),
}

/// The mechanisms to advertise, in PostgreSQL's order (`scram_get_mechanisms`): the
/// channel-binding variant first, and only when it can be used.
pub fn mechanisms(binding: &Binding) -> &'static [&'static str] {
    match binding {
        Binding::Tls(_) => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        Binding::Plain | Binding::TlsUnbound => &[SCRAM_SHA_256],
    }
}

/// The secret behind mock salts (PostgreSQL's cluster-wide `mock_authentication_nonce`).
/// Keep one per process at least; persisting it (for example in the relay's state) keeps an
/// unknown user's salt stable across restarts too, as PostgreSQL's is. `Debug` hides it.
#[derive(Clone)]
pub struct MockKey([u8; 32]);

impl MockKey {
    pub fn random() -> MockKey {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        MockKey(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> MockKey {
        MockKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `scram_mock_salt`: SHA-256 of the user name and the key, cut to the salt length.
    fn salt(&self, user: &str) -> Vec<u8> {
        let digest = sha256(&[user.as_bytes(), &self.0].concat());
        digest.get(..DEFAULT_SALT_LEN).unwrap_or(&digest).to_vec()
    }
}

impl fmt::Debug for MockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MockKey(..)")
    }
}

/// An exchange that ended the connection: the FATAL error for the client, and what only the
/// server log should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramFailure {
    pub error: PgError,
    pub log_detail: Option<String>,
}

impl From<PgError> for ScramFailure {
    fn from(error: PgError) -> Self {
        ScramFailure {
            error,
            log_detail: None,
        }
    }
}

impl fmt::Display for ScramFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(d) = &self.log_detail {
            write!(f, " (log detail: {d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScramFailure {}

/// What to send next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `AuthenticationSASLContinue` with this payload.
    Continue(Vec<u8>),
    /// `AuthenticationSASLFinal` with this payload (the server signature), then
    /// `AuthenticationOk`.
    Success(Vec<u8>),
}

fn fatal(code: &'static str, message: &str) -> ScramFailure {
    PgError::fatal(code, message).into()
}

fn malformed(detail: String) -> ScramFailure {
    PgError::fatal(sqlstate::PROTOCOL_VIOLATION, "malformed SCRAM message")
        .with_detail(detail)
        .into()
}

/// PostgreSQL's `sanitize_char`.
fn sanitize_char(c: u8) -> String {
    if (0x21..=0x7E).contains(&c) {
        format!("'{}'", c as char)
    } else {
        format!("0x{c:02x}")
    }
}

/// PostgreSQL's `sanitize_str`: at most 30 characters, non-printables as `?`.
fn sanitize_str(s: &[u8]) -> String {
    s.iter()
        .take(30)
        .map(|&c| {
            if (0x21..=0x7E).contains(&c) {
                c as char
            } else {
                '?'
            }
        })
        .collect()
}

/// RFC 5802 `printable`: `%x21-2B / %x2D-7E`.
fn is_scram_printable(s: &[u8]) -> bool {
    s.iter().all(|&c| (0x21..=0x7E).contains(&c) && c != b',')
}

/// A read position in a NUL-free message; past the end reads as 0, like C's terminator.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> u8 {
        self.buf.get(self.pos).copied().unwrap_or(0)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// The value up to the next comma (consumed) or the end.
    fn value(&mut self) -> &'a [u8] {
        let rest = self.rest();
        match rest.iter().position(|&c| c == b',') {
            Some(i) => {
                self.pos += i + 1;
                rest.get(..i).unwrap_or(&[])
            }
            None => {
                self.pos += rest.len();
                rest
            }
        }
    }

    /// `read_attr_value`.
    fn attr_value(&mut self, attr: u8) -> Result<&'a [u8], ScramFailure> {
        let c = self.peek();
        if c != attr {
            return Err(malformed(format!(
                "Expected attribute \"{}\" but found \"{}\".",
                attr as char,
                sanitize_char(c)
            )));
        }
        self.pos += 1;
        self.equals_after(attr)?;
        Ok(self.value())
    }

    /// The `=` after attribute `attr` (both `read_attr_value` and `read_any_attr` check it).
    fn equals_after(&mut self, attr: u8) -> Result<(), ScramFailure> {
        if self.peek() != b'=' {
            return Err(malformed(format!(
                "Expected character \"=\" for attribute \"{}\".",
                attr as char
            )));
        }
        self.pos += 1;
        Ok(())
    }

    /// `read_any_attr`.
    fn any_attr(&mut self) -> Result<(u8, &'a [u8]), ScramFailure> {
        let attr = self.peek();
        if attr == 0 {
            return Err(malformed(
                "Attribute expected, but found end of string.".into(),
            ));
        }
        if !attr.is_ascii_alphabetic() {
            return Err(malformed(format!(
                "Attribute expected, but found invalid character \"{}\".",
                sanitize_char(attr)
            )));
        }
        self.pos += 1;
        self.equals_after(attr)?;
        Ok((attr, self.value()))
    }
}

enum State {
    Init,
    SaltSent {
        cbind_flag: u8,
        client_first_bare: Vec<u8>,
        client_nonce: Vec<u8>,
        server_nonce: Vec<u8>,
        server_first: Vec<u8>,
    },
    Finished,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Init => "init",
            State::SaltSent { .. } => "salt sent",
            State::Finished => "finished",
            State::Failed => "failed",
        }
    }
}

/// One server-side SCRAM exchange. `Debug` shows the user and the state only.
pub struct ScramExchange {
    user: String,
    iterations: u32,
    salt_b64: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
    /// Mock authentication: bound to fail at the proof.
    doomed: bool,
    log_detail: Option<String>,
    binding: Binding,
    channel_binding_in_use: bool,
    state: State,
}

impl fmt::Debug for ScramExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramExchange")
            .field("user", &self.user)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

/// `expected SASL response, got message type %d`: a message other than `p` during the
/// exchange (`CheckSASLAuth`).
pub fn unexpected_message(tag: u8) -> PgError {
    PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("expected SASL response, got message type {tag}"),
    )
}

/// SASLInitialResponse body: the selected mechanism, and the initial response (`None` when
/// the client sent length -1). Errors as PostgreSQL's `pq_getmsg*` functions word them.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&[u8], Option<&[u8]>), PgError> {
    let proto = |m: &str| PgError::fatal(sqlstate::PROTOCOL_VIOLATION, m);
    let nul = body
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| proto("invalid string in message"))?;
    let mech = body.get(..nul).unwrap_or(&[]);
    let rest = body.get(nul + 1..).unwrap_or(&[]);
    let (len, rest) = match rest {
        [a, b, c, d, rest @ ..] => (i32::from_be_bytes([*a, *b, *c, *d]), rest),
        _ => return Err(proto("insufficient data left in message")),
    };
    let (input, rest) = if len == -1 {
        (None, rest)
    } else {
        let n = usize::try_from(len).map_err(|_| proto("insufficient data left in message"))?;
        let input = rest
            .get(..n)
            .ok_or_else(|| proto("insufficient data left in message"))?;
        (Some(input), rest.get(n..).unwrap_or(&[]))
    };
    if !rest.is_empty() {
        return Err(proto("invalid message format"));
    }
    Ok((mech, input))
}

impl ScramExchange {
    /// Starts an exchange for `user` (the StartupMessage user) with the mechanism the client
    /// selected (`scram_init`). `lookup` comes from [`super::users::UserList::lookup`].
    pub fn new(
        user: &str,
        lookup: Lookup<'_>,
        mock: &MockKey,
        binding: Binding,
        mechanism: &[u8],
    ) -> Result<ScramExchange, ScramFailure> {
        let channel_binding_in_use =
            if mechanism == SCRAM_SHA_256_PLUS.as_bytes() && matches!(binding, Binding::Tls(_)) {
                true
            } else if mechanism == SCRAM_SHA_256.as_bytes() {
                false
            } else {
                return Err(fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "client selected an invalid SASL authentication mechanism",
                ));
            };
        let log_detail = lookup.log_detail(user);
        let (iterations, salt_b64, stored_key, server_key, doomed) = match lookup {
            Lookup::Scram(v) => (
                v.iterations(),
                v.salt_b64().to_string(),
                *v.stored_key(),
                *v.server_key(),
                false,
            ),
            Lookup::Unusable { .. } => (
                DEFAULT_ITERATIONS,
                STANDARD.encode(mock.salt(user)),
                [0; KEY_LEN],
                [0; KEY_LEN],
                true,
            ),
        };
        Ok(ScramExchange {
            user: user.to_string(),
            iterations,
            salt_b64,
            stored_key,
            server_key,
            doomed,
            log_detail,
            binding,
            channel_binding_in_use,
            state: State::Init,
        })
    }

    /// Parses a SASLInitialResponse body, starts the exchange and runs its first step.
    pub fn from_initial_response(
        user: &str,
        lookup: Lookup<'_>,
        mock: &MockKey,
        binding: Binding,
        body: &[u8],
    ) -> Result<(ScramExchange, Step), ScramFailure> {
        let (mechanism, input) = parse_sasl_initial_response(body)?;
        let mut ex = ScramExchange::new(user, lookup, mock, binding, mechanism)?;
        let step = ex.step(input)?;
        Ok((ex, step))
    }

    /// True once a channel-bound (PLUS) exchange succeeded.
    pub fn channel_bound(&self) -> bool {
        self.channel_binding_in_use && matches!(self.state, State::Finished)
    }

    /// Feeds the next client message (`scram_exchange`). `None` only for an absent initial
    /// response, which is answered with an empty challenge.
    pub fn step(&mut self, input: Option<&[u8]>) -> Result<Step, ScramFailure> {
        let result = self.step_inner(input);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn step_inner(&mut self, input: Option<&[u8]>) -> Result<Step, ScramFailure> {
        let Some(input) = input else {
            if matches!(self.state, State::Init) {
                return Ok(Step::Continue(Vec::new()));
            }
            return Err(malformed("The message is empty.".into()));
        };
        if input.len() > MAX_SASL_MESSAGE_LENGTH {
            // pq_getmessage refuses it, and the exchange ends as a failed authentication.
            return Err(self.password_failed(Some("invalid message length".into())));
        }
        if input.is_empty() {
            return Err(malformed("The message is empty.".into()));
        }
        if input.contains(&0) {
            return Err(malformed(
                "Message length does not match input length.".into(),
            ));
        }
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Init => {
                let (cbind_flag, client_first_bare, client_nonce) =
                    self.read_client_first(input)?;
                let mut raw = [0u8; RAW_NONCE_LEN];
                // Fuzz builds (`--cfg fuzzing`, scripts/fuzz) keep the nonce fixed, so that a
                // fuzzer can echo it in a client-final message and reach the checks after the
                // nonce's, and a crash replays; every other build draws it.
                if !cfg!(fuzzing) {
                    rand::fill(&mut raw);
                }
                let server_nonce = STANDARD.encode(raw).into_bytes();
                let mut server_first = b"r=".to_vec();
                server_first.extend_from_slice(&client_nonce);
                server_first.extend_from_slice(&server_nonce);
                server_first.extend_from_slice(
                    format!(",s={},i={}", self.salt_b64, self.iterations).as_bytes(),
                );
                let out = server_first.clone();
                self.state = State::SaltSent {
                    cbind_flag,
                    client_first_bare,
                    client_nonce,
                    server_nonce,
                    server_first,
                };
                Ok(Step::Continue(out))
            }
            State::SaltSent {
                cbind_flag,
                client_first_bare,
                client_nonce,
                server_nonce,
                server_first,
            } => {
                let fin = self.read_client_final(input, cbind_flag)?;
                // verify_final_nonce
                let expected = [client_nonce.as_slice(), server_nonce.as_slice()].concat();
                let nonce_ok = fin.nonce.len() == expected.len()
                    && bool::from(fin.nonce.ct_eq(expected.as_slice()));
                if !nonce_ok {
                    return Err(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "invalid SCRAM response",
                    )
                    .with_detail("Nonce does not match.")
                    .into());
                }
                let auth_message: &[&[u8]] = &[
                    &client_first_bare,
                    b",",
                    &server_first,
                    b",",
                    fin.without_proof,
                ];
                // verify_client_proof, computed even when doomed (timing).
                let signature = hmac(&self.stored_key, auth_message);
                let mut client_key = [0u8; KEY_LEN];
                for (k, (p, s)) in client_key
                    .iter_mut()
                    .zip(fin.proof.iter().zip(signature.iter()))
                {
                    *k = p ^ s;
                }
                let proof_ok = bool::from(sha256(&client_key).ct_eq(&self.stored_key));
                if !proof_ok || self.doomed {
                    return Err(self.password_failed(self.log_detail.clone()));
                }
                let server_signature = hmac(&self.server_key, auth_message);
                self.state = State::Finished;
                Ok(Step::Success(
                    format!("v={}", STANDARD.encode(server_signature)).into_bytes(),
                ))
            }
            State::Finished | State::Failed => Err(fatal(
                sqlstate::INTERNAL_ERROR,
                "invalid SCRAM exchange state",
            )),
        }
    }

    fn password_failed(&self, log_detail: Option<String>) -> ScramFailure {
        ScramFailure {
            error: PgError::fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{}\"", self.user),
            ),
            log_detail,
        }
    }

    /// `read_client_first_message`: the gs2 flag, client-first-message-bare and the nonce.
    fn read_client_first(&self, input: &[u8]) -> Result<(u8, Vec<u8>, Vec<u8>), ScramFailure> {
        let mut c = Cursor { buf: input, pos: 0 };
        let flag = c.peek();
        let no_cbind_data = || {
            malformed("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.".into())
        };
        let expect_comma = |c: &mut Cursor<'_>| {
            if c.peek() != b',' {
                return Err(malformed(format!(
                    "Comma expected, but found character \"{}\".",
                    sanitize_char(c.peek())
                )));
            }
            c.pos += 1;
            Ok(())
        };
        match flag {
            b'n' => {
                if self.channel_binding_in_use {
                    return Err(no_cbind_data());
                }
                c.pos += 1;
                expect_comma(&mut c)?;
            }
            b'y' => {
                if self.channel_binding_in_use {
                    return Err(no_cbind_data());
                }
                if matches!(self.binding, Binding::Tls(_)) {
                    return Err(PgError::fatal(
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        "SCRAM channel binding negotiation error",
                    )
                    .with_detail(
                        "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.",
                    )
                    .into());
                }
                c.pos += 1;
                expect_comma(&mut c)?;
            }
            b'p' => {
                if !self.channel_binding_in_use {
                    return Err(malformed("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.".into()));
                }
                let cb_type = c.attr_value(b'p')?;
                if cb_type != b"tls-server-end-point" {
                    return Err(fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!(
                            "unsupported SCRAM channel-binding type \"{}\"",
                            sanitize_str(cb_type)
                        ),
                    ));
                }
            }
            other => {
                return Err(malformed(format!(
                    "Unexpected channel-binding flag \"{}\".",
                    sanitize_char(other)
                )))
            }
        }
        if c.peek() == b'a' {
            return Err(fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "client uses authorization identity, but it is not supported",
            ));
        }
        if c.peek() != b',' {
            return Err(malformed(format!(
                "Unexpected attribute \"{}\" in client-first-message.",
                sanitize_char(c.peek())
            )));
        }
        c.pos += 1;
        let bare = c.rest().to_vec();
        if c.peek() == b'm' {
            return Err(fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "client requires an unsupported SCRAM extension",
            ));
        }
        // The user name in the message is ignored: the StartupMessage's is used.
        c.attr_value(b'n')?;
        let nonce = c.attr_value(b'r')?;
        if !is_scram_printable(nonce) {
            return Err(fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "non-printable characters in SCRAM nonce",
            ));
        }
        while c.peek() != 0 {
            c.any_attr()?;
        }
        Ok((flag, bare, nonce.to_vec()))
    }

    /// `read_client_final_message`.
    fn read_client_final<'a>(
        &self,
        input: &'a [u8],
        cbind_flag: u8,
    ) -> Result<ClientFinal<'a>, ScramFailure> {
        let mut c = Cursor { buf: input, pos: 0 };
        let channel_binding = c.attr_value(b'c')?;
        match &self.binding {
            Binding::Tls(hash) if self.channel_binding_in_use => {
                let expected = STANDARD.encode([CBIND_HEADER, hash.as_slice()].concat());
                if channel_binding != expected.as_bytes() {
                    return Err(fatal(
                        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                        "SCRAM channel binding check failed",
                    ));
                }
            }
            _ => {
                let ok = (channel_binding == b"biws" && cbind_flag == b'n')
                    || (channel_binding == b"eSws" && cbind_flag == b'y');
                if !ok {
                    return Err(fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected SCRAM channel-binding attribute in client-final-message",
                    ));
                }
            }
        }
        let nonce = c.attr_value(b'r')?;
        // Skip extensions up to the proof; the message without it ends before its comma.
        let (proof_start, value) = loop {
            let start = c.pos.saturating_sub(1);
            let (attr, value) = c.any_attr()?;
            if attr == b'p' {
                break (start, value);
            }
        };
        let proof: [u8; KEY_LEN] = B64_LENIENT
            .decode(value)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| malformed("Malformed proof in client-final-message.".into()))?;
        if c.peek() != 0 {
            return Err(malformed(
                "Garbage found at the end of client-final-message.".into(),
            ));
        }
        Ok(ClientFinal {
            nonce,
            proof,
            without_proof: input.get(..proof_start).unwrap_or(&[]),
        })
    }
}

struct ClientFinal<'a> {
    nonce: &'a [u8],
    proof: [u8; KEY_LEN],
    without_proof: &'a [u8],
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::*;
    use crate::access::users::{format_entry, ScramVerifier, UserList};

    /// `CREATE ROLE x PASSWORD 'p'` on PostgreSQL 15 (see users.rs).
    const PG15_X_P: &str = "SCRAM-SHA-256$4096:f2VAmwAQwsmsN97hhfVeXw==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=";

    fn users() -> UserList {
        UserList::parse(&format_entry("x", PG15_X_P), "users.txt").unwrap()
    }

    fn initial(mech: &str, data: &[u8]) -> Vec<u8> {
        let mut b = mech.as_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&(data.len() as i32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    /// Runs a whole exchange with postgres-protocol's client.
    fn run(
        list: &UserList,
        user: &str,
        password: &str,
        binding: Binding,
        mech: &str,
        cb: ChannelBinding,
    ) -> Result<(), ScramFailure> {
        let mock = MockKey::from_bytes([7; 32]);
        let mut client = ScramSha256::new(password.as_bytes(), cb);
        let (mut ex, step) = ScramExchange::from_initial_response(
            user,
            list.lookup(user),
            &mock,
            binding,
            &initial(mech, client.message()),
        )?;
        let Step::Continue(server_first) = step else {
            panic!("expected continue")
        };
        client.update(&server_first).unwrap();
        let Step::Success(server_final) = ex.step(Some(client.message()))? else {
            panic!("expected success")
        };
        client
            .finish(&server_final)
            .expect("server signature verifies");
        Ok(())
    }

    #[test]
    fn plain_scram_with_postgres_verifier() {
        run(
            &users(),
            "x",
            "p",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap();
        // A verifier made here works the same way.
        let v = ScramVerifier::generate(b"s3cret").unwrap();
        let list = UserList::parse(&format_entry("gen", &v.encode()), "f").unwrap();
        run(
            &list,
            "gen",
            "s3cret",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap();
    }

    #[test]
    fn channel_binding_plus() {
        let hash = vec![0xAB; 32];
        run(
            &users(),
            "x",
            "p",
            Binding::Tls(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(hash.clone()),
        )
        .unwrap();
        // The client binds to another certificate: refused.
        let e = run(
            &users(),
            "x",
            "p",
            Binding::Tls(hash.clone()),
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(vec![0xCD; 32]),
        )
        .unwrap_err();
        assert_eq!(e.error.code, "28000");
        assert_eq!(e.error.message, "SCRAM channel binding check failed");
        // 'n' over TLS (client without binding support) is accepted.
        run(
            &users(),
            "x",
            "p",
            Binding::Tls(hash.clone()),
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap();
        // 'y' (client thinks the server cannot bind) when it can: downgrade refused.
        let e = run(
            &users(),
            "x",
            "p",
            Binding::Tls(hash),
            SCRAM_SHA_256,
            ChannelBinding::unrequested(),
        )
        .unwrap_err();
        assert_eq!(e.error.code, "28000");
        assert_eq!(e.error.message, "SCRAM channel binding negotiation error");
        assert_eq!(
            e.error.detail.as_deref(),
            Some("The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.")
        );
        // 'y' where the server really cannot bind: fine.
        run(
            &users(),
            "x",
            "p",
            Binding::TlsUnbound,
            SCRAM_SHA_256,
            ChannelBinding::unrequested(),
        )
        .unwrap();
        // PLUS when it was not offered.
        for b in [Binding::Plain, Binding::TlsUnbound] {
            let e = run(
                &users(),
                "x",
                "p",
                b,
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(vec![1]),
            )
            .unwrap_err();
            assert_eq!(
                e.error.message,
                "client selected an invalid SASL authentication mechanism"
            );
            assert_eq!(e.error.code, "08P01");
        }
    }

    #[test]
    fn mechanisms_advertised() {
        assert_eq!(mechanisms(&Binding::Plain), &["SCRAM-SHA-256"]);
        assert_eq!(mechanisms(&Binding::TlsUnbound), &["SCRAM-SHA-256"]);
        assert_eq!(
            mechanisms(&Binding::Tls(vec![1])),
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
    }

    #[test]
    fn wrong_password_and_unknown_user_look_the_same() {
        let list = UserList::parse(
            &format!(
                "{}\n\"old\" \"md50123456789abcdef0123456789abcdef\"\n",
                format_entry("x", PG15_X_P)
            ),
            "f",
        )
        .unwrap();
        let wrong = run(
            &list,
            "x",
            "q",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap_err();
        assert_eq!(wrong.error.code, "28P01");
        assert_eq!(
            wrong.error.message,
            "password authentication failed for user \"x\""
        );
        assert_eq!(wrong.error.severity, crate::proto::error::Severity::Fatal);
        assert_eq!(wrong.log_detail, None);
        let ghost = run(
            &list,
            "ghost",
            "p",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap_err();
        assert_eq!(
            ghost.error.message,
            "password authentication failed for user \"ghost\""
        );
        assert_eq!(ghost.error.code, wrong.error.code);
        assert_eq!(ghost.error.detail, None);
        assert_eq!(
            ghost.log_detail.as_deref(),
            Some("Role \"ghost\" does not exist.")
        );
        let old = run(
            &list,
            "old",
            "p",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap_err();
        assert_eq!(
            old.log_detail.as_deref(),
            Some("User \"old\" does not have a valid SCRAM secret.")
        );
        // Even the right proof for a mock salt fails: a doomed exchange never succeeds.
        let e = run(
            &UserList::empty(),
            "x",
            "p",
            Binding::Plain,
            SCRAM_SHA_256,
            ChannelBinding::unsupported(),
        )
        .unwrap_err();
        assert_eq!(e.error.code, "28P01");
    }

    fn server_first_for(list: &UserList, user: &str, mock: &MockKey) -> String {
        let (_, step) = ScramExchange::from_initial_response(
            user,
            list.lookup(user),
            mock,
            Binding::Plain,
            &initial(SCRAM_SHA_256, b"n,,n=,r=abc"),
        )
        .unwrap();
        let Step::Continue(sf) = step else { panic!() };
        String::from_utf8(sf).unwrap()
    }

    #[test]
    fn mock_salts_are_stable_per_user_and_look_real() {
        let mock = MockKey::from_bytes([9; 32]);
        let list = users();
        let real = server_first_for(&list, "x", &mock);
        assert!(real.starts_with("r=abc"), "{real}");
        assert!(
            real.ends_with(",s=f2VAmwAQwsmsN97hhfVeXw==,i=4096"),
            "{real}"
        );
        let salt_of = |s: &str| s.split(",s=").nth(1).unwrap().to_string();
        let a1 = server_first_for(&list, "ghost", &mock);
        let a2 = server_first_for(&list, "ghost", &mock);
        let b = server_first_for(&list, "ghost2", &mock);
        assert_eq!(salt_of(&a1), salt_of(&a2));
        assert_ne!(salt_of(&a1), salt_of(&b));
        assert!(a1.ends_with(",i=4096"));
        assert_eq!(
            STANDARD
                .decode(salt_of(&a1).trim_end_matches(",i=4096"))
                .unwrap()
                .len(),
            16
        );
        // Server nonce: 18 random bytes, base64 (24 characters), fresh each time.
        let nonce = |s: &str| {
            s.split(',')
                .next()
                .unwrap()
                .trim_start_matches("r=abc")
                .to_string()
        };
        assert_eq!(nonce(&a1).len(), 24);
        assert_ne!(nonce(&a1), nonce(&a2));
        assert_eq!(format!("{mock:?}"), "MockKey(..)");
    }

    #[test]
    fn absent_initial_response_gets_an_empty_challenge() {
        let mock = MockKey::random();
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let list = users();
        let (mut ex, step) = ScramExchange::from_initial_response(
            "x",
            list.lookup("x"),
            &mock,
            Binding::Plain,
            &body,
        )
        .unwrap();
        assert_eq!(step, Step::Continue(Vec::new()));
        let mut client = ScramSha256::new(b"p", ChannelBinding::unsupported());
        let Step::Continue(sf) = ex.step(Some(client.message())).unwrap() else {
            panic!()
        };
        client.update(&sf).unwrap();
        let Step::Success(fin) = ex.step(Some(client.message())).unwrap() else {
            panic!()
        };
        client.finish(&fin).unwrap();
        assert!(!ex.channel_bound());
        // Nothing more is expected.
        let e = ex.step(Some(b"x")).unwrap_err();
        assert_eq!(
            (e.error.code, e.error.message.as_str()),
            ("XX000", "invalid SCRAM exchange state")
        );
    }

    #[test]
    fn initial_response_framing_errors() {
        let msg = |b: &[u8]| parse_sasl_initial_response(b).unwrap_err().message;
        assert_eq!(msg(b"SCRAM-SHA-256"), "invalid string in message");
        assert_eq!(
            msg(b"SCRAM-SHA-256\0\0\0"),
            "insufficient data left in message"
        );
        assert_eq!(
            msg(b"SCRAM-SHA-256\0\0\0\0\x05abc"),
            "insufficient data left in message"
        );
        assert_eq!(
            msg(b"SCRAM-SHA-256\0\xff\xff\xff\xfeabc"),
            "insufficient data left in message"
        );
        assert_eq!(
            msg(b"SCRAM-SHA-256\0\0\0\0\x01abc"),
            "invalid message format"
        );
        assert_eq!(
            parse_sasl_initial_response(b"M\0\0\0\0\x02ab").unwrap(),
            (&b"M"[..], Some(&b"ab"[..]))
        );
        let e = ScramExchange::from_initial_response(
            "x",
            users().lookup("x"),
            &MockKey::random(),
            Binding::Plain,
            &initial("SCRAM-SHA-1", b"n,,n=,r=a"),
        )
        .unwrap_err();
        assert_eq!(
            e.error.message,
            "client selected an invalid SASL authentication mechanism"
        );
        assert_eq!(
            unexpected_message(b'Q').message,
            "expected SASL response, got message type 81"
        );
    }

    fn first_error(binding: Binding, mech: &str, data: &[u8]) -> PgError {
        ScramExchange::from_initial_response(
            "x",
            users().lookup("x"),
            &MockKey::random(),
            binding,
            &initial(mech, data),
        )
        .unwrap_err()
        .error
    }

    #[test]
    fn client_first_errors_in_postgres_words() {
        let cases: &[(&[u8], &str, &str, Option<&str>)] = &[
            (b"", "08P01", "malformed SCRAM message", Some("The message is empty.")),
            (b"n,,n=,r=a\0b", "08P01", "malformed SCRAM message", Some("Message length does not match input length.")),
            (b"q,,n=,r=a", "08P01", "malformed SCRAM message", Some("Unexpected channel-binding flag \"'q'\".")),
            (b"\x01,,n=,r=a", "08P01", "malformed SCRAM message", Some("Unexpected channel-binding flag \"0x01\".")),
            (b"nx,n=,r=a", "08P01", "malformed SCRAM message", Some("Comma expected, but found character \"'x'\".")),
            (b"n", "08P01", "malformed SCRAM message", Some("Comma expected, but found character \"0x00\".")),
            (b"p=tls-server-end-point,,n=,r=a", "08P01", "malformed SCRAM message", Some("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")),
            (b"n,a=bob,n=,r=a", "0A000", "client uses authorization identity, but it is not supported", None),
            (b"n,x,n=,r=a", "08P01", "malformed SCRAM message", Some("Unexpected attribute \"'x'\" in client-first-message.")),
            (b"n,,m=ext,n=,r=a", "0A000", "client requires an unsupported SCRAM extension", None),
            (b"n,,r=a", "08P01", "malformed SCRAM message", Some("Expected attribute \"n\" but found \"'r'\".")),
            (b"n,,n", "08P01", "malformed SCRAM message", Some("Expected character \"=\" for attribute \"n\".")),
            (b"n,,n=", "08P01", "malformed SCRAM message", Some("Expected attribute \"r\" but found \"0x00\".")),
            (b"n,,n=,r=a\x7fb", "08P01", "non-printable characters in SCRAM nonce", None),
            (b"n,,n=,r=a,1=x", "08P01", "malformed SCRAM message", Some("Attribute expected, but found invalid character \"'1'\".")),
            (b"n,,n=,r=a,x", "08P01", "malformed SCRAM message", Some("Expected character \"=\" for attribute \"x\".")),
        ];
        for (data, code, message, detail) in cases {
            let e = first_error(Binding::Plain, SCRAM_SHA_256, data);
            assert_eq!(
                (e.code, e.message.as_str(), e.detail.as_deref()),
                (*code, *message, *detail),
                "{:?}",
                String::from_utf8_lossy(data)
            );
            assert_eq!(e.severity, crate::proto::error::Severity::Fatal);
        }
        let tls = Binding::Tls(vec![1; 32]);
        let e = first_error(tls.clone(), SCRAM_SHA_256_PLUS, b"n,,n=,r=a");
        assert_eq!(e.detail.as_deref(), Some("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data."));
        let e = first_error(tls.clone(), SCRAM_SHA_256_PLUS, b"y,,n=,r=a");
        assert_eq!(e.detail.as_deref(), Some("The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data."));
        let e = first_error(tls, SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=a");
        assert_eq!(
            e.message,
            "unsupported SCRAM channel-binding type \"tls-unique\""
        );
        // Extensions after the nonce are ignored, and so is a trailing comma (as in C, the
        // loop over extensions stops at the end of the string).
        for ok in [&b"n,,n=ignored,r=abc,x=1,y=2"[..], b"n,,n=,r=a,"] {
            let (_, s) = ScramExchange::from_initial_response(
                "x",
                users().lookup("x"),
                &MockKey::random(),
                Binding::Plain,
                &initial(SCRAM_SHA_256, ok),
            )
            .unwrap();
            assert!(matches!(s, Step::Continue(_)));
        }
        let (_, s) = ScramExchange::from_initial_response(
            "x",
            users().lookup("x"),
            &MockKey::random(),
            Binding::Plain,
            &initial(SCRAM_SHA_256, b"n,,n=ignored,r=abc,x=1,y=2"),
        )
        .unwrap();
        assert!(matches!(s, Step::Continue(_)));
    }

    /// Starts an exchange and returns it with the server nonce part of `r=`.
    fn started(binding: Binding, mech: &str, first: &[u8]) -> (ScramExchange, String) {
        let list = users();
        let (ex, s) = ScramExchange::from_initial_response(
            "x",
            list.lookup("x"),
            &MockKey::random(),
            binding,
            &initial(mech, first),
        )
        .unwrap();
        let Step::Continue(sf) = s else { panic!() };
        let sf = String::from_utf8(sf).unwrap();
        let nonce = sf
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("r=abc")
            .to_string();
        (ex, nonce)
    }

    #[test]
    fn client_final_errors_in_postgres_words() {
        let proof = STANDARD.encode([0u8; 32]);
        let cases: Vec<(String, &str, &str, Option<&str>)> = vec![
            (
                "x=biws".into(),
                "08P01",
                "malformed SCRAM message",
                Some("Expected attribute \"c\" but found \"'x'\"."),
            ),
            (
                "c=eSws,r=NONCE,p=P".into(),
                "08P01",
                "unexpected SCRAM channel-binding attribute in client-final-message",
                None,
            ),
            (
                "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws,r=NONCE,p=P".into(),
                "08P01",
                "unexpected SCRAM channel-binding attribute in client-final-message",
                None,
            ),
            (
                "c=biws,r=NONCE".into(),
                "08P01",
                "malformed SCRAM message",
                Some("Attribute expected, but found end of string."),
            ),
            (
                "c=biws,r=NONCE,p=AAAA".into(),
                "08P01",
                "malformed SCRAM message",
                Some("Malformed proof in client-final-message."),
            ),
            (
                "c=biws,r=NONCE,p=!!!!".into(),
                "08P01",
                "malformed SCRAM message",
                Some("Malformed proof in client-final-message."),
            ),
            (
                "c=biws,r=NONCE,p=P,z=1".into(),
                "08P01",
                "malformed SCRAM message",
                Some("Garbage found at the end of client-final-message."),
            ),
            (
                "c=biws,r=WRONG,p=P".into(),
                "08P01",
                "invalid SCRAM response",
                Some("Nonce does not match."),
            ),
            (
                "c=biws,r=NONCEx,p=P".into(),
                "08P01",
                "invalid SCRAM response",
                Some("Nonce does not match."),
            ),
            // A well-formed message with a wrong proof, after an ignored extension.
            (
                "c=biws,r=NONCE,e=ext,p=P".into(),
                "28P01",
                "password authentication failed for user \"x\"",
                None,
            ),
        ];
        for (tmpl, code, message, detail) in cases {
            let (mut ex, nonce) = started(Binding::Plain, SCRAM_SHA_256, b"n,,n=,r=abc");
            let msg = tmpl
                .replace("NONCE", &format!("abc{nonce}"))
                .replace("WRONG", "abcdef")
                .replace("=P", &format!("={proof}"));
            let e = ex.step(Some(msg.as_bytes())).unwrap_err().error;
            assert_eq!(
                (e.code, e.message.as_str(), e.detail.as_deref()),
                (code, message, detail),
                "{msg}"
            );
        }
        let (mut ex, _) = started(Binding::Plain, SCRAM_SHA_256, b"n,,n=,r=abc");
        let e = ex
            .step(Some(&vec![b'c'; MAX_SASL_MESSAGE_LENGTH + 1]))
            .unwrap_err();
        assert_eq!(e.error.code, "28P01");
        assert_eq!(e.log_detail.as_deref(), Some("invalid message length"));
        let (mut ex, _) = started(Binding::Plain, SCRAM_SHA_256, b"n,,n=,r=abc");
        assert_eq!(
            ex.step(None).unwrap_err().error.detail.as_deref(),
            Some("The message is empty.")
        );
        let e = ex.step(Some(b"c=biws")).unwrap_err().error;
        assert_eq!(
            e.message, "invalid SCRAM exchange state",
            "no second chance after an error"
        );
    }

    #[test]
    fn debug_output_hides_keys() {
        let list = users();
        let ex = ScramExchange::new(
            "x",
            list.lookup("x"),
            &MockKey::random(),
            Binding::Plain,
            SCRAM_SHA_256.as_bytes(),
        )
        .unwrap();
        assert_eq!(
            format!("{ex:?}"),
            "ScramExchange { user: \"x\", state: \"init\", .. }"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let inputs: &[&[u8]] = &[
            b"",
            b",",
            b"p",
            b"p=",
            b"n,,n=,r=",
            b"y,",
            b"n,,",
            b"\xff\xfe",
            b"c=",
            b"c=biws,r=",
            b"c=biws,r=,p=",
            b"=,=,=",
        ];
        for binding in [
            Binding::Plain,
            Binding::TlsUnbound,
            Binding::Tls(vec![2; 48]),
        ] {
            for mech in [SCRAM_SHA_256, SCRAM_SHA_256_PLUS] {
                for a in inputs {
                    let list = users();
                    if let Ok((mut ex, _)) = ScramExchange::from_initial_response(
                        "x",
                        list.lookup("x"),
                        &MockKey::random(),
                        binding.clone(),
                        &initial(mech, a),
                    ) {
                        for b in inputs {
                            let _ = ex.step(Some(b));
                        }
                    }
                    let _ = parse_sasl_initial_response(a);
                }
            }
        }
    }
}
