//! The replication command grammar (`repl_gram.y` / `repl_scanner.l`) for a physical walsender.
//!
//! Keywords are upper-case and case-sensitive; unquoted identifiers are down-cased, quoted ones
//! keep their case (both truncated to 63 bytes, NAMEDATALEN-1); an optional trailing `;` is
//! allowed. Text whose first token is not a replication keyword is SQL, which a physical
//! walsender refuses (0A000), except that a query of only whitespace and `;` is
//! [`Command::Empty`].

use crate::wal::{Lsn, TimeLineId};

/// A parsed replication command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    IdentifySystem,
    /// `SHOW name`: the name down-cased unless quoted.
    Show(String),
    TimelineHistory(TimeLineId),
    /// `READ_REPLICATION_SLOT slot`.
    ReadReplicationSlot(String),
    /// `CREATE_REPLICATION_SLOT slot [TEMPORARY] PHYSICAL [RESERVE_WAL | ( options )]`.
    CreatePhysicalSlot {
        name: String,
        temporary: bool,
        reserve_wal: bool,
    },
    /// `CREATE_REPLICATION_SLOT slot [TEMPORARY] LOGICAL plugin ...`: parsed only to be refused.
    CreateLogicalSlot {
        name: String,
    },
    /// `DROP_REPLICATION_SLOT slot [WAIT]`.
    DropSlot {
        name: String,
        wait: bool,
    },
    /// `START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]`.
    StartReplication {
        slot: Option<String>,
        start: Lsn,
        timeline: Option<TimeLineId>,
    },
    /// `START_REPLICATION SLOT s LOGICAL ...`: parsed only to be refused.
    StartLogicalReplication {
        slot: String,
    },
    /// `BASE_BACKUP ...`: recognised, not supported by a relay (it has no data directory).
    BaseBackup,
    /// `ALTER_REPLICATION_SLOT ...` (17+): recognised, logical-only, refused.
    AlterReplicationSlot,
    /// `UPLOAD_MANIFEST` (17+): recognised, refused.
    UploadManifest,
    /// An empty query string (only whitespace / `;`): answered with EmptyQueryResponse.
    Empty,
}

/// Why a query string is not a command the relay can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The first token is not a replication keyword: SQL on a physical replication connection.
    #[error("cannot execute SQL commands in WAL sender for physical replication")]
    NotReplicationCommand,
    /// A replication keyword followed by something the grammar does not accept.
    #[error("syntax error")]
    Syntax,
    /// `TIMELINE 0` / `TIMELINE_HISTORY 0`.
    #[error("invalid timeline {0}")]
    InvalidTimeline(u64),
}

/// NAMEDATALEN - 1: identifiers longer than this are cut, as `truncate_identifier` does.
const MAX_IDENT_BYTES: usize = 63;

/// The keywords that make a query a replication command
/// (`replication_scanner_is_replication_command`).
#[rustfmt::skip]
const COMMANDS: &[&str] = &[
    "IDENTIFY_SYSTEM", "SHOW", "TIMELINE_HISTORY", "READ_REPLICATION_SLOT",
    "CREATE_REPLICATION_SLOT", "DROP_REPLICATION_SLOT", "START_REPLICATION", "BASE_BACKUP",
    "ALTER_REPLICATION_SLOT", "UPLOAD_MANIFEST",
];

/// The rest of `repl_scanner.l`'s keywords; any other word is an identifier.
#[rustfmt::skip]
const KEYWORDS: &[&str] = &[
    "SLOT", "PHYSICAL", "LOGICAL", "TIMELINE", "TEMPORARY", "RESERVE_WAL", "EXPORT_SNAPSHOT",
    "NOEXPORT_SNAPSHOT", "USE_SNAPSHOT", "WAIT", "TWO_PHASE",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Kw(&'static str),
    Ident(String),
    Str(String),
    /// UCONST; `None` when it does not fit in 32 bits.
    Num(Option<u32>),
    /// RECPTR; `None` when a half has more than 8 hex digits.
    Lsn(Option<Lsn>),
    /// Any other character stands for itself (`(`, `)`, `,`, `;`, `.`, ...).
    Char(char),
}

/// `[ \t\n\r\f\v]`, which is narrower than Rust's notion of whitespace.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0B' | '\x0C')
}

