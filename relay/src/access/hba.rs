//! `--hba-file`: PostgreSQL's `pg_hba.conf` syntax and first-match semantics, for a server
//! that only ever sees physical replication connections over TCP.
//!
//! Tokenising follows PostgreSQL's `hba.c` (`tokenize_auth_file`, `next_token`,
//! `next_field_expand`) exactly: a trailing backslash continues a line (the logical line keeps
//! the number of its first physical line), `#` starts a comment outside quotes, fields are
//! separated by blanks, a field is a comma list, double quotes protect blanks, commas and `#`
//! (`""` is a literal quote), and only an unquoted token is a keyword (`"all"` is a user
//! named all).
//!
//! What a line may say here, and how it differs from PostgreSQL:
//! * types `host`, `hostssl`, `hostnossl` (and `hostnogssenc`, which is `host` since the relay
//!   never encrypts with GSSAPI). `local` lines are **ignored with a warning naming the line**:
//!   the relay has no Unix-domain socket, so such a line can never match (as in PostgreSQL for
//!   a TCP client), and refusing the whole file would only make operators delete lines copied
//!   from the primary. `hostgssenc` lines likewise never match and are ignored with a warning;
//! * database column: every connection is a physical replication connection, so, exactly as
//!   PostgreSQL's `check_db`, only the unquoted keyword `replication` matches; `all`, names and
//!   regular expressions parse but never match;
//! * user column: names (case-sensitive), comma lists, quoted names, `all`. `+group` and
//!   `/regex` are refused with an error (the relay knows no roles);
//! * address: `a.b.c.d/n`, IPv6 `x::y/n`, an address and a netmask in two columns, `all`,
//!   `samehost`, `samenet` (against the interface list the caller supplies, see
//!   [`host_interfaces`]). Host names are refused with an error (the relay does no DNS);
//!   IPv4-mapped IPv6 peers (a dual-stack listener) match IPv4 rules;
//! * methods `trust`, `reject`, `scram-sha-256`, and `md5`, which means SCRAM here: PostgreSQL
//!   uses SCRAM for an `md5` line whenever the user's verifier is a SCRAM one, and the relay
//!   only holds SCRAM verifiers. Other PostgreSQL methods get PostgreSQL's
//!   `invalid authentication method "…": not supported by this build`;
//! * no options (`clientcert=…` and the like are refused), no `@file` and no `include*`
//!   directives (refused with an error naming the line).
//!
//! As PostgreSQL's `load_hba`, every line is checked and all errors are reported; a file with
//! any error is refused as a whole (on reload the caller keeps the old rules).

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use crate::proto::error::{sqlstate, PgError};

/// The rules that apply without `--hba-file`: loopback clients trusted, everyone else refused
/// with the no-entry message.
const DEFAULT_RULES: &str = "\
host replication all 127.0.0.0/8 trust
host replication all ::1/128 trust
";
const DEFAULT_RULES_NAME: &str = "(built-in default: loopback trusted)";

/// One diagnostic about one line of a configuration file, worded as PostgreSQL words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineMessage {
    pub file: String,
    pub line: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Why a configuration file could not be read as text.
pub(crate) enum ReadTextError {
    Io(std::io::Error),
    /// Not UTF-8: the line of the first invalid byte.
    Utf8(LineMessage),
}

/// Reads `path` as UTF-8 text; `file` names it and `what` says what it is ("auth file") in the
/// message for invalid UTF-8. Shared by the hba and auth-file loaders.
pub(crate) fn read_text(path: &Path, file: &str, what: &str) -> Result<String, ReadTextError> {
    let bytes = std::fs::read(path).map_err(ReadTextError::Io)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let line = e
            .as_bytes()
            .get(..valid)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
            + 1;
        ReadTextError::Utf8(LineMessage {
            file: file.to_string(),
            line,
            message: format!("invalid UTF-8 in {what}"),
            hint: None,
        })
    })
}

impl fmt::Display for LineMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (line {} of configuration file \"{}\")",
            self.message, self.line, self.file
        )?;
        if let Some(h) = &self.hint {
            write!(f, " HINT: {h}")?;
        }
        Ok(())
    }
}

/// Why a rules file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum HbaError {
    #[error("could not open file \"{file}\": {error}")]
    Read { file: String, error: std::io::Error },
    #[error("{}", join(.lines))]
    Parse { lines: Vec<LineMessage> },
    #[error("configuration file \"{file}\" contains no entries")]
    Empty { file: String },
}

fn join(lines: &[LineMessage]) -> String {
    lines
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a line's first column says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnType {
    /// `host`: TLS or not.
    Host,
    /// `hostssl`: TLS only.
    HostSsl,
    /// `hostnossl`: plaintext only.
    HostNoSsl,
}

/// The authentication method of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    Reject,
    ScramSha256,
    /// `md5`: run as SCRAM, since every verifier the relay holds is a SCRAM one.
    Md5,
}

