//! `walrelay passwd`: reads one password line on stdin and prints its SCRAM-SHA-256 verifier
//! in `pg_authid.rolpassword` form, optionally as a `user = "verifier"` line for the config
//! file.
//!
//! Only the line terminator is stripped: any other whitespace is part of the password, as
//! PostgreSQL takes it. The verifier gets a fresh random salt each time, so two runs print
//! different (equally valid) verifiers.

use anyhow::Context as _;

/// The output line for `password` (without its newline): the verifier, or `user = "verifier"`.
fn line(user: Option<&str>, password: &str) -> anyhow::Result<String> {
    if password.is_empty() {
        anyhow::bail!("empty password");
    }
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    Ok(match user {
        Some(u) => format!("{u} = \"{verifier}\""),
        None => verifier,
    })
}

/// `walrelay passwd [--user NAME]`.
pub fn run(user: Option<&str>) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_line(&mut input)
        .context("read password from stdin")?;
    println!("{}", line(user, input.trim_end_matches(['\n', '\r']))?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::line;

    #[test]
    fn verifier_lines() {
        let v = line(None, "secret").unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        let u = line(Some("replicator"), "secret").unwrap();
        assert!(u.starts_with("replicator = \"SCRAM-SHA-256$4096:"), "{u}");
        assert!(u.ends_with('"'), "{u}");
        assert_eq!(line(None, "").unwrap_err().to_string(), "empty password");
    }
}