/// The scanner works on bytes and treats every byte >= 0x80 as a letter, so any non-ASCII
/// character can start or continue an identifier.
fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT_BYTES {
        let mut end = MAX_IDENT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn hex_run(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_hexdigit).count()
}

/// A lazy scanner: like flex, it only lexes as far as the grammar has asked, which matters
/// because SQL is recognised from its first token alone, whatever follows it.
struct Lexer<'a> {
    rest: &'a str,
}

impl Lexer<'_> {
    fn take(&mut self, len: usize) -> &str {
        let (head, tail) = self.rest.split_at_checked(len).unwrap_or((self.rest, ""));
        self.rest = tail;
        head
    }

    fn next_token(&mut self) -> Result<Option<Tok>, CommandError> {
        self.rest = self.rest.trim_start_matches(is_space);
        let Some(c) = self.rest.chars().next() else {
            return Ok(None);
        };
        // Longest match, as flex does: `1A/FF` is an LSN, `12ab` is UCONST 12 then `ab`.
        let hi = hex_run(self.rest);
        let lo = self.rest.get(hi + 1..).map_or(0, hex_run);
        if hi > 0 && lo > 0 && self.rest.as_bytes().get(hi) == Some(&b'/') {
            return Ok(Some(Tok::Lsn(self.take(hi + 1 + lo).parse().ok())));
        }
        if c.is_ascii_digit() {
            let len = self.rest.bytes().take_while(u8::is_ascii_digit).count();
            return Ok(Some(Tok::Num(self.take(len).parse().ok())));
        }
        if c == '\'' || c == '"' {
            return self.quoted(c).map(Some);
        }
        if is_ident_start(c) {
            let len = self
                .rest
                .find(|c| !is_ident_cont(c))
                .unwrap_or(self.rest.len());
            let word = self.take(len);
            return Ok(Some(
                match COMMANDS.iter().chain(KEYWORDS).find(|k| **k == word) {
                    Some(kw) => Tok::Kw(kw),
                    None => Tok::Ident(truncate_ident(word.to_ascii_lowercase())),
                },
            ));
        }
        self.take(c.len_utf8());
        Ok(Some(Tok::Char(c)))
    }

    /// `'...'` with `''` as an embedded quote, or `"..."`. The replication scanner has no
    /// `xddouble` rule, so unlike SQL `"a""b"` is two identifiers.
    fn quoted(&mut self, quote: char) -> Result<Tok, CommandError> {
        self.take(1);
        let mut text = String::new();
        loop {
            let end = self.rest.find(quote).ok_or(CommandError::Syntax)?;
            text.push_str(self.take(end));
            self.take(1);
            if quote == '"' {
                return Ok(Tok::Ident(truncate_ident(text)));
            }
            if !self.rest.starts_with('\'') {
                return Ok(Tok::Str(text));
            }
            self.take(1);
            text.push('\'');
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    peeked: Option<Tok>,
}

impl Parser<'_> {
    fn next(&mut self) -> Result<Option<Tok>, CommandError> {
        match self.peeked.take() {
            Some(tok) => Ok(Some(tok)),
            None => self.lex.next_token(),
        }
    }

    fn peek(&mut self) -> Result<Option<&Tok>, CommandError> {
        if self.peeked.is_none() {
            self.peeked = self.lex.next_token()?;
        }
        Ok(self.peeked.as_ref())
    }

    fn eat(&mut self, want: &Tok) -> Result<bool, CommandError> {
        let found = self.peek()? == Some(want);
        if found {
            self.peeked = None;
        }
        Ok(found)
    }

    fn ident(&mut self) -> Result<String, CommandError> {
        match self.next()? {
            Some(Tok::Ident(s)) => Ok(s),
            _ => Err(CommandError::Syntax),
        }
    }

    /// `var_name: IDENT | var_name '.' IDENT`.
    fn var_name(&mut self) -> Result<String, CommandError> {
        let mut name = self.ident()?;
        while self.eat(&Tok::Char('.'))? {
            name.push('.');
            name.push_str(&self.ident()?);
        }
        Ok(name)
    }

    /// The check runs as soon as the number is read, as the grammar action does, so
    /// `TIMELINE 0 junk` reports the timeline rather than the junk.
    fn timeline(&mut self) -> Result<TimeLineId, CommandError> {
        match self.next()? {
            Some(Tok::Num(Some(0))) => Err(CommandError::InvalidTimeline(0)),
            Some(Tok::Num(Some(n))) => Ok(n),
            _ => Err(CommandError::Syntax),
        }
    }

    fn lsn(&mut self) -> Result<Lsn, CommandError> {
        match self.next()? {
            Some(Tok::Lsn(Some(lsn))) => Ok(lsn),
            _ => Err(CommandError::Syntax),
        }
    }

    /// `opt_semicolon` and the end of input.
    fn end(&mut self) -> Result<(), CommandError> {
        self.eat(&Tok::Char(';'))?;
        match self.next()? {
            None => Ok(()),
            Some(_) => Err(CommandError::Syntax),
        }
    }

    /// For commands the relay refuses whatever their options (which differ across versions):
    /// the client should hear "not supported", not "syntax error". Lexing the rest still
    /// catches bad quoting.
    fn skip_rest(&mut self, command: Command) -> Result<Command, CommandError> {
        while self.next()?.is_some() {}
        Ok(command)
    }

    /// The rest of `( elem [, ...] )` once `(` is read. Never empty: PostgreSQL rejects `()`,
    /// which is why clients leave out an empty option list.
    fn list(
        &mut self,
        mut elem: impl FnMut(&mut Self) -> Result<(), CommandError>,
    ) -> Result<(), CommandError> {
        loop {
            elem(self)?;
            match self.next()? {
                Some(Tok::Char(',')) => {}
                Some(Tok::Char(')')) => return Ok(()),
                _ => return Err(CommandError::Syntax),
            }
        }
    }

    fn start_replication(&mut self) -> Result<Command, CommandError> {
        let slot = if self.eat(&Tok::Kw("SLOT"))? {
            Some(self.ident()?)
        } else {
            None
        };
        if self.eat(&Tok::Kw("LOGICAL"))? {
            let slot = slot.ok_or(CommandError::Syntax)?;
            self.lsn()?;
            // plugin_options: `( IDENT [SCONST] [, ...] )`.
            if self.eat(&Tok::Char('('))? {
                self.list(|p| {
                    p.ident()?;
                    if matches!(p.peek()?, Some(Tok::Str(_))) {
                        p.next()?;
                    }
                    Ok(())
                })?;
            }
            return Ok(Command::StartLogicalReplication { slot });
        }
        self.eat(&Tok::Kw("PHYSICAL"))?;
        let start = self.lsn()?;
        let timeline = if self.eat(&Tok::Kw("TIMELINE"))? {
            Some(self.timeline()?)
        } else {
            None
        };
        Ok(Command::StartReplication {
            slot,
            start,
            timeline,
        })
    }

    fn create_slot(&mut self) -> Result<Command, CommandError> {
        let name = self.ident()?;
        let temporary = self.eat(&Tok::Kw("TEMPORARY"))?;
        let logical = match self.next()? {
            Some(Tok::Kw("PHYSICAL")) => false,
            Some(Tok::Kw("LOGICAL")) => {
                self.ident()?;
                true
            }
            _ => return Err(CommandError::Syntax),
        };
        let mut options = Vec::new();
        if self.eat(&Tok::Char('('))? {
            // generic_option_list: `ident_or_keyword [IDENT | SCONST | UCONST]`.
            self.list(|p| {
                let option = match p.next()? {
                    Some(Tok::Ident(s)) => s,
                    Some(Tok::Kw(k)) => k.to_ascii_lowercase(),
                    _ => return Err(CommandError::Syntax),
                };
                let value = match p.peek()? {
                    Some(Tok::Ident(_) | Tok::Str(_) | Tok::Num(_)) => p.next()?,
                    _ => None,
                };
                options.push((option, value));
                Ok(())
            })?;
        } else {
            loop {
                let (option, value) = match self.peek()? {
                    Some(Tok::Kw("RESERVE_WAL")) => ("reserve_wal", None),
                    Some(Tok::Kw("TWO_PHASE")) => ("two_phase", None),
                    Some(Tok::Kw("EXPORT_SNAPSHOT")) => ("snapshot", Some("export")),
                    Some(Tok::Kw("NOEXPORT_SNAPSHOT")) => ("snapshot", Some("nothing")),
                    Some(Tok::Kw("USE_SNAPSHOT")) => ("snapshot", Some("use")),
                    _ => break,
                };
                self.next()?;
                options.push((option.to_string(), value.map(|v| Tok::Str(v.to_string()))));
            }
        }
        let reserve_wal = slot_options(&options, logical)?;
        Ok(if logical {
            Command::CreateLogicalSlot { name }
        } else {
            Command::CreatePhysicalSlot {
                name,
                temporary,
                reserve_wal,
            }
        })
    }
}

