//! `--auth-file`: users and their secrets in PgBouncer's `userlist.txt` format, and SCRAM
//! verifiers exactly as PostgreSQL stores them in `pg_authid.rolpassword`
//! (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 fields), so a verifier
//! copied from the primary works unchanged.
//!
//! File format (PgBouncer's `load_auth_file`): one user a line, `"name" "secret"`, both fields
//! double-quoted, a literal `"` written `""`; whatever follows the second field is ignored;
//! blank lines and lines starting with `;` (PgBouncer) or `#` are comments. Differences from
//! PgBouncer, all stricter: a line that is not of that shape is an error naming the line (PgBouncer
//! logs "broken auth file" and drops the rest of the file), a quoted field cannot span lines, and
//! a secret that starts `SCRAM-SHA-256$` but does not parse is an error (PgBouncer would take it
//! as a plain-text password). A user listed twice: the last line wins, as in PgBouncer, with a
//! warning.
//!
//! The secret is classified as PostgreSQL's `get_password_type` does:
//! * a SCRAM-SHA-256 verifier: used as is;
//! * an MD5 hash (`md5` + 32 lowercase hex digits): kept, but such a user can never log in,
//!   because the relay only runs SCRAM and "you cannot do SCRAM authentication with an MD5
//!   hash" (`auth-scram.c`); a warning says so at load, and the exchange fails as a wrong
//!   password would;
//! * anything else is a plain-text password, **accepted as PgBouncer does**: a SCRAM verifier
//!   (random salt, 4096 iterations) is derived from it at load and the text is dropped. Prefer
//!   verifiers (`walrelay passwd`), so the file holds nothing that logs in elsewhere;
//! * an empty secret: the user exists but has no password, and fails like PostgreSQL's
//!   "User … has no password assigned.".

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::hba::{read_text, LineMessage, ReadTextError};

/// `SCRAM_SHA_256_KEY_LEN`.
pub const KEY_LEN: usize = 32;
/// `SCRAM_DEFAULT_SALT_LEN`.
pub const DEFAULT_SALT_LEN: usize = 16;
/// `SCRAM_SHA_256_DEFAULT_ITERATIONS`.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// A decoder as lenient as PostgreSQL's `pg_b64_decode` about padding and trailing bits.
pub(crate) const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A SCRAM-SHA-256 verifier: iteration count, salt, StoredKey and ServerKey. `Debug` shows
/// only the iteration count.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    iterations: u32,
    /// The salt as written (sent to clients verbatim, as PostgreSQL does).
    salt_b64: String,
    stored_key: [u8; KEY_LEN],
    server_key: [u8; KEY_LEN],
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// A string that is not a SCRAM-SHA-256 verifier (the string itself is never quoted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid SCRAM secret")]
pub struct InvalidVerifier;

/// Why a password cannot become a verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// PostgreSQL refuses empty passwords too.
    #[error("empty password")]
    Empty,
    /// SCRAM passwords cannot contain NUL (PostgreSQL's strings end there).
    #[error("password contains a zero byte")]
    Nul,
}

type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; KEY_LEN] {
    // HMAC accepts keys of any length, so this cannot fail; a zero key would only make the
    // result useless, never unsafe.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; KEY_LEN],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn sha256(data: &[u8]) -> [u8; KEY_LEN] {
    Sha256::digest(data).into()
}

/// PostgreSQL's SASLprep use: normalise when the password is valid UTF-8 and SASLprep accepts
/// it, else use the bytes as they are (`pg_saslprep`, comments at the top of `auth-scram.c`).
fn prepare(password: &[u8]) -> Vec<u8> {
    match std::str::from_utf8(password) {
        Ok(s) => match stringprep::saslprep(s) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => password.to_vec(),
        },
        Err(_) => password.to_vec(),
    }
}

