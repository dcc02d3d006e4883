//! `.pgpass` lookup, as libpq's `passwordFromFile` does it.
//!
//! The file is the conninfo's `passfile` (or `PGPASSFILE`, folded into the same field by the
//! conninfo parser), else `~/.pgpass`. Lines are `hostname:port:database:username:password`;
//! a field that is exactly `*` matches anything, `\` escapes `:` and `\`, lines starting with
//! `#` are comments, and the first matching line wins. Physical replication connections look up
//! the database name `replication` (libpq's walreceiver sets `dbname=replication` "for .pgpass
//! lookup"), so a line for database `replication` matches them and `*` does too.
//!
//! Invariants: a missing file means "no password" silently; a file that is not a plain file, or
//! that group or others can access, is ignored with a warning (libpq's words), never read.
//! Used only when the conninfo carries no password.

use std::path::{Path, PathBuf};

use super::conninfo::{passwd_entry_of_self, ConnInfo, HostPort};

/// The database name libpq uses for `.pgpass` matching on physical replication connections.
pub const REPLICATION_DATABASE: &str = "replication";

/// The password file to read: `passfile`/`PGPASSFILE`, else `$HOME/.pgpass` (libpq's
/// `pqGetHomeDirectory`: `HOME`, else the passwd entry's home directory).
pub fn passfile_path(ci: &ConnInfo, home: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = &ci.passfile {
        return Some(p.clone());
    }
    home.map(|h| h.join(".pgpass"))
}

/// The invoking user's home directory from the real environment.
pub fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| passwd_entry_of_self().map(|(_, home)| home))
}

/// The password for a replication connection to `host` as `ci.user`, from the password file,
/// or `None` (no file, unsafe file, no matching line).
pub fn password_for(ci: &ConnInfo, host: &HostPort) -> Option<String> {
    let path = passfile_path(ci, home_dir().as_deref())?;
    lookup(&path, &host.host, host.port, REPLICATION_DATABASE, &ci.user)
}

/// Reads `path` and returns the password of the first line matching the four keys.
pub fn lookup(path: &Path, host: &str, port: u16, database: &str, user: &str) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!("password file \"{}\" is not a plain file", path.display());
        return None;
    }
    if !permissions_ok(&meta) {
        tracing::warn!(
            "password file \"{}\" has group or world access; permissions should be u=rw (0600) or less",
            path.display()
        );
        return None;
    }
    let contents = match std::fs::read(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not read password file \"{}\": {e}", path.display());
            return None;
        }
    };
    find_password(
        &String::from_utf8_lossy(&contents),
        host,
        port,
        database,
        user,
    )
}

#[cfg(unix)]
fn permissions_ok(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o077 == 0
}

#[cfg(not(unix))]
fn permissions_ok(_meta: &std::fs::Metadata) -> bool {
    true
}

/// The matching logic on the file's text, without I/O.
pub fn find_password(
    contents: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<String> {
    // libpq treats an empty host as the default host.
    let host = if host.is_empty() { "localhost" } else { host };
    let port = port.to_string();
    for line in contents.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let rest = [host, port.as_str(), database, user]
            .iter()
            .try_fold(line, |rest, token| match_field(rest, token));
        if let Some(rest) = rest {
            return Some(unescape_password(rest));
        }
    }
    None
}

/// libpq's `pwdfMatchesString`: if the field at the start of `buf` matches `token` (or is
/// `*`), returns what follows its `:` separator.
fn match_field<'a>(buf: &'a str, token: &str) -> Option<&'a str> {
    if let Some(rest) = buf.strip_prefix("*:") {
        return Some(rest);
    }
    let mut want = token.chars();
    let mut chars = buf.char_indices();
    while let Some((i, c)) = chars.next() {
        let (c, escaped) = if c == '\\' {
            match chars.next() {
                Some((_, n)) => (n, true),
                None => return None,
            }
        } else {
            (c, false)
        };
        if c == ':' && !escaped {
            return if want.next().is_none() {
                buf.get(i + 1..)
            } else {
                None
            };
        }
        if want.next() != Some(c) {
            return None;
        }
    }
    None
}