impl Method {
    /// The name as written in the file (PostgreSQL's `hba_authname`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::Reject => "reject",
            Method::ScramSha256 => "scram-sha-256",
            Method::Md5 => "md5",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum AddrMatch {
    All,
    SameHost,
    SameNet,
    /// Address and mask of the same family; matches when `(peer ^ addr) & mask == 0`
    /// (PostgreSQL's `pg_range_sockaddr`, which also allows non-contiguous masks).
    Net {
        addr: IpAddr,
        mask: IpAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum UserMatch {
    All,
    Name(String),
}

/// One parsed line.
#[derive(Debug, Clone)]
struct Rule {
    line: usize,
    raw: String,
    conn: ConnType,
    /// True when the database column holds the unquoted keyword `replication`.
    replication: bool,
    users: Vec<UserMatch>,
    addr: AddrMatch,
    method: Method,
}

/// A network interface address of this host, for `samehost` and `samenet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interface {
    pub addr: IpAddr,
    pub netmask: IpAddr,
}

/// The interface addresses of this host (`getifaddrs`), for rules that say `samehost` or
/// `samenet`. PostgreSQL enumerates them per connection; the caller may do the same, or cache
/// them and refresh on SIGHUP. Only needed when [`HbaRules::uses_interfaces`].
pub fn host_interfaces() -> std::io::Result<Vec<Interface>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(a) => Interface {
                addr: IpAddr::V4(a.ip),
                netmask: IpAddr::V4(a.netmask),
            },
            if_addrs::IfAddr::V6(a) => Interface {
                addr: IpAddr::V6(a.ip),
                netmask: IpAddr::V6(a.netmask),
            },
        })
        .collect())
}

/// What the relay knows about a connection when it picks its rule.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The client's address.
    pub peer: IpAddr,
    /// The relay's address the connection arrived at (always counts as `samehost`).
    pub local: IpAddr,
    /// TLS is in use (SSLRequest answered `S`, or direct TLS).
    pub tls: bool,
    /// The user of the StartupMessage.
    pub user: &'a str,
    /// This host's interfaces, for `samehost`/`samenet` (empty: only `local` is known).
    pub interfaces: &'a [Interface],
}

/// The outcome of the first matching line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `trust`: AuthenticationOk without a password.
    Trust { line: usize },
    /// `reject`: FATAL 28000 `pg_hba.conf rejects replication connection …`.
    Reject { line: usize },
    /// `scram-sha-256` or `md5`: a SCRAM exchange decides.
    Scram { line: usize },
    /// No line matched: FATAL 28000 `no pg_hba.conf entry for replication connection …`.
    NoMatch,
}

impl Decision {
    /// The error that ends the connection for `Reject` and `NoMatch`; `None` otherwise.
    pub fn refusal(&self, client: &Client<'_>) -> Option<PgError> {
        match self {
            Decision::Reject { .. } => Some(rejected_error(client.peer, client.user, client.tls)),
            Decision::NoMatch => Some(no_entry_error(client.peer, client.user, client.tls)),
            Decision::Trust { .. } | Decision::Scram { .. } => None,
        }
    }
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 clients) as IPv4.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn encryption_state(tls: bool) -> &'static str {
    if tls {
        "SSL encryption"
    } else {
        "no encryption"
    }
}

/// PostgreSQL's implicit-reject error (`auth.c`, `ClientAuthentication`, `uaImplicitReject`,
/// physical walsender wording).
pub fn no_entry_error(peer: IpAddr, user: &str, tls: bool) -> PgError {
    PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        format!(
            "no pg_hba.conf entry for replication connection from host \"{}\", user \"{}\", {}",
            normalize(peer),
            user,
            encryption_state(tls)
        ),
    )
}

/// PostgreSQL's explicit-reject error (`auth.c`, `ClientAuthentication`, `uaReject`).
pub fn rejected_error(peer: IpAddr, user: &str, tls: bool) -> PgError {
    PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        format!(
            "pg_hba.conf rejects replication connection for host \"{}\", user \"{}\", {}",
            normalize(peer),
            user,
            encryption_state(tls)
        ),
    )
}

/// A parsed rules file (or the built-in default).
#[derive(Debug, Clone)]
pub struct HbaRules {
    file: String,
    rules: Vec<Rule>,
    warnings: Vec<LineMessage>,
}

impl HbaRules {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<HbaRules, HbaError> {
        let file = path.display().to_string();
        match read_text(path, &file, "configuration file") {
            Ok(text) => HbaRules::parse(&text, &file),
            Err(ReadTextError::Io(error)) => Err(HbaError::Read { file, error }),
            Err(ReadTextError::Utf8(m)) => Err(HbaError::Parse { lines: vec![m] }),
        }
    }

    /// Parses the text of a rules file; `file` names it in messages.
    pub fn parse(text: &str, file: &str) -> Result<HbaRules, HbaError> {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut saw_entry = false;
        for (line, raw) in logical_lines(text) {
            let fields = tokenize_line(&raw);
            let msg = |message: String, hint: Option<&str>| LineMessage {
                file: file.to_string(),
                line,
                message,
                hint: hint.map(str::to_string),
            };
            let fields = match fields {
                Ok(f) if f.is_empty() => continue,
                Ok(f) => f,
                Err(e) => {
                    errors.push(msg(e, None));
                    continue;
                }
            };
            saw_entry = true;
            match parse_line(&fields) {
                Ok(Parsed::Rule(r)) => rules.push(Rule {
                    line,
                    raw: raw.clone(),
                    conn: r.conn,
                    replication: r.replication,
                    users: r.users,
                    addr: r.addr,
                    method: r.method,
                }),
                Ok(Parsed::Ignored(why)) => warnings.push(msg(why, None)),
                Err(LineError { message, hint }) => errors.push(msg(message, hint.as_deref())),
            }
        }
        if !errors.is_empty() {
            return Err(HbaError::Parse { lines: errors });
        }
        if !saw_entry {
            return Err(HbaError::Empty { file: file.into() });
        }
        Ok(HbaRules {
            file: file.into(),
            rules,
            warnings,
        })
    }