impl ScramVerifier {
    /// Parses a verifier as PostgreSQL's `parse_scram_secret` does.
    pub fn parse(secret: &str) -> Result<ScramVerifier, InvalidVerifier> {
        let (scheme, rest) = secret.split_once('$').ok_or(InvalidVerifier)?;
        let (iterations, rest) = rest.split_once(':').ok_or(InvalidVerifier)?;
        let (salt, rest) = rest.split_once('$').ok_or(InvalidVerifier)?;
        let (stored, server) = rest.split_once(':').ok_or(InvalidVerifier)?;
        if scheme != "SCRAM-SHA-256" {
            return Err(InvalidVerifier);
        }
        // strtol with the whole string consumed; a count below 1 could never be used.
        let iterations: u32 = iterations
            .trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
            .parse()
            .map_err(|_| InvalidVerifier)?;
        if iterations == 0 || iterations > i32::MAX as u32 {
            return Err(InvalidVerifier);
        }
        B64_LENIENT.decode(salt).map_err(|_| InvalidVerifier)?;
        let key = |s: &str| -> Result<[u8; KEY_LEN], InvalidVerifier> {
            B64_LENIENT
                .decode(s)
                .map_err(|_| InvalidVerifier)?
                .try_into()
                .map_err(|_| InvalidVerifier)
        };
        Ok(ScramVerifier {
            iterations,
            salt_b64: salt.to_string(),
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A new verifier for `password` as `walrelay passwd` and PostgreSQL's
    /// `pg_be_scram_build_secret` make it: SASLprep, a random 16-byte salt, 4096 iterations.
    pub fn generate(password: &[u8]) -> Result<ScramVerifier, PasswordError> {
        let mut salt = [0u8; DEFAULT_SALT_LEN];
        rand::fill(&mut salt);
        ScramVerifier::with_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    /// PostgreSQL's `scram_build_secret` with a given salt and iteration count.
    pub fn with_salt(
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> Result<ScramVerifier, PasswordError> {
        if password.is_empty() {
            return Err(PasswordError::Empty);
        }
        if password.contains(&0) {
            return Err(PasswordError::Nul);
        }
        let iterations = iterations.max(1);
        let salted = salted_password(&prepare(password), salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        Ok(ScramVerifier {
            iterations,
            salt_b64: STANDARD.encode(salt),
            stored_key: sha256(&client_key),
            server_key: hmac(&salted, &[b"Server Key"]),
        })
    }

    /// The verifier in `pg_authid.rolpassword` form. This is secret material: print it only
    /// where the operator asked for it (`walrelay passwd`).
    pub fn encode(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            self.salt_b64,
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The salt, base64, as sent in the server-first-message.
    pub fn salt_b64(&self) -> &str {
        &self.salt_b64
    }

    pub(crate) fn stored_key(&self) -> &[u8; KEY_LEN] {
        &self.stored_key
    }

    pub(crate) fn server_key(&self) -> &[u8; KEY_LEN] {
        &self.server_key
    }

    /// Whether `password` produces this verifier, compared in constant time (PostgreSQL's
    /// `scram_verify_plain_password`).
    pub fn verify_password(&self, password: &[u8]) -> bool {
        let Ok(salt) = B64_LENIENT.decode(&self.salt_b64) else {
            return false;
        };
        let salted = salted_password(&prepare(password), &salt, self.iterations);
        let server_key = hmac(&salted, &[b"Server Key"]);
        bool::from(server_key.ct_eq(&self.server_key))
    }
}

/// `Hi(password, salt, i)` of RFC 5802: PBKDF2-HMAC-SHA-256.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
    out
}

/// One line of an auth file, for `walrelay passwd --user NAME`: `"name" "secret"` with
/// double quotes doubled, no line end.
pub fn format_entry(name: &str, secret: &str) -> String {
    format!(
        "\"{}\" \"{}\"",
        name.replace('"', "\"\""),
        secret.replace('"', "\"\"")
    )
}

/// What `walrelay passwd [--user NAME]` prints for a password read from stdin: the
/// verifier alone, or with `--user` one auth-file line. `raw` may end with one line end
/// (`\n` or `\r\n`), which is not part of the password.
pub fn passwd_line(user: Option<&str>, raw: &[u8]) -> Result<String, PasswordError> {
    let password = strip_line_end(raw);
    let verifier = ScramVerifier::generate(password)?.encode();
    Ok(match user {
        Some(name) => format_entry(name, &verifier),
        None => verifier,
    })
}

/// `raw` without one trailing `\n` or `\r\n`.
pub fn strip_line_end(raw: &[u8]) -> &[u8] {
    match raw.strip_suffix(b"\n") {
        Some(r) => r.strip_suffix(b"\r").unwrap_or(r),
        None => raw,
    }
}

#[derive(Clone)]
enum Entry {
    Scram(ScramVerifier),
    Md5,
    NoPassword,
}

/// What the file says about a user, for the SCRAM exchange.
#[derive(Clone, Copy)]
pub enum Lookup<'a> {
    /// A verifier to run the exchange with.
    Scram(&'a ScramVerifier),
    /// No usable verifier: the exchange runs with a mock one and fails as a wrong password
    /// does. The detail is for the server log only, in PostgreSQL's words.
    Unusable { log_detail: &'static str },
}

impl fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookup::Scram(_) => f.write_str("Lookup::Scram(..)"),
            Lookup::Unusable { log_detail } => write!(f, "Lookup::Unusable({log_detail:?})"),
        }
    }
}

/// Log details, as PostgreSQL's `get_role_password` and `scram_init` word them, with the user
/// name filled in by [`Lookup::log_detail`].
pub(crate) const NO_ROLE: &str = "Role \"%s\" does not exist.";
pub(crate) const NO_PASSWORD: &str = "User \"%s\" has no password assigned.";
pub(crate) const NOT_SCRAM: &str = "User \"%s\" does not have a valid SCRAM secret.";

impl Lookup<'_> {
    /// The server-log detail for `user`, if the lookup found nothing usable.
    pub fn log_detail(&self, user: &str) -> Option<String> {
        match self {
            Lookup::Scram(_) => None,
            Lookup::Unusable { log_detail } => Some(log_detail.replace("%s", user)),
        }
    }
}

/// Why an auth file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("could not open auth file \"{file}\": {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{}", .lines.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Parse { lines: Vec<LineMessage> },
}

/// The users of an auth file. `Debug` shows the user count only.
#[derive(Clone, Default)]
pub struct UserList {
    file: String,
    users: HashMap<String, Entry>,
    warnings: Vec<LineMessage>,
}

impl fmt::Debug for UserList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserList")
            .field("file", &self.file)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl UserList {
    /// No users: every password exchange fails (the state without `--auth-file`).
    pub fn empty() -> UserList {
        UserList::default()
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<UserList, UsersError> {
        let file = path.display().to_string();
        match read_text(path, &file, "auth file") {
            Ok(text) => UserList::parse(&text, &file),
            Err(ReadTextError::Io(error)) => Err(UsersError::Read { file, error }),
            Err(ReadTextError::Utf8(m)) => Err(UsersError::Parse { lines: vec![m] }),
        }
    }

    /// Parses the text of an auth file; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<UserList, UsersError> {
        let mut users: HashMap<String, (usize, Entry)> = HashMap::new();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        for (idx, line) in text.split('\n').enumerate() {
            let number = idx + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            let msg = |message: String| LineMessage {
                file: file.to_string(),
                line: number,
                message,
                hint: None,
            };
            let (name, secret) = match parse_entry(line) {
                Ok(None) => continue,
                Ok(Some(e)) => e,
                Err(m) => {
                    errors.push(msg(m.into()));
                    continue;
                }
            };
            let entry = match classify(&secret) {
                Ok(e) => e,
                Err(m) => {
                    errors.push(msg(m.replace("%s", &name)));
                    continue;
                }
            };
            match &entry {
                Entry::Md5 => warnings.push(msg(format!(
                    "user \"{name}\" has an MD5 password hash, which cannot be used for SCRAM authentication: this user cannot log in"
                ))),
                Entry::NoPassword => warnings.push(msg(format!(
                    "user \"{name}\" has an empty password: this user cannot log in"
                ))),
                Entry::Scram(_) => {}
            }
            if let Some((prev, _)) = users.insert(name.clone(), (number, entry)) {
                warnings.push(msg(format!(
                    "user \"{name}\" is listed again (first on line {prev}); this line wins"
                )));
            }
        }
        if !errors.is_empty() {
            return Err(UsersError::Parse { lines: errors });
        }
        Ok(UserList {
            file: file.into(),
            users: users.into_iter().map(|(k, (_, e))| (k, e)).collect(),
            warnings,
        })
    }

    /// The file the users came from.
    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users that can never log in, duplicates: to log at load.
    pub fn warnings(&self) -> &[LineMessage] {
        &self.warnings
    }

    /// Whether the file lists `user` (with a usable secret or not): such a user is never
    /// looked up with `--auth-query`.
    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// What the SCRAM exchange should use for `user`.
    pub fn lookup(&self, user: &str) -> Lookup<'_> {
        match self.users.get(user) {
            Some(Entry::Scram(v)) => Lookup::Scram(v),
            Some(Entry::Md5) => Lookup::Unusable {
                log_detail: NOT_SCRAM,
            },
            Some(Entry::NoPassword) => Lookup::Unusable {
                log_detail: NO_PASSWORD,
            },
            None => Lookup::Unusable {
                log_detail: NO_ROLE,
            },
        }
    }
}

/// PostgreSQL's `get_password_type` order: MD5 hash, SCRAM verifier, else plain text.
fn classify(secret: &str) -> Result<Entry, &'static str> {
    if secret.is_empty() {
        return Ok(Entry::NoPassword);
    }
    let b = secret.as_bytes();
    if b.len() == 35
        && secret.starts_with("md5")
        && b.get(3..)
            .is_some_and(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Ok(Entry::Md5);
    }
    if let Ok(v) = ScramVerifier::parse(secret) {
        return Ok(Entry::Scram(v));
    }
    if secret.starts_with("SCRAM-SHA-256$") {
        return Err("invalid SCRAM secret for user \"%s\"");
    }
    ScramVerifier::generate(secret.as_bytes())
        .map(Entry::Scram)
        .map_err(|_| "invalid password for user \"%s\": it contains a zero byte")
}