/// The password field: up to the first unescaped `:`, with `\x` turned into `x`.
fn unescape_password(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' => break,
            '\\' => match chars.next() {
                Some(n) => out.push(n),
                None => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FILE: &str = "\
# comment line: host:port:db:user:pw
db1:5432:replication:repl:first
db1:5432:*:repl:second
*:*:otherdb:*:third
weird\\:host:6000:replication:u\\\\ser:p\\:w\\\\d:trailing
*:*:*:fallback:last
";

    #[test]
    fn first_matching_line_wins() {
        assert_eq!(
            find_password(FILE, "db1", 5432, "replication", "repl").as_deref(),
            Some("first")
        );
        assert_eq!(
            find_password(FILE, "db1", 5432, "postgres", "repl").as_deref(),
            Some("second")
        );
        assert_eq!(
            find_password(FILE, "db2", 5432, "replication", "repl"),
            None
        );
    }

    #[test]
    fn wildcards_match_any_field() {
        assert_eq!(
            find_password(FILE, "anyhost", 1, "otherdb", "anyone").as_deref(),
            Some("third")
        );
        assert_eq!(
            find_password(FILE, "h", 7, "replication", "fallback").as_deref(),
            Some("last")
        );
    }

    #[test]
    fn escapes_in_fields_and_password() {
        assert_eq!(
            find_password(FILE, "weird:host", 6000, "replication", "u\\ser").as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            find_password(FILE, "weird", 6000, "replication", "u\\ser"),
            None
        );
    }

    #[test]
    fn replication_keyword_is_a_database_name() {
        let f = "h:5432:replication:u:rep\nh:5432:postgres:u:pg\n";
        assert_eq!(
            find_password(f, "h", 5432, REPLICATION_DATABASE, "u").as_deref(),
            Some("rep")
        );
        let f = "h:5432:postgres:u:pg\n";
        assert_eq!(find_password(f, "h", 5432, REPLICATION_DATABASE, "u"), None);
    }

    #[test]
    fn partial_and_malformed_lines_do_not_match() {
        assert_eq!(find_password("h:5432", "h", 5432, "d", "u"), None);
        assert_eq!(find_password("h:5432:d:u", "h", 5432, "d", "u"), None);
        assert_eq!(
            find_password("h:5432:d:u:", "h", 5432, "d", "u").as_deref(),
            Some("")
        );
        assert_eq!(find_password("h\\", "h", 5432, "d", "u"), None);
        assert_eq!(find_password("hh:5432:d:u:x", "h", 5432, "d", "u"), None);
        assert_eq!(
            find_password("h:5432:d:u:x\r\n", "h", 5432, "d", "u").as_deref(),
            Some("x")
        );
        // A `*` is a wildcard only as a whole field.
        assert_eq!(find_password("h*:5432:d:u:x", "hx", 5432, "d", "u"), None);
    }

    fn write_file(dir: &Path, mode: u32, text: &str) -> PathBuf {
        let path = dir.join("pgpass");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        path
    }

    #[test]
    fn file_permissions_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), 0o600, "h:5432:replication:u:pw\n");
        assert_eq!(
            lookup(&path, "h", 5432, REPLICATION_DATABASE, "u").as_deref(),
            Some("pw")
        );
        #[cfg(unix)]
        for mode in [0o640, 0o604, 0o660] {
            let path = write_file(dir.path(), mode, "h:5432:replication:u:pw\n");
            assert_eq!(
                lookup(&path, "h", 5432, REPLICATION_DATABASE, "u"),
                None,
                "mode {mode:o}"
            );
        }
        assert_eq!(
            lookup(&dir.path().join("missing"), "h", 5432, "d", "u"),
            None
        );
        assert_eq!(
            lookup(dir.path(), "h", 5432, "d", "u"),
            None,
            "a directory is not a plain file"
        );
    }

    #[test]
    fn passfile_key_wins_over_home() {
        let ci = ConnInfo::parse_with_env("user=u passfile=/etc/relay/pgpass", |_| None).unwrap();
        assert_eq!(
            passfile_path(&ci, Some(Path::new("/home/x"))),
            Some(PathBuf::from("/etc/relay/pgpass"))
        );
        let ci = ConnInfo::parse_with_env("user=u", |_| None).unwrap();
        assert_eq!(
            passfile_path(&ci, Some(Path::new("/home/x"))),
            Some(PathBuf::from("/home/x/.pgpass"))
        );
        assert_eq!(passfile_path(&ci, None), None);
    }

    #[test]
    fn password_for_uses_host_port_user_and_replication() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(
            dir.path(),
            0o600,
            "other:5432:*:u:no\ndb:6000:replication:u:yes\n",
        );
        let s = format!(
            "host=other,db port=5432,6000 user=u passfile='{}'",
            path.display()
        );
        let ci = ConnInfo::parse_with_env(&s, |_| None).unwrap();
        assert_eq!(password_for(&ci, &ci.hosts[1]).as_deref(), Some("yes"));
        assert_eq!(password_for(&ci, &ci.hosts[0]).as_deref(), Some("no"));
    }
}