    /// The rules without `--hba-file`: `host replication all 127.0.0.0/8 trust` and
    /// `host replication all ::1/128 trust`, so loopback clients are trusted and every other
    /// address gets today's `no pg_hba.conf entry …` refusal.
    pub fn loopback_default() -> HbaRules {
        match HbaRules::parse(DEFAULT_RULES, DEFAULT_RULES_NAME) {
            Ok(r) => r,
            // The built-in text parses (tested); an empty rule set refuses everyone.
            Err(_) => HbaRules {
                file: DEFAULT_RULES_NAME.into(),
                rules: Vec::new(),
                warnings: Vec::new(),
            },
        }
    }

    /// The file the rules came from, as given.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Number of rules in force (ignored lines excluded).
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Lines that were ignored (`local`, `hostgssenc`), to log at load.
    pub fn warnings(&self) -> &[LineMessage] {
        &self.warnings
    }

    /// PostgreSQL's load-time warning for `hostssl` lines when TLS is not configured
    /// (`hostssl record cannot match because SSL is disabled`).
    pub fn tls_warnings(&self, tls_configured: bool) -> Vec<LineMessage> {
        if tls_configured {
            return Vec::new();
        }
        self.rules
            .iter()
            .filter(|r| r.conn == ConnType::HostSsl)
            .map(|r| LineMessage {
                file: self.file.clone(),
                line: r.line,
                message: "hostssl record cannot match because SSL is disabled".into(),
                hint: Some("Set --tls-cert and --tls-key.".into()),
            })
            .collect()
    }

    /// True when some rule says `samehost` or `samenet`, so the caller needs
    /// [`host_interfaces`].
    pub fn uses_interfaces(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r.addr, AddrMatch::SameHost | AddrMatch::SameNet))
    }

    /// The method of the rule on `line`, if there is one.
    pub fn method_of(&self, line: usize) -> Option<Method> {
        self.rules.iter().find(|r| r.line == line).map(|r| r.method)
    }

    /// PostgreSQL's log detail for an authentication failure:
    /// `Connection matched file "…" line N: "…"`.
    pub fn matched_line_detail(&self, line: usize) -> Option<String> {
        self.rules.iter().find(|r| r.line == line).map(|r| {
            format!(
                "Connection matched file \"{}\" line {}: \"{}\"",
                self.file, r.line, r.raw
            )
        })
    }

    /// The first matching line decides (PostgreSQL's `check_hba`).
    pub fn decide(&self, client: &Client<'_>) -> Decision {
        for r in &self.rules {
            match r.conn {
                ConnType::HostSsl if !client.tls => continue,
                ConnType::HostNoSsl if client.tls => continue,
                _ => {}
            }
            if !addr_matches(&r.addr, client) {
                continue;
            }
            if !r.replication {
                continue;
            }
            if !r.users.iter().any(|u| match u {
                UserMatch::All => true,
                UserMatch::Name(n) => n == client.user,
            }) {
                continue;
            }
            return match r.method {
                Method::Trust => Decision::Trust { line: r.line },
                Method::Reject => Decision::Reject { line: r.line },
                Method::ScramSha256 | Method::Md5 => Decision::Scram { line: r.line },
            };
        }
        Decision::NoMatch
    }
}

fn ip_bits(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

/// `(peer ^ addr) & mask == 0`, same family only.
fn in_range(peer: IpAddr, addr: IpAddr, mask: IpAddr) -> bool {
    let (pf, p) = ip_bits(peer);
    let (af, a) = ip_bits(addr);
    let (mf, m) = ip_bits(mask);
    pf == af && af == mf && (p ^ a) & m == 0
}

fn addr_matches(m: &AddrMatch, c: &Client<'_>) -> bool {
    // Compare both the address as it came and, for a mapped one, its IPv4 form.
    let peers = [c.peer, normalize(c.peer)];
    match m {
        AddrMatch::All => true,
        AddrMatch::Net { addr, mask } => peers.iter().any(|&p| in_range(p, *addr, *mask)),
        AddrMatch::SameHost => peers.iter().any(|&p| {
            p == c.local || p == normalize(c.local) || c.interfaces.iter().any(|i| i.addr == p)
        }),
        AddrMatch::SameNet => peers
            .iter()
            .any(|&p| c.interfaces.iter().any(|i| in_range(p, i.addr, i.netmask))),
    }
}

/// Splits the file into logical lines (backslash continuation as in `tokenize_auth_file`):
/// `(number of the first physical line, text without line ends)`.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pieces = text.split('\n');
    let mut number = 1;
    loop {
        let mut buf = String::new();
        let mut last_backslash_len = 0;
        let mut continuations = 0;
        let mut got = false;
        for piece in pieces.by_ref() {
            got = true;
            buf.push_str(piece);
            while buf.ends_with('\n') || buf.ends_with('\r') {
                buf.pop();
            }
            if buf.len() > last_backslash_len && buf.ends_with('\\') {
                buf.pop();
                last_backslash_len = buf.len();
                continuations += 1;
                continue;
            }
            break;
        }
        if !got {
            break;
        }
        out.push((number, buf));
        number += continuations + 1;
    }
    out
}