/// One line: `Ok(None)` for blank and comment lines, else the two unquoted fields.
fn parse_entry(line: &str) -> Result<Option<(String, String)>, &'static str> {
    let rest = line.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if rest.is_empty() || rest.starts_with(';') || rest.starts_with('#') {
        return Ok(None);
    }
    let Some(rest) = rest.strip_prefix('"') else {
        return Err("broken auth file: expected a double-quoted user name");
    };
    let (name, rest) = quoted(rest).ok_or("broken auth file: unterminated user name")?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let Some(rest) = rest.strip_prefix('"') else {
        return Err("broken auth file: expected a double-quoted password after the user name");
    };
    let (secret, _ignored) = quoted(rest).ok_or("broken auth file: unterminated password")?;
    if name.is_empty() {
        return Err("broken auth file: empty user name");
    }
    Ok(Some((name, secret)))
}

/// The content of a quoted field whose opening quote was consumed (`""` is a quote), and the
/// text after the closing quote.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                if chars.peek().is_some_and(|&(_, n)| n == '"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Some((out, s.get(i + 1..).unwrap_or("")));
                }
            }
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Made by PostgreSQL 15.x (Debian): `SET password_encryption = 'scram-sha-256';
    /// CREATE ROLE x PASSWORD 'p'; SELECT rolpassword FROM pg_authid WHERE rolname = 'x'`.
    pub(crate) const PG15_X_P: &str = "SCRAM-SHA-256$4096:f2VAmwAQwsmsN97hhfVeXw==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=";
    /// The same for `CREATE ROLE y PASSWORD 'pässwörd ﬁ'` (SASLprep maps the ligature to "fi").
    const PG15_Y_UNICODE: &str = "SCRAM-SHA-256$4096:lrUpyfCN6AvkstGX9VU8BQ==$hbEMLHXuKUK38dPuPOGPxZaMGc66m2IpjxDP3U6PjME=:F9PxHfDkvz8TBxxUN1QqktQH9bmgFF5GZk1VBcCfppc=";

    #[test]
    fn parses_and_reproduces_postgres_verifiers() {
        let v = ScramVerifier::parse(PG15_X_P).unwrap();
        assert_eq!(v.iterations(), 4096);
        assert_eq!(v.salt_b64(), "f2VAmwAQwsmsN97hhfVeXw==");
        assert_eq!(v.encode(), PG15_X_P);
        assert!(v.verify_password(b"p"));
        assert!(!v.verify_password(b"q"));
        // Recomputing with PostgreSQL's salt gives PostgreSQL's keys.
        let salt = STANDARD.decode("f2VAmwAQwsmsN97hhfVeXw==").unwrap();
        assert_eq!(
            ScramVerifier::with_salt(b"p", &salt, 4096)
                .unwrap()
                .encode(),
            PG15_X_P
        );
        let y = ScramVerifier::parse(PG15_Y_UNICODE).unwrap();
        assert!(y.verify_password("pässwörd ﬁ".as_bytes()));
        assert!(
            y.verify_password("pässwörd fi".as_bytes()),
            "SASLprep applied"
        );
        assert!(!y.verify_password("passwoerd fi".as_bytes()));
    }

    #[test]
    fn generated_verifiers_have_postgres_shape() {
        let v = ScramVerifier::generate(b"secret").unwrap();
        let s = v.encode();
        assert!(s.starts_with("SCRAM-SHA-256$4096:"), "{s}");
        assert_eq!(STANDARD.decode(v.salt_b64()).unwrap().len(), 16);
        assert_eq!(ScramVerifier::parse(&s).unwrap(), v);
        assert!(v.verify_password(b"secret"));
        let w = ScramVerifier::generate(b"secret").unwrap();
        assert_ne!(v.salt_b64(), w.salt_b64(), "fresh salt each time");
        assert_eq!(ScramVerifier::generate(b""), Err(PasswordError::Empty));
        assert_eq!(ScramVerifier::generate(b"a\0b"), Err(PasswordError::Nul));
        // Not UTF-8: used raw, as PostgreSQL does.
        assert!(ScramVerifier::generate(b"\xff\xfe")
            .unwrap()
            .verify_password(b"\xff\xfe"));
    }

    #[test]
    fn rejects_malformed_verifiers() {
        for bad in [
            "",
            "SCRAM-SHA-256",
            "SCRAM-SHA-256$4096",
            "SCRAM-SHA-256$4096:salt",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA",
            "SCRAM-SHA-1$4096:c2FsdA==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=",
            "SCRAM-SHA-256$x:c2FsdA==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=",
            "SCRAM-SHA-256$0:c2FsdA==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=",
            "SCRAM-SHA-256$4096:c2F*dA==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=",
            "SCRAM-SHA-256$4096:c2FsdA==$AAAA:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=",
            "SCRAM-SHA-256$4096:c2FsdA==$D7Mam8nUd2NnbhImE8tAEKkJsgd3PrU38Vrba0RQyQ4=:GgA2zHxRl4mzZkBwWt/K25hRFGHqnMkW9ysfZA0juYc=:x",
        ] {
            assert_eq!(ScramVerifier::parse(bad), Err(InvalidVerifier), "{bad}");
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let v = ScramVerifier::parse(PG15_X_P).unwrap();
        let d = format!("{v:?}");
        assert_eq!(d, "ScramVerifier { iterations: 4096, .. }");
        let list = UserList::parse(&format_entry("x", PG15_X_P), "f").unwrap();
        let d = format!("{list:?} {:?}", list.lookup("x"));
        assert!(
            !d.contains("f2VAmw") && !d.contains("D7Mam8") && !d.contains("GgA2z"),
            "{d}"
        );
    }

    #[test]
    fn passwd_output() {
        let line = passwd_line(Some("rep"), b"s3cret\n").unwrap();
        let list = UserList::parse(&line, "f").unwrap();
        let Lookup::Scram(v) = list.lookup("rep") else {
            panic!("{line}")
        };
        assert!(v.verify_password(b"s3cret"));
        let bare = passwd_line(None, b"s3cret\r\n").unwrap();
        assert!(ScramVerifier::parse(&bare)
            .unwrap()
            .verify_password(b"s3cret"));
        assert_eq!(passwd_line(None, b"\n"), Err(PasswordError::Empty));
        assert_eq!(strip_line_end(b"a\n\n"), b"a\n");
        assert_eq!(strip_line_end(b"a"), b"a");
        assert_eq!(strip_line_end(b"a\r"), b"a\r");
    }

    #[test]
    fn format_entry_round_trips() {
        assert_eq!(format_entry("x", PG15_X_P), format!("\"x\" \"{PG15_X_P}\""));
        let line = format_entry("we\"ird name", PG15_X_P);
        assert_eq!(line, format!("\"we\"\"ird name\" \"{PG15_X_P}\""));
        let list = UserList::parse(&line, "f").unwrap();
        assert!(matches!(list.lookup("we\"ird name"), Lookup::Scram(_)));
    }

    #[test]
    fn parses_userlist_files() {
        let text = format!(
            "; PgBouncer comment\n\
             # another comment\n\
             \n\
             \"x\" \"{PG15_X_P}\" trailing words are ignored\n\
             \t\"plain\"   \"hunter2\"\n\
             \"old\" \"md50123456789abcdef0123456789abcdef\"\n\
             \"nopass\" \"\"\r\n\
             \"dup\" \"one\"\n\
             \"dup\" \"{PG15_X_P}\"\n"
        );
        let list = UserList::parse(&text, "/etc/walrelay/users.txt").unwrap();
        assert_eq!(list.len(), 5);
        let Lookup::Scram(x) = list.lookup("x") else {
            panic!()
        };
        assert!(x.verify_password(b"p"));
        let Lookup::Scram(plain) = list.lookup("plain") else {
            panic!()
        };
        assert!(plain.verify_password(b"hunter2"));
        assert_eq!(plain.iterations(), 4096);
        assert!(matches!(list.lookup("dup"), Lookup::Scram(v) if v.verify_password(b"p")));
        assert_eq!(
            list.lookup("old").log_detail("old").unwrap(),
            "User \"old\" does not have a valid SCRAM secret."
        );
        assert_eq!(
            list.lookup("nopass").log_detail("nopass").unwrap(),
            "User \"nopass\" has no password assigned."
        );
        assert_eq!(
            list.lookup("ghost").log_detail("ghost").unwrap(),
            "Role \"ghost\" does not exist."
        );
        assert_eq!(list.lookup("x").log_detail("x"), None);
        let w: Vec<usize> = list.warnings().iter().map(|w| w.line).collect();
        assert_eq!(w, vec![6, 7, 9]);
    }

    #[test]
    fn errors_name_the_line() {
        let text = "\"ok\" \"pw\"\nuser \"pw\"\n\"x\" pw\n\"unterminated\n\"y\" \"SCRAM-SHA-256$4096:broken\"\n\"\" \"pw\"\n";
        let Err(UsersError::Parse { lines }) = UserList::parse(text, "users.txt") else {
            panic!()
        };
        let got: Vec<(usize, String)> = lines.into_iter().map(|l| (l.line, l.message)).collect();
        assert_eq!(
            got,
            vec![
                (
                    2,
                    "broken auth file: expected a double-quoted user name".to_string()
                ),
                (
                    3,
                    "broken auth file: expected a double-quoted password after the user name"
                        .to_string()
                ),
                (4, "broken auth file: unterminated user name".to_string()),
                (5, "invalid SCRAM secret for user \"y\"".to_string()),
                (6, "broken auth file: empty user name".to_string()),
            ]
        );
        let e = UserList::parse("bad\n", "users.txt")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "broken auth file: expected a double-quoted user name (line 1 of configuration file \"users.txt\")"
        );
    }

    #[test]
    fn garbage_never_panics() {
        for t in [
            "\"",
            "\"\"",
            "\"a\"\"",
            "\"a\" \"",
            "\"a\" \"b",
            "\"é\" \"ü\"\"\"",
            "\r",
            "\"\r\"\r",
        ] {
            let _ = UserList::parse(t, "f");
        }
    }

    proptest::proptest! {
        // PBKDF2 runs per case: few iterations, few cases.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A verifier survives its own encoding, and the auth-file line `walrelay passwd
        /// --user` writes for it (quotes in the name doubled) gives it back under that name.
        #[test]
        fn verifier_and_entry_round_trip(
            password in "[^\\x00]{1,20}",
            salt in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..24),
            iterations in 1u32..4,
            name in "[a-zA-Z0-9 \"'#_.@-]{1,20}",
        ) {
            let v = ScramVerifier::with_salt(password.as_bytes(), &salt, iterations).unwrap();
            let encoded = v.encode();
            let again = ScramVerifier::parse(&encoded).unwrap();
            proptest::prop_assert_eq!(again.encode(), encoded.clone());
            proptest::prop_assert!(again.verify_password(password.as_bytes()));
            let users = UserList::parse(&format_entry(&name, &encoded), "t").unwrap();
            match users.lookup(&name) {
                Lookup::Scram(found) => proptest::prop_assert_eq!(found.encode(), encoded),
                other => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