/// walsender.c `parseCreateReplSlotOptions`: each option at most once and only for the slot
/// kind it belongs to, else "conflicting or redundant options" (42601). An unknown option is
/// an internal error there; a syntax error is close enough. Returns `reserve_wal`.
fn slot_options(options: &[(String, Option<Tok>)], logical: bool) -> Result<bool, CommandError> {
    let mut reserve_wal = false;
    for (i, (option, value)) in options.iter().enumerate() {
        if options.iter().take(i).any(|(seen, _)| seen == option) {
            return Err(CommandError::Syntax);
        }
        match (option.as_str(), logical) {
            ("reserve_wal", false) => reserve_wal = def_get_boolean(value.as_ref())?,
            ("two_phase" | "failover", true) => {
                def_get_boolean(value.as_ref())?;
            }
            ("snapshot", true) => match value {
                Some(Tok::Ident(v) | Tok::Str(v))
                    if ["export", "nothing", "use"].contains(&&**v) => {}
                _ => return Err(CommandError::Syntax),
            },
            _ => return Err(CommandError::Syntax),
        }
    }
    Ok(reserve_wal)
}

/// define.c `defGetBoolean`, which is stricter than `parse_bool`: no value means true, the
/// integers 0 and 1, and the words true/false/on/off in any case. No yes/no, no prefixes.
fn def_get_boolean(value: Option<&Tok>) -> Result<bool, CommandError> {
    match value {
        None | Some(Tok::Num(Some(1))) => Ok(true),
        Some(Tok::Num(Some(0))) => Ok(false),
        Some(Tok::Ident(s) | Tok::Str(s)) => {
            match ["true", "on", "false", "off"]
                .iter()
                .position(|w| s.eq_ignore_ascii_case(w))
            {
                Some(i) => Ok(i < 2),
                None => Err(CommandError::Syntax),
            }
        }
        _ => Err(CommandError::Syntax),
    }
}