/// One token: its text with quotes removed, and whether it began with a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    text: String,
    quoted: bool,
}

impl Token {
    fn is_keyword(&self, k: &str) -> bool {
        !self.quoted && self.text == k
    }
}

fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t' || c == b'\r'
}

/// PostgreSQL's `next_token`: the next token from `line` at `*pos` and whether a comma ended
/// it, or `None` at the end of the line (or a comment).
fn next_token(line: &[u8], pos: &mut usize) -> Option<(Token, bool)> {
    let at = |i: usize| line.get(i).copied().unwrap_or(0);
    let mut buf: Vec<u8> = Vec::new();
    let mut in_quote = false;
    let mut was_quote = false;
    let mut saw_quote = false;
    let mut initial_quote = false;
    let mut comma = false;

    let mut c = at(*pos);
    *pos += 1;
    while c != 0 && (is_blank(c) || c == b',') {
        c = at(*pos);
        *pos += 1;
    }
    while c != 0 && (!is_blank(c) || in_quote) {
        if c == b'#' && !in_quote {
            loop {
                c = at(*pos);
                *pos += 1;
                if c == 0 {
                    break;
                }
            }
            break;
        }
        if c == b',' && !in_quote {
            comma = true;
            break;
        }
        if c != b'"' || was_quote {
            buf.push(c);
        }
        if in_quote && c == b'"' {
            was_quote = !was_quote;
        } else {
            was_quote = false;
        }
        if c == b'"' {
            in_quote = !in_quote;
            saw_quote = true;
            if buf.is_empty() {
                initial_quote = true;
            }
        }
        c = at(*pos);
        *pos += 1;
    }
    // Un-eat the character after the token.
    *pos = pos.saturating_sub(1);
    if !saw_quote && buf.is_empty() {
        return None;
    }
    // Only ASCII bytes were removed, so the text stays valid UTF-8.
    let text = String::from_utf8_lossy(&buf).into_owned();
    Some((
        Token {
            text,
            quoted: initial_quote,
        },
        comma,
    ))
}

/// The fields of one logical line (each a comma list of tokens), or an error for `@file`.
fn tokenize_line(line: &str) -> Result<Vec<Vec<Token>>, String> {
    let bytes = line.as_bytes();
    let mut pos = 0;
    let mut fields = Vec::new();
    while bytes.get(pos).is_some_and(|&c| c != 0) {
        let mut field = Vec::new();
        while let Some((tok, comma)) = next_token(bytes, &mut pos) {
            if !tok.quoted && tok.text.len() > 1 && tok.text.starts_with('@') {
                return Err(format!(
                    "file inclusion (\"{}\") is not supported by walrelay; list the names on the line",
                    tok.text
                ));
            }
            field.push(tok);
            if !comma {
                break;
            }
        }
        if !field.is_empty() {
            fields.push(field);
        }
    }
    if let [first, second] = fields.as_slice() {
        if let (Some(a), Some(_)) = (first.first(), second.first()) {
            if matches!(
                a.text.as_str(),
                "include" | "include_if_exists" | "include_dir"
            ) {
                return Err(format!(
                    "\"{}\" directives are not supported by walrelay",
                    a.text
                ));
            }
        }
    }
    Ok(fields)
}

struct LineError {
    message: String,
    hint: Option<String>,
}

fn err(message: impl Into<String>) -> LineError {
    LineError {
        message: message.into(),
        hint: None,
    }
}

fn err_hint(message: impl Into<String>, hint: &str) -> LineError {
    LineError {
        message: message.into(),
        hint: Some(hint.into()),
    }
}

struct ParsedRule {
    conn: ConnType,
    replication: bool,
    users: Vec<UserMatch>,
    addr: AddrMatch,
    method: Method,
}

enum Parsed {
    Rule(ParsedRule),
    /// A line that can never match here, with the warning to log.
    Ignored(String),
}

/// The methods PostgreSQL knows that the relay does not implement.
const OTHER_METHODS: &[&str] = &[
    "ident", "password", "gss", "sspi", "pam", "bsd", "ldap", "cert", "radius", "oauth",
];

/// Option names PostgreSQL knows (`parse_hba_auth_opt`), all refused here.
const KNOWN_OPTIONS: &[&str] = &[
    "map",
    "clientcert",
    "clientname",
    "pamservice",
    "pam_use_hostname",
    "ldapurl",
    "ldaptls",
    "ldapscheme",
    "ldapserver",
    "ldapport",
    "ldapbinddn",
    "ldapbindpasswd",
    "ldapsearchattribute",
    "ldapsearchfilter",
    "ldapbasedn",
    "ldapprefix",
    "ldapsuffix",
    "krb_realm",
    "include_realm",
    "compat_realm",
    "upn_username",
    "radiusservers",
    "radiusports",
    "radiussecrets",
    "radiusidentifiers",
    "issuer",
    "scope",
    "validator",
    "delegate_ident_mapping",
];

