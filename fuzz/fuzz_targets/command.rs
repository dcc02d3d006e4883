#![no_main]
//! The replication command parser. Whatever parses is written back out in a canonical
//! spelling (quoted names, upper-case keywords) and must parse to the same command.
use libfuzzer_sys::fuzz_target;
use walrelay::proto::command::{parse_command, Command};

/// A name as a quoted identifier, when it can be one: the replication scanner has no `""`
/// escape, and an empty quoted identifier is not something to rely on.
fn quoted(name: &str) -> Option<String> {
    (!name.is_empty() && !name.contains('"')).then(|| format!("\"{name}\""))
}

/// `var_name` (SHOW and READ_REPLICATION_SLOT take one): identifiers joined by '.', each
/// truncated on its own, so each is quoted on its own.
fn var_name(name: &str) -> Option<String> {
    let parts = name.split('.').map(quoted).collect::<Option<Vec<_>>>()?;
    Some(parts.join("."))
}

fn render(c: &Command) -> Option<String> {
    Some(match c {
        Command::IdentifySystem => "IDENTIFY_SYSTEM".to_string(),
        Command::Show(name) => format!("SHOW {}", var_name(name)?),
        Command::TimelineHistory(t) => format!("TIMELINE_HISTORY {t}"),
        Command::ReadReplicationSlot(s) => format!("READ_REPLICATION_SLOT {}", var_name(s)?),
        Command::CreatePhysicalSlot {
            name,
            temporary,
            reserve_wal,
        } => format!(
            "CREATE_REPLICATION_SLOT {}{} PHYSICAL{}",
            quoted(name)?,
            if *temporary { " TEMPORARY" } else { "" },
            if *reserve_wal { " RESERVE_WAL" } else { "" }
        ),
        Command::DropSlot { name, wait } => format!(
            "DROP_REPLICATION_SLOT {}{}",
            quoted(name)?,
            if *wait { " WAIT" } else { "" }
        ),
        Command::StartReplication {
            slot,
            start,
            timeline,
        } => {
            let mut s = "START_REPLICATION".to_string();
            if let Some(slot) = slot {
                s += &format!(" SLOT {}", quoted(slot)?);
            }
            s += &format!(" PHYSICAL {start}");
            if let Some(t) = timeline {
                s += &format!(" TIMELINE {t}");
            }
            s
        }
        Command::Empty => ";".to_string(),
        _ => return None,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let first = parse_command(text);
    assert_eq!(parse_command(text), first, "not deterministic");
    let Ok(cmd) = first else {
        return;
    };
    if let Some(again) = render(&cmd) {
        assert_eq!(
            parse_command(&again),
            Ok(cmd.clone()),
            "{text:?} -> {again:?}"
        );
        // A trailing semicolon and surrounding whitespace change nothing.
        assert_eq!(parse_command(&format!(" \t{again};\n")), Ok(cmd));
    }
});
