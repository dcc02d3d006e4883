//! `walrelay passwd [--user NAME]`: reads one password line on stdin and prints its
//! SCRAM-SHA-256 verifier in `pg_authid.rolpassword` form, or with `--user` one `--auth-file`
//! line (`"NAME" "SCRAM-SHA-256$…"`, PgBouncer's `userlist.txt` format), both made by
//! [`crate::access::users::passwd_line`].
//!
//! Only the line terminator is stripped: any other whitespace is part of the password, as
//! PostgreSQL takes it. The verifier gets a fresh random salt each time, so two runs print
//! different (equally valid) verifiers.

use std::io::Read as _;

use anyhow::Context as _;

use crate::access::users::passwd_line;

/// The output line for one line of input (its line end, if any, is not part of the password).
fn line(user: Option<&str>, raw: &[u8]) -> anyhow::Result<String> {
    Ok(passwd_line(user, raw)?)
}

/// `walrelay passwd [--user NAME]`.
pub fn run(user: Option<&str>) -> anyhow::Result<()> {
    // One line, as bytes (a password need not be UTF-8); stop at the first line end.
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    let mut byte = [0u8; 1];
    loop {
        let n = lock.read(&mut byte).context("read password from stdin")?;
        if n == 0 {
            break;
        }
        input.extend_from_slice(&byte);
        if byte == [b'\n'] {
            break;
        }
    }
    println!("{}", line(user, &input)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::line;
    use crate::access::users::{ScramVerifier, UserList};

    #[test]
    fn verifier_lines() {
        let v = line(None, b"secret").unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        let u = line(Some("replicator"), b"secret").unwrap();
        assert!(u.starts_with("\"replicator\" \"SCRAM-SHA-256$4096:"), "{u}");
        assert!(u.ends_with('"'), "{u}");
        // The line is an auth file the relay accepts, and the password logs in.
        let list = UserList::parse(&u, "f").unwrap();
        assert_eq!(list.len(), 1);
        let verifier = u
            .trim_start_matches("\"replicator\" \"")
            .trim_end_matches('"');
        assert!(ScramVerifier::parse(verifier)
            .unwrap()
            .verify_password(b"secret"));
        assert_eq!(line(None, b"").unwrap_err().to_string(), "empty password");
    }
}