/// PostgreSQL's `parse_hba_line`, narrowed to what the relay supports.
fn parse_line(fields: &[Vec<Token>]) -> Result<Parsed, LineError> {
    let mut fields = fields.iter();
    let Some(first) = fields.next() else {
        return Err(err("empty line"));
    };
    let conn_tok = match first.as_slice() {
        [t] => t,
        _ => {
            return Err(err_hint(
                "multiple values specified for connection type",
                "Specify exactly one connection type per line.",
            ))
        }
    };
    let mut ignore: Option<String> = None;
    let conn = match conn_tok.text.as_str() {
        "local" => {
            return Ok(Parsed::Ignored(
                "local record ignored: walrelay has no Unix-domain socket".into(),
            ))
        }
        "host" | "hostnogssenc" => ConnType::Host,
        "hostssl" => ConnType::HostSsl,
        "hostnossl" => ConnType::HostNoSsl,
        "hostgssenc" => {
            ignore = Some(
                "hostgssenc record cannot match because GSSAPI is not supported by this build"
                    .into(),
            );
            ConnType::Host
        }
        other => return Err(err(format!("invalid connection type \"{other}\""))),
    };

    let Some(databases) = fields.next() else {
        return Err(err("end-of-line before database specification"));
    };
    // Physical walsenders match only the keyword (check_db); the rest never matches.
    let replication = databases.iter().any(|t| t.is_keyword("replication"));

    let Some(roles) = fields.next() else {
        return Err(err("end-of-line before role specification"));
    };
    let mut users = Vec::new();
    for t in roles {
        if t.is_keyword("all") {
            users.push(UserMatch::All);
        } else if !t.quoted && t.text.starts_with('+') {
            return Err(err(format!(
                "group membership (\"{}\") is not supported by walrelay; list the user names",
                t.text
            )));
        } else if t.text.starts_with('/') {
            return Err(err(format!(
                "regular expression \"{}\" in the user field is not supported by walrelay",
                t.text
            )));
        } else {
            users.push(UserMatch::Name(t.text.clone()));
        }
    }

    let Some(addr_field) = fields.next() else {
        return Err(err("end-of-line before IP address specification"));
    };
    let addr_tok = match addr_field.as_slice() {
        [t] => t,
        _ => {
            return Err(err_hint(
                "multiple values specified for host address",
                "Specify one address range per line.",
            ))
        }
    };
    let addr = if addr_tok.is_keyword("all") {
        AddrMatch::All
    } else if addr_tok.is_keyword("samehost") {
        AddrMatch::SameHost
    } else if addr_tok.is_keyword("samenet") {
        AddrMatch::SameNet
    } else {
        let text = addr_tok.text.as_str();
        let (ip_text, cidr) = match text.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let Ok(ip) = ip_text.parse::<IpAddr>() else {
            if cidr.is_some() {
                return Err(err(format!(
                    "specifying both host name and CIDR mask is invalid: \"{text}\""
                )));
            }
            return Err(err_hint(
                format!("host name \"{text}\" in the address field is not supported by walrelay"),
                "Give an IP address with a CIDR mask, or all.",
            ));
        };
        match cidr {
            Some(bits) => {
                let mask = cidr_mask(ip, bits)
                    .ok_or_else(|| err(format!("invalid CIDR mask in address \"{text}\"")))?;
                AddrMatch::Net { addr: ip, mask }
            }
            None => {
                let Some(mask_field) = fields.next() else {
                    return Err(err_hint(
                        "end-of-line before netmask specification",
                        "Specify an address range in CIDR notation, or provide a separate netmask.",
                    ));
                };
                let mask_tok = match mask_field.as_slice() {
                    [t] => t,
                    _ => return Err(err("multiple values specified for netmask")),
                };
                let Ok(mask) = mask_tok.text.parse::<IpAddr>() else {
                    return Err(err(format!(
                        "invalid IP mask \"{}\": Name or service not known",
                        mask_tok.text
                    )));
                };
                if mask.is_ipv4() != ip.is_ipv4() {
                    return Err(err("IP address and mask do not match"));
                }
                AddrMatch::Net { addr: ip, mask }
            }
        }
    };

    let Some(method_field) = fields.next() else {
        return Err(err("end-of-line before authentication method"));
    };
    let method_tok = match method_field.as_slice() {
        [t] => t,
        _ => {
            return Err(err_hint(
                "multiple values specified for authentication type",
                "Specify exactly one authentication type per line.",
            ))
        }
    };
    let method = match method_tok.text.as_str() {
        "trust" => Method::Trust,
        "reject" => Method::Reject,
        "scram-sha-256" => Method::ScramSha256,
        "md5" => Method::Md5,
        "peer" => {
            return Err(err(
                "peer authentication is only supported on local sockets",
            ))
        }
        m if OTHER_METHODS.contains(&m) => {
            return Err(err(format!(
                "invalid authentication method \"{m}\": not supported by this build"
            )))
        }
        m => return Err(err(format!("invalid authentication method \"{m}\""))),
    };

    // Every option is refused; the first one names the problem.
    if let Some(t) = fields.flatten().next() {
        let Some((name, _value)) = t.text.split_once('=') else {
            return Err(err(format!(
                "authentication option not in name=value format: {}",
                t.text
            )));
        };
        if KNOWN_OPTIONS.contains(&name) {
            return Err(err(format!(
                "authentication option \"{name}\" is not supported by walrelay"
            )));
        }
        return Err(err(format!(
            "unrecognized authentication option name: \"{name}\""
        )));
    }

    if let Some(why) = ignore {
        return Ok(Parsed::Ignored(why));
    }
    Ok(Parsed::Rule(ParsedRule {
        conn,
        replication,
        users,
        addr,
        method,
    }))
}