/// Parses one replication command.
pub fn parse_command(query: &str) -> Result<Command, CommandError> {
    let mut p = Parser {
        lex: Lexer { rest: query },
        peeked: None,
    };
    let first = match p.next()? {
        Some(Tok::Kw(kw)) if COMMANDS.contains(&kw) => kw,
        // PostgreSQL treats these as SQL too (0A000); an empty query is answered as the SQL
        // backend would, because that is what a client sending one expects.
        Some(Tok::Char(';')) | None => loop {
            match p.next() {
                Ok(None) => return Ok(Command::Empty),
                Ok(Some(Tok::Char(';'))) => {}
                _ => return Err(CommandError::NotReplicationCommand),
            }
        },
        Some(_) => return Err(CommandError::NotReplicationCommand),
    };
    let command = match first {
        "IDENTIFY_SYSTEM" => Command::IdentifySystem,
        "SHOW" => Command::Show(p.var_name()?),
        "READ_REPLICATION_SLOT" => Command::ReadReplicationSlot(p.var_name()?),
        "TIMELINE_HISTORY" => Command::TimelineHistory(p.timeline()?),
        "CREATE_REPLICATION_SLOT" => p.create_slot()?,
        "DROP_REPLICATION_SLOT" => {
            let name = p.ident()?;
            Command::DropSlot {
                name,
                wait: p.eat(&Tok::Kw("WAIT"))?,
            }
        }
        "START_REPLICATION" => p.start_replication()?,
        "UPLOAD_MANIFEST" => Command::UploadManifest,
        "BASE_BACKUP" => return p.skip_rest(Command::BaseBackup),
        "ALTER_REPLICATION_SLOT" => return p.skip_rest(Command::AlterReplicationSlot),
        _ => return Err(CommandError::NotReplicationCommand),
    };
    p.end()?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CommandError::{InvalidTimeline, NotReplicationCommand, Syntax};

    #[track_caller]
    fn check(query: &str, want: Result<Command, CommandError>) {
        assert_eq!(parse_command(query), want, "{query:?}");
    }

    /// One query a line.
    #[track_caller]
    fn check_all(queries: &str, want: CommandError) {
        for query in queries.lines() {
            check(query, Err(want.clone()));
        }
    }

    fn start(slot: Option<&str>, lsn: &str, tli: Option<u32>) -> Result<Command, CommandError> {
        let (slot, start) = (slot.map(str::to_string), lsn.parse().unwrap());
        Ok(Command::StartReplication {
            slot,
            start,
            timeline: tli,
        })
    }

    fn physical(name: &str, temporary: bool, reserve: bool) -> Result<Command, CommandError> {
        Ok(Command::CreatePhysicalSlot {
            name: name.into(),
            temporary,
            reserve_wal: reserve,
        })
    }

    fn show(name: &str) -> Result<Command, CommandError> {
        Ok(Command::Show(name.into()))
    }

    #[test]
    fn what_real_clients_send() {
        check("IDENTIFY_SYSTEM", Ok(Command::IdentifySystem));
        check("IDENTIFY_SYSTEM;", Ok(Command::IdentifySystem));
        check("SHOW data_directory_mode", show("data_directory_mode"));
        check("SHOW wal_segment_size", show("wal_segment_size"));
        check("TIMELINE_HISTORY 2", Ok(Command::TimelineHistory(2)));
        check(
            "START_REPLICATION 0/3000000 TIMELINE 1",
            start(None, "0/3000000", Some(1)),
        );
        let q = r#"START_REPLICATION SLOT "relay_slot" 0/1000000 TIMELINE 1"#;
        check(q, start(Some("relay_slot"), "0/1000000", Some(1)));
        let q = r#"START_REPLICATION SLOT "pg_walreceiver_25305" 0/3000000 TIMELINE 2"#;
        check(q, start(Some("pg_walreceiver_25305"), "0/3000000", Some(2)));
        check(
            "START_REPLICATION PHYSICAL 0/1000000",
            start(None, "0/1000000", None),
        );
        let q =
            r#"CREATE_REPLICATION_SLOT "pg_walreceiver_25305" TEMPORARY PHYSICAL (RESERVE_WAL)"#;
        check(q, physical("pg_walreceiver_25305", true, true));
        let q = r#"CREATE_REPLICATION_SLOT "standby1" PHYSICAL ( RESERVE_WAL)"#;
        check(q, physical("standby1", false, true));
        let q = r#"CREATE_REPLICATION_SLOT "pg_basebackup_7" TEMPORARY PHYSICAL RESERVE_WAL"#;
        check(q, physical("pg_basebackup_7", true, true));
        check(
            r#"CREATE_REPLICATION_SLOT "x" PHYSICAL RESERVE_WAL"#,
            physical("x", false, true),
        );
        check(
            r#"CREATE_REPLICATION_SLOT "x" PHYSICAL"#,
            physical("x", false, false),
        );
        let drop = Command::DropSlot {
            name: "x".into(),
            wait: true,
        };
        check(r#"DROP_REPLICATION_SLOT "x" WAIT"#, Ok(drop));
        let read = Command::ReadReplicationSlot("relay_slot".into());
        check("READ_REPLICATION_SLOT relay_slot", Ok(read));
        let q = "BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  WAIT 0,  \
                 MANIFEST 'yes', TARGET 'client')";
        check(q, Ok(Command::BaseBackup));
        check("START_REPLICATION junk", Err(Syntax));
        check("TIMELINE_HISTORY 0", Err(InvalidTimeline(0)));
        check("SELECT 1", Err(NotReplicationCommand));
    }

    #[test]
    fn first_token_decides() {
        check_all(
            "select pg_is_in_recovery()
SELECT pg_catalog.pg_is_in_recovery()
SELECT 'unterminated
identify_system
Identify_System
IDENTIFY_SYSTEMS
\"IDENTIFY_SYSTEM\"
'IDENTIFY_SYSTEM'
-- IDENTIFY_SYSTEM
TIMELINE 1
0/0
42
; IDENTIFY_SYSTEM
;;x",
            NotReplicationCommand,
        );
        // The first token itself cannot be lexed.
        check_all("'unterminated\n\"unterminated", Syntax);
        for q in ["", "   ", " \t\n\r\x0B\x0C", ";", " ; ", ";;"] {
            check(q, Ok(Command::Empty));
        }
    }

    #[test]
    fn lexical_details() {
        check(
            " \n\tIDENTIFY_SYSTEM \x0B; \r\n",
            Ok(Command::IdentifySystem),
        );
        check("SHOW Foo_$1", show("foo_$1"));
        check("SHOW \"Foo Bar\"", show("Foo Bar"));
        check("SHOW a . \"B\".c", show("a.B.c"));
        check("SHOW timeline", show("timeline"));
        check("SHOW ÉtÉ", show("ÉtÉ"));
        check(
            "READ_REPLICATION_SLOT \"\"",
            Ok(Command::ReadReplicationSlot(String::new())),
        );
        // Identifiers are cut to 63 bytes, never inside a character.
        check(
            &format!("SHOW \"{}\"", "A".repeat(70)),
            show(&"A".repeat(63)),
        );
        check(&format!("SHOW {}é", "A".repeat(62)), show(&"a".repeat(62)));
        // hex/hex is one token however it is cased, and ends where the hex digits end.
        check("START_REPLICATION 1a/fF", start(None, "1A/FF", None));
        check(
            "START_REPLICATION 0/3000000TIMELINE 3",
            start(None, "0/3000000", Some(3)),
        );
        check(
            "TIMELINE_HISTORY 4294967295",
            Ok(Command::TimelineHistory(u32::MAX)),
        );
        check("TIMELINE_HISTORY 007", Ok(Command::TimelineHistory(7)));
    }

    #[test]
    fn syntax_errors() {
        check_all(
            "IDENTIFY_SYSTEM x
IDENTIFY_SYSTEM;;
IDENTIFY_SYSTEM; x
SHOW
SHOW TIMELINE
SHOW 'x'
SHOW a.
SHOW a b
TIMELINE_HISTORY
TIMELINE_HISTORY x
TIMELINE_HISTORY 4294967296
TIMELINE_HISTORY 99999999999999999999999
TIMELINE_HISTORY -1
TIMELINE_HISTORY 1 2
START_REPLICATION
START_REPLICATION 0/0 TIMELINE
START_REPLICATION 0/0 TIMELINE x
START_REPLICATION 123456789/0
START_REPLICATION 0/123456789
START_REPLICATION 0/
START_REPLICATION PHYSICAL SLOT x 0/0
START_REPLICATION SLOT 0/0
START_REPLICATION SLOT 'x' 0/0
START_REPLICATION SLOT \"x 0/0
START_REPLICATION LOGICAL 0/0
START_REPLICATION SLOT x LOGICAL 0/0 TIMELINE 1
START_REPLICATION SLOT x LOGICAL 0/0 ()
START_REPLICATION SLOT x LOGICAL 0/0 (a 'b',)
CREATE_REPLICATION_SLOT
CREATE_REPLICATION_SLOT x
CREATE_REPLICATION_SLOT x TEMPORARY
CREATE_REPLICATION_SLOT x PHYSICAL TEMPORARY
CREATE_REPLICATION_SLOT x PHYSICAL ()
CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL
CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL,)
CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL true false)
CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL WAIT)
CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL, reserve_wal)
CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL RESERVE_WAL
CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL (RESERVE_WAL)
CREATE_REPLICATION_SLOT x PHYSICAL TWO_PHASE
CREATE_REPLICATION_SLOT x PHYSICAL (SNAPSHOT 'export')
CREATE_REPLICATION_SLOT x PHYSICAL (FAILOVER)
CREATE_REPLICATION_SLOT x PHYSICAL (unknown_option)
CREATE_REPLICATION_SLOT x LOGICAL
CREATE_REPLICATION_SLOT x LOGICAL p (RESERVE_WAL)
CREATE_REPLICATION_SLOT x LOGICAL p (SNAPSHOT 'bogus')
CREATE_REPLICATION_SLOT \"a\"\"b\" PHYSICAL
DROP_REPLICATION_SLOT
DROP_REPLICATION_SLOT WAIT
DROP_REPLICATION_SLOT x WAIT WAIT
READ_REPLICATION_SLOT
UPLOAD_MANIFEST x
BASE_BACKUP ( LABEL 'unterminated
ALTER_REPLICATION_SLOT x (FAILOVER \"x)",
            Syntax,
        );
    }

    #[test]
    fn invalid_timeline_wins_over_what_follows() {
        let queries = "TIMELINE_HISTORY 000 junk\nSTART_REPLICATION 0/0 TIMELINE 0 'x";
        check_all(queries, InvalidTimeline(0));
    }

    #[test]
    fn slot_option_values_follow_def_get_boolean() {
        for (opts, want) in [
            ("RESERVE_WAL", true),
            ("reserve_wal", true),
            ("\"reserve_wal\"", true),
            ("RESERVE_WAL TRUE", true),
            ("RESERVE_WAL 'On'", true),
            ("RESERVE_WAL 1", true),
            ("RESERVE_WAL false", false),
            ("RESERVE_WAL 'OFF'", false),
            ("RESERVE_WAL 0", false),
        ] {
            check(
                &format!("CREATE_REPLICATION_SLOT s PHYSICAL ({opts})"),
                physical("s", false, want),
            );
        }
        for opts in [
            "RESERVE_WAL yes",
            "RESERVE_WAL t",
            "RESERVE_WAL '1'",
            "RESERVE_WAL 2",
            "\"RESERVE_WAL\"",
        ] {
            check(
                &format!("CREATE_REPLICATION_SLOT s PHYSICAL ({opts})"),
                Err(Syntax),
            );
        }
    }

    #[test]
    fn refused_commands_are_recognised() {
        let logical = Ok(Command::CreateLogicalSlot { name: "l".into() });
        for q in [
            "CREATE_REPLICATION_SLOT l LOGICAL pgoutput",
            "CREATE_REPLICATION_SLOT l TEMPORARY LOGICAL pgoutput USE_SNAPSHOT",
            "CREATE_REPLICATION_SLOT l LOGICAL p NOEXPORT_SNAPSHOT TWO_PHASE",
            "CREATE_REPLICATION_SLOT l LOGICAL p (SNAPSHOT 'use', TWO_PHASE, FAILOVER 0)",
        ] {
            check(q, logical.clone());
        }
        let logical = Ok(Command::StartLogicalReplication { slot: "s".into() });
        check("START_REPLICATION SLOT s LOGICAL 0/0;", logical.clone());
        let q =
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0 (proto_version '4', publication_names 'p')";
        check(q, logical);
        check("BASE_BACKUP", Ok(Command::BaseBackup));
        let q = "BASE_BACKUP LABEL 'it''s' PROGRESS FAST WAL NOWAIT MAX_RATE 32 MANIFEST 'yes'";
        check(q, Ok(Command::BaseBackup));
        let q = "ALTER_REPLICATION_SLOT s ( FAILOVER true );";
        check(q, Ok(Command::AlterReplicationSlot));
        check("UPLOAD_MANIFEST;", Ok(Command::UploadManifest));
        let drop = Command::DropSlot {
            name: "s".into(),
            wait: false,
        };
        check("DROP_REPLICATION_SLOT s", Ok(drop));
    }

    #[test]
    fn never_panics_on_garbage() {
        #[rustfmt::skip]
        const PIECES: &[&str] = &[
            "IDENTIFY_SYSTEM", "START_REPLICATION", "CREATE_REPLICATION_SLOT", "SHOW", "SLOT",
            "LOGICAL", "PHYSICAL", "TIMELINE", "TIMELINE_HISTORY", "RESERVE_WAL", "BASE_BACKUP",
            "DROP_REPLICATION_SLOT", "WAIT", "(", ")", ",", ";", ".", "'", "\"", "''", "0/1",
            "FFFFFFFFF/0", "1A/", "0", "4294967296", " ", "\t", "\n", "x", "_$", "é", "€", "𝄞",
            "/", "\0", "\u{7f}",
        ];
        // A 64-bit LCG (Knuth's MMIX constants): deterministic, no dependency.
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rand = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        for _ in 0..10_000 {
            // Mostly behind a command keyword, so that the grammar, not just the SQL check, runs.
            let mut q = match rand() % 4 {
                0 => String::new(),
                _ => format!("{} ", COMMANDS.get(rand() % COMMANDS.len()).unwrap_or(&"")),
            };
            for _ in 0..rand() % 12 {
                match rand() % 4 {
                    0 => q.push(char::from_u32((rand() % 0x3000) as u32).unwrap_or('?')),
                    _ => q.push_str(PIECES.get(rand() % PIECES.len()).unwrap_or(&"")),
                }
                if rand() % 2 == 0 {
                    q.push(' ');
                }
            }
            let _ = parse_command(&q);
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// A slot name as written and as parsed: bare (down-cased by the scanner, so
        /// generated lower-case, which no keyword is) or quoted (case kept; the replication
        /// scanner has no `""` escape).
        fn name() -> impl Strategy<Value = (String, String)> {
            prop_oneof![
                "[a-z_][a-z0-9_$]{0,62}".prop_map(|n| (n.clone(), n)),
                "[A-Za-z0-9 _.;()'-]{1,63}".prop_map(|n| (format!("\"{n}\""), n)),
            ]
        }

        proptest! {
            /// START_REPLICATION written out in any of its forms parses to what was written.
            #[test]
            fn start_replication_round_trip(
                slot in proptest::option::of(name()),
                physical: bool,
                lsn: u64,
                timeline in proptest::option::of(1u32..),
                semicolon: bool,
            ) {
                let mut q = "START_REPLICATION".to_string();
                if let Some((written, _)) = &slot {
                    q += &format!(" SLOT {written}");
                }
                if physical {
                    q += " PHYSICAL";
                }
                q += &format!(" {}", Lsn(lsn));
                if let Some(t) = timeline {
                    q += &format!(" TIMELINE {t}");
                }
                if semicolon {
                    q += ";";
                }
                prop_assert_eq!(
                    parse_command(&q),
                    Ok(Command::StartReplication {
                        slot: slot.map(|(_, n)| n),
                        start: Lsn(lsn),
                        timeline,
                    }),
                    "{:?}", q
                );
            }

            /// The slot commands round-trip their name and flags.
            #[test]
            fn slot_commands_round_trip(
                (written, name) in name(),
                temporary: bool,
                reserve_wal: bool,
                wait: bool,
            ) {
                let q = format!(
                    "CREATE_REPLICATION_SLOT {written}{} PHYSICAL{}",
                    if temporary { " TEMPORARY" } else { "" },
                    if reserve_wal { " RESERVE_WAL" } else { "" },
                );
                prop_assert_eq!(
                    parse_command(&q),
                    Ok(Command::CreatePhysicalSlot { name: name.clone(), temporary, reserve_wal })
                );
                let q = format!("DROP_REPLICATION_SLOT {written}{}", if wait { " WAIT" } else { "" });
                prop_assert_eq!(parse_command(&q), Ok(Command::DropSlot { name: name.clone(), wait }));
                let q = format!("READ_REPLICATION_SLOT {written}");
                prop_assert_eq!(parse_command(&q), Ok(Command::ReadReplicationSlot(name)));
            }
        }
    }
}
