//! The authentication exchange of the startup phase, as libpq's `fe-auth.c` runs it: trust,
//! cleartext password, MD5, SCRAM-SHA-256 and (over TLS) SCRAM-SHA-256-PLUS with
//! `tls-server-end-point` channel binding.
//!
//! SCRAM mechanism choice (libpq, `channel_binding=prefer` by default):
//! * TLS, server offers PLUS, binding data computable → `SCRAM-SHA-256-PLUS` (`p=` header);
//! * TLS, server offers PLUS, certificate signature algorithm has no single digest (so neither
//!   side can bind) → `SCRAM-SHA-256` with `n` ("client does not support binding"), which the
//!   server accepts; sending `y` there would trip its downgrade protection;
//! * TLS, server does not offer PLUS → `SCRAM-SHA-256` with `y`;
//! * no TLS → `SCRAM-SHA-256` with `n`.
//!
//! `channel_binding=require` refuses anything but a completed PLUS exchange, and refuses to
//! send a password by any other method first. The password is fetched (conninfo, then
//! `.pgpass`) only when the server asks for one.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::error::UpstreamError;
use super::message::{decode, AuthRequest, BackendMessage};
use crate::config::conninfo::{ChannelBindingMode, ConnInfo, HostPort};
use crate::config::pgpass;
use crate::wire::Framed;

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// What the transport offers for channel binding.
pub(crate) enum Binding {
    /// Plaintext connection.
    NoTls,
    /// TLS; `Some(hash)` when the server certificate's end-point hash could be computed.
    Tls(Option<Vec<u8>>),
}

fn auth_err(msg: impl Into<String>) -> UpstreamError {
    UpstreamError::Auth(msg.into())
}

fn io_to_protocol(e: std::io::Error) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

async fn next_auth(wire: &mut Framed) -> Result<AuthRequest, UpstreamError> {
    loop {
        match decode(wire.recv().await.map_err(UpstreamError::recv)?)? {
            BackendMessage::Auth(a) => return Ok(a),
            BackendMessage::Error(e) => return Err(UpstreamError::Server(e)),
            BackendMessage::Notice(_) | BackendMessage::NegotiateProtocol => continue,
            other => {
                return Err(UpstreamError::Protocol(format!(
                    "expected authentication request from server, but received {other:?}"
                )))
            }
        }
    }
}

/// Runs the exchange up to and including AuthenticationOk.
pub(crate) async fn authenticate(
    wire: &mut Framed,
    ci: &ConnInfo,
    host: &HostPort,
    binding: Binding,
) -> Result<(), UpstreamError> {
    let require_binding = ci.channel_binding == ChannelBindingMode::Require;
    let password = || -> Result<String, UpstreamError> {
        ci.password
            .clone()
            .or_else(|| pgpass::password_for(ci, host))
            .ok_or_else(|| auth_err("fe_sendauth: no password supplied"))
    };
    let refuse_unbound = || {
        auth_err("channel binding required but not supported by server's authentication request")
    };
    match next_auth(wire).await? {
        AuthRequest::Ok => {
            if require_binding {
                return Err(auth_err(
                    "channel binding required, but server authenticated client without channel binding",
                ));
            }
            Ok(())
        }
        AuthRequest::Cleartext => {
            if require_binding {
                return Err(refuse_unbound());
            }
            frontend::password_message(password()?.as_bytes(), wire.out())
                .map_err(io_to_protocol)?;
            wire.flush().await.map_err(UpstreamError::send)?;
            expect_ok(wire).await
        }
        AuthRequest::Md5 { salt } => {
            if require_binding {
                return Err(refuse_unbound());
            }
            let hash = md5_hash(ci.user.as_bytes(), password()?.as_bytes(), salt);
            frontend::password_message(hash.as_bytes(), wire.out()).map_err(io_to_protocol)?;
            wire.flush().await.map_err(UpstreamError::send)?;
            expect_ok(wire).await
        }
        AuthRequest::Sasl(mechanisms) => scram(wire, ci, &mechanisms, binding, password()?).await,
        AuthRequest::Other(code) => Err(auth_err(format!(
            "authentication method {code} not supported"
        ))),
        AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_) => Err(UpstreamError::Protocol(
            "SASL message before AuthenticationSASL".into(),
        )),
    }
}

async fn expect_ok(wire: &mut Framed) -> Result<(), UpstreamError> {
    match next_auth(wire).await? {
        AuthRequest::Ok => Ok(()),
        other => Err(UpstreamError::Protocol(format!(
            "unexpected authentication request {other:?}"
        ))),
    }
}

async fn scram(
    wire: &mut Framed,
    ci: &ConnInfo,
    mechanisms: &[String],
    binding: Binding,
    password: String,
) -> Result<(), UpstreamError> {
    let offers = |m: &str| mechanisms.iter().any(|x| x == m);
    let use_binding = ci.channel_binding != ChannelBindingMode::Disable;
    let (mechanism, cb) = match binding {
        Binding::NoTls if offers(SCRAM_PLUS) => {
            return Err(UpstreamError::Protocol(
                "server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection".into(),
            ));
        }
        Binding::Tls(Some(hash)) if offers(SCRAM_PLUS) && use_binding => {
            (SCRAM_PLUS, ChannelBinding::tls_server_end_point(hash))
        }
        Binding::Tls(None) if offers(SCRAM_PLUS) && use_binding => {
            (SCRAM, ChannelBinding::unsupported())
        }
        Binding::Tls(_) if use_binding => (SCRAM, ChannelBinding::unrequested()),
        _ => (SCRAM, ChannelBinding::unsupported()),
    };
    if ci.channel_binding == ChannelBindingMode::Require && mechanism != SCRAM_PLUS {
        return Err(auth_err(
            "channel binding is required, but server did not offer an authentication method that supports channel binding",
        ));
    }
    if !offers(mechanism) {
        return Err(auth_err(format!(
            "none of the server's SASL authentication mechanisms are supported (offered: {})",
            mechanisms.join(", ")
        )));
    }

    let mut client = ScramSha256::new(password.as_bytes(), cb);
    frontend::sasl_initial_response(mechanism, client.message(), wire.out())
        .map_err(io_to_protocol)?;
    wire.flush().await.map_err(UpstreamError::send)?;

    let AuthRequest::SaslContinue(server_first) = next_auth(wire).await? else {
        return Err(UpstreamError::Protocol(
            "expected AuthenticationSASLContinue".into(),
        ));
    };
    client
        .update(&server_first)
        .map_err(|e| auth_err(format!("SCRAM: {e}")))?;
    frontend::sasl_response(client.message(), wire.out()).map_err(io_to_protocol)?;
    wire.flush().await.map_err(UpstreamError::send)?;

    let AuthRequest::SaslFinal(server_final) = next_auth(wire).await? else {
        return Err(UpstreamError::Protocol(
            "expected AuthenticationSASLFinal".into(),
        ));
    };
    // Checks the server signature: a server that does not know the password cannot pass.
    client
        .finish(&server_final)
        .map_err(|e| auth_err(format!("SCRAM: {e}")))?;
    expect_ok(wire).await
}