/// PostgreSQL's `pg_sockaddr_cidr_mask`: a decimal bit count within the family's width.
fn cidr_mask(ip: IpAddr, bits: &str) -> Option<IpAddr> {
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = bits.parse().ok()?;
    match ip {
        IpAddr::V4(_) if n <= 32 => {
            let m = u32::MAX.checked_shl(32 - n).unwrap_or(0);
            Some(IpAddr::V4(m.into()))
        }
        IpAddr::V6(_) if n <= 128 => {
            let m = u128::MAX.checked_shl(128 - n).unwrap_or(0);
            Some(IpAddr::V6(m.into()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_that_is_not_utf8_names_the_line_and_one_missing_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg_hba.conf");
        std::fs::write(
            &path,
            b"host replication all 127.0.0.1/32 trust\n# caf\xe9\n",
        )
        .unwrap();
        match super::HbaRules::load(&path) {
            Err(super::HbaError::Parse { lines }) => {
                assert_eq!(lines.len(), 1);
                assert_eq!(lines[0].line, 2);
                assert_eq!(lines[0].message, "invalid UTF-8 in configuration file");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
        let missing = dir.path().join("nope");
        let e = super::HbaRules::load(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("could not open file \"{}\"", missing.display())),
            "{e}"
        );
        let users = dir.path().join("userlist.txt");
        std::fs::write(&users, b"\"a\" \"p\"\n\"\xff\" \"q\"\n").unwrap();
        let e = super::super::users::UserList::load(&users)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid UTF-8 in auth file"), "{e}");
    }

    use super::*;

    const NO_IFACES: &[Interface] = &[];

    fn client<'a>(peer: &str, tls: bool, user: &'a str) -> Client<'a> {
        Client {
            peer: peer.parse().unwrap(),
            local: "10.9.9.9".parse().unwrap(),
            tls,
            user,
            interfaces: NO_IFACES,
        }
    }

    fn rules(text: &str) -> HbaRules {
        HbaRules::parse(text, "hba.conf").unwrap()
    }

    fn errors(text: &str) -> Vec<(usize, String)> {
        match HbaRules::parse(text, "hba.conf") {
            Err(HbaError::Parse { lines }) => {
                lines.into_iter().map(|l| (l.line, l.message)).collect()
            }
            Err(HbaError::Empty { .. }) => vec![(0, "empty".into())],
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn tokenizer_follows_hba_c() {
        let toks = |s: &str| -> Vec<Vec<(String, bool)>> {
            tokenize_line(s)
                .unwrap()
                .into_iter()
                .map(|f| f.into_iter().map(|t| (t.text, t.quoted)).collect())
                .collect()
        };
        let s = |x: &str| (x.to_string(), false);
        let q = |x: &str| (x.to_string(), true);
        assert_eq!(
            toks("host  replication\ta,b, c 10.0.0.0/8 trust # comment"),
            vec![
                vec![s("host")],
                vec![s("replication")],
                vec![s("a"), s("b"), s("c")],
                vec![s("10.0.0.0/8")],
                vec![s("trust")],
            ]
        );
        // Quotes protect blanks, commas and '#'; "" is a literal quote; "all" is a name.
        assert_eq!(
            toks(r#"host "all" "a b,c#d" "x""y" 1.2.3.4/32 trust"#),
            vec![
                vec![s("host")],
                vec![q("all")],
                vec![q("a b,c#d")],
                vec![q("x\"y")],
                vec![s("1.2.3.4/32")],
                vec![s("trust")],
            ]
        );
        // A quote after the first character does not make the token quoted (hba.c quirk).
        assert_eq!(toks(r#"al"l""#), vec![vec![s("all")]]);
        // "a ,b" is two fields: the comma after a blank starts a new one.
        assert_eq!(toks("a ,b"), vec![vec![s("a")], vec![s("b")]]);
        // An empty quoted token exists.
        assert_eq!(toks(r#""""#), vec![vec![q("")]]);
        assert_eq!(toks("# only a comment"), Vec::<Vec<(String, bool)>>::new());
        assert_eq!(toks("   "), Vec::<Vec<(String, bool)>>::new());
        // Unterminated quote: the rest of the line.
        assert_eq!(toks(r#""abc def"#), vec![vec![q("abc def")]]);
    }

    #[test]
    fn continuation_lines_keep_the_first_line_number() {
        let l = logical_lines("a \\\nb\r\nc\\\\\n\nd\\");
        assert_eq!(
            l,
            vec![
                (1, "a b".to_string()),
                // "c\\" then an empty line: one backslash continues onto the empty line,
                // which ends the logical line (hba.c's last_backslash_buflen rule).
                (3, "c\\".to_string()),
                (5, "d".to_string()),
            ]
        );
        let r = rules("# x\nhost replication \\\n  alice 0.0.0.0/0 \\\n  reject\nhost replication all all trust\n");
        assert_eq!(
            r.decide(&client("192.0.2.1", false, "alice")),
            Decision::Reject { line: 2 }
        );
        assert_eq!(
            r.decide(&client("192.0.2.1", false, "bob")),
            Decision::Trust { line: 5 }
        );
    }

    #[test]
    fn first_match_wins_and_columns_match_as_postgres() {
        let r = rules(
            "\
local   all         all                       peer
host    all         all       0.0.0.0/0       trust
host    replication bob       192.168.1.0/24  reject
hostssl replication all       192.168.0.0/16  scram-sha-256
hostnossl replication \"carol\",dave 192.168.0.0 255.255.0.0 md5
host    replication all       ::1/128         trust
host    \"replication\" all   all             trust
",
        );
        assert_eq!(r.len(), 6, "the local line is ignored");
        assert_eq!(r.warnings().len(), 1);
        assert_eq!(r.warnings()[0].line, 1);
        // Line 2's database "all" never matches a physical replication connection.
        assert_eq!(
            r.decide(&client("192.168.1.7", false, "bob")),
            Decision::Reject { line: 3 }
        );
        assert_eq!(
            r.decide(&client("192.168.1.7", true, "bob")),
            Decision::Reject { line: 3 }
        );
        assert_eq!(
            r.decide(&client("192.168.5.5", true, "x")),
            Decision::Scram { line: 4 }
        );
        assert_eq!(
            r.decide(&client("192.168.5.5", false, "carol")),
            Decision::Scram { line: 5 }
        );
        assert_eq!(
            r.decide(&client("192.168.5.5", false, "dave")),
            Decision::Scram { line: 5 }
        );
        assert_eq!(
            r.decide(&client("192.168.5.5", false, "Dave")),
            Decision::NoMatch
        );
        assert_eq!(
            r.decide(&client("::1", false, "x")),
            Decision::Trust { line: 6 }
        );
        // Quoted "replication" is a database name, not the keyword.
        assert_eq!(
            r.decide(&client("203.0.113.1", false, "x")),
            Decision::NoMatch
        );
        assert_eq!(r.method_of(5), Some(Method::Md5));
        assert_eq!(
            r.matched_line_detail(3).unwrap(),
            "Connection matched file \"hba.conf\" line 3: \"host    replication bob       192.168.1.0/24  reject\""
        );
    }

    #[test]
    fn mapped_ipv4_peers_match_ipv4_rules() {
        let r = rules("host replication all 10.0.0.0/8 trust\n");
        assert_eq!(
            r.decide(&client("::ffff:10.1.2.3", false, "u")),
            Decision::Trust { line: 1 }
        );
        let e = no_entry_error("::ffff:192.0.2.9".parse().unwrap(), "u", false);
        assert!(e.message.contains("host \"192.0.2.9\""), "{}", e.message);
    }

    #[test]
    fn samehost_and_samenet() {
        let r = rules(
            "host replication all samehost trust\nhost replication all samenet scram-sha-256\n",
        );
        assert!(r.uses_interfaces());
        let ifaces = [Interface {
            addr: "172.16.5.1".parse().unwrap(),
            netmask: "255.255.255.0".parse().unwrap(),
        }];
        let mut c = client("172.16.5.1", false, "u");
        c.interfaces = &ifaces;
        assert_eq!(r.decide(&c), Decision::Trust { line: 1 });
        c.peer = "10.9.9.9".parse().unwrap(); // the local address itself
        assert_eq!(r.decide(&c), Decision::Trust { line: 1 });
        c.peer = "172.16.5.77".parse().unwrap();
        assert_eq!(r.decide(&c), Decision::Scram { line: 2 });
        c.peer = "172.16.6.77".parse().unwrap();
        assert_eq!(r.decide(&c), Decision::NoMatch);
        // The real enumeration works here and includes loopback.
        let real = host_interfaces().unwrap();
        assert!(real.iter().any(|i| i.addr.is_loopback()), "{real:?}");
    }

    #[test]
    fn refusal_messages_are_postgres_words() {
        let r = rules("host replication bad 0.0.0.0/0 reject\n");
        let c = client("192.0.2.1", false, "bad");
        let d = r.decide(&c);
        let e = d.refusal(&c).unwrap();
        assert_eq!(e.code, "28000");
        assert_eq!(
            e.message,
            "pg_hba.conf rejects replication connection for host \"192.0.2.1\", user \"bad\", no encryption"
        );
        let c = client("192.0.2.1", true, "other");
        let e = r.decide(&c).refusal(&c).unwrap();
        assert_eq!(
            e.message,
            "no pg_hba.conf entry for replication connection from host \"192.0.2.1\", user \"other\", SSL encryption"
        );
        assert_eq!(e.severity, crate::proto::error::Severity::Fatal);
        assert!(Decision::Trust { line: 1 }.refusal(&c).is_none());
    }

    #[test]
    fn default_rules_trust_loopback_only() {
        let r = HbaRules::loopback_default();
        assert_eq!(r.len(), 2);
        for peer in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(
                matches!(
                    r.decide(&client(peer, false, "any")),
                    Decision::Trust { .. }
                ),
                "{peer}"
            );
            assert!(matches!(
                r.decide(&client(peer, true, "any")),
                Decision::Trust { .. }
            ));
        }
        let c = client("10.0.0.8", false, "rep");
        let d = r.decide(&c);
        assert_eq!(d, Decision::NoMatch);
        // The same words the downstream session used before these rules existed.
        assert_eq!(
            d.refusal(&c).unwrap().message,
            "no pg_hba.conf entry for replication connection from host \"10.0.0.8\", user \"rep\", no encryption"
        );
    }

    #[test]
    fn errors_name_the_line_in_postgres_words() {
        let e = errors(
            "\
hostx replication all all trust
host,hostssl replication all all trust
host
host replication
host replication all
host replication all 10.0.0.0/33 trust
host replication all 10.0.0.0
host replication all 10.0.0.0 255.0.0.0,255.0.0.0 trust
host replication all 10.0.0.0 ffff:: trust
host replication all 10.0.0.0 nonsense trust
host replication all db.example.com trust
host replication all db.example.com/24 trust
host replication all 10.0.0.0/8
host replication all 10.0.0.0/8 trust,reject
host replication all 10.0.0.0/8 ldap
host replication all 10.0.0.0/8 bogus
host replication all 10.0.0.0/8 peer
host replication all 10.0.0.0/8 trust clientcert=verify-ca
host replication all 10.0.0.0/8 trust foo=bar
host replication all 10.0.0.0/8 trust junk
host replication +admins 10.0.0.0/8 trust
host replication /^rep.*$ 10.0.0.0/8 trust
host replication @users 10.0.0.0/8 trust
include other.conf
host replication all 10.0.0.0/8,10.1.0.0/16 trust
",
        );
        let want: Vec<(usize, &str)> = vec![
            (1, "invalid connection type \"hostx\""),
            (2, "multiple values specified for connection type"),
            (3, "end-of-line before database specification"),
            (4, "end-of-line before role specification"),
            (5, "end-of-line before IP address specification"),
            (6, "invalid CIDR mask in address \"10.0.0.0/33\""),
            (7, "end-of-line before netmask specification"),
            (8, "multiple values specified for netmask"),
            (9, "IP address and mask do not match"),
            (10, "invalid IP mask \"nonsense\": Name or service not known"),
            (11, "host name \"db.example.com\" in the address field is not supported by walrelay"),
            (12, "specifying both host name and CIDR mask is invalid: \"db.example.com/24\""),
            (13, "end-of-line before authentication method"),
            (14, "multiple values specified for authentication type"),
            (15, "invalid authentication method \"ldap\": not supported by this build"),
            (16, "invalid authentication method \"bogus\""),
            (17, "peer authentication is only supported on local sockets"),
            (18, "authentication option \"clientcert\" is not supported by walrelay"),
            (19, "unrecognized authentication option name: \"foo\""),
            (20, "authentication option not in name=value format: junk"),
            (21, "group membership (\"+admins\") is not supported by walrelay; list the user names"),
            (22, "regular expression \"/^rep.*$\" in the user field is not supported by walrelay"),
            (23, "file inclusion (\"@users\") is not supported by walrelay; list the names on the line"),
            (24, "\"include\" directives are not supported by walrelay"),
            (25, "multiple values specified for host address"),
        ];
        let got: Vec<(usize, &str)> = e.iter().map(|(l, m)| (*l, m.as_str())).collect();
        assert_eq!(got, want);
        let err = HbaRules::parse(
            "hostx replication all all trust\n",
            "/etc/walrelay/hba.conf",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid connection type \"hostx\" (line 1 of configuration file \"/etc/walrelay/hba.conf\")"
        );
    }

    #[test]
    fn empty_files_and_ignored_lines() {
        assert!(matches!(
            HbaRules::parse("# nothing\n\n", "f"),
            Err(HbaError::Empty { .. })
        ));
        // Only ignored lines: accepted (they are entries), but nothing matches.
        let r = rules("local all all peer\nhostgssenc replication all all trust\n");
        assert!(r.is_empty());
        assert_eq!(r.warnings().len(), 2);
        assert_eq!(
            r.decide(&client("127.0.0.1", false, "u")),
            Decision::NoMatch
        );
        let r = rules("hostssl replication all all trust\n");
        assert_eq!(r.tls_warnings(false).len(), 1);
        assert!(r.tls_warnings(true).is_empty());
        assert_eq!(
            r.decide(&client("127.0.0.1", false, "u")),
            Decision::NoMatch
        );
    }

    #[test]
    fn cidr_masks() {
        assert_eq!(
            cidr_mask("10.0.0.0".parse().unwrap(), "0"),
            Some("0.0.0.0".parse().unwrap())
        );
        assert_eq!(
            cidr_mask("10.0.0.0".parse().unwrap(), "32"),
            Some("255.255.255.255".parse().unwrap())
        );
        assert_eq!(
            cidr_mask("10.0.0.0".parse().unwrap(), "20"),
            Some("255.255.240.0".parse().unwrap())
        );
        assert_eq!(
            cidr_mask("::".parse().unwrap(), "128"),
            Some(IpAddr::V6(u128::MAX.into()))
        );
        assert_eq!(cidr_mask("::".parse().unwrap(), "129"), None);
        assert_eq!(cidr_mask("::".parse().unwrap(), ""), None);
        assert_eq!(cidr_mask("::".parse().unwrap(), "+8"), None);
        assert_eq!(
            cidr_mask("10.0.0.0".parse().unwrap(), "99999999999999999999"),
            None
        );
        let r = rules("host replication all 10.0.0.1/0 trust\n");
        assert!(matches!(
            r.decide(&client("203.0.113.1", false, "u")),
            Decision::Trust { .. }
        ));
        assert_eq!(
            r.decide(&client("2001:db8::1", false, "u")),
            Decision::NoMatch
        );
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "\"",
            "\\",
            "\0host",
            "host \"\0\" x",
            ",,,,",
            "host replication all 1.2.3.4/ trust",
            "h\u{00e9}st",
        ] {
            let _ = HbaRules::parse(text, "f");
        }
    }
}
