//! Timeline history files (`timeline.c`): `parentTLI<TAB>switchpoint<TAB>reason` lines.
//!
//! The relay stores and serves these files byte-exact; parsing is only for deciding where a
//! timeline ends (`tliSwitchPoint`) and which timeline a position belongs to.

use super::lsn::{Lsn, TimeLineId};

/// One ancestor timeline: it ran until `switchpoint`, where `tli`'s child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryEntry {
    pub tli: TimeLineId,
    pub switchpoint: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("syntax error in history file: {0}")]
    Syntax(String),
    #[error("invalid data in history file: {0}")]
    InvalidData(String),
}

/// Parses a history file into its entries, oldest first. Mirrors `readTimeLineHistory`: blank
/// lines and `#` comments are skipped; TLIs must increase.
pub fn parse_history(content: &[u8]) -> Result<Vec<HistoryEntry>, HistoryError> {
    let text = String::from_utf8_lossy(content);
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = trimmed
            .split(|c: char| c.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let tli: TimeLineId = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| HistoryError::Syntax(line.to_string()))?;
        let switchpoint: Lsn = fields
            .next()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| HistoryError::Syntax(line.to_string()))?;
        if let Some(prev) = entries.last() {
            if tli <= prev.tli {
                return Err(HistoryError::InvalidData(
                    "Timeline IDs must be in increasing sequence.".into(),
                ));
            }
        }
        entries.push(HistoryEntry { tli, switchpoint });
    }
    Ok(entries)
}

/// `tliSwitchPoint`: where `requested` ends in the lineage of `current` (whose history is
/// `history`), and the timeline that follows it there. `None` when `requested` is not in the
/// lineage. For `requested == current` the switch point is `None` (still running).
pub fn switch_point(
    requested: TimeLineId,
    current: TimeLineId,
    history: &[HistoryEntry],
) -> Option<(Option<Lsn>, TimeLineId)> {
    if requested == current {
        return Some((None, current));
    }
    let idx = history.iter().position(|e| e.tli == requested)?;
    let next = history.get(idx + 1).map(|e| e.tli).unwrap_or(current);
    history.get(idx).map(|e| (Some(e.switchpoint), next))
}

/// `tliOfPointInHistory`: the timeline that `lsn` belongs to in the lineage of `current`.
pub fn timeline_of_point(lsn: Lsn, current: TimeLineId, history: &[HistoryEntry]) -> TimeLineId {
    history
        .iter()
        .find(|e| lsn < e.switchpoint)
        .map(|e| e.tli)
        .unwrap_or(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_history() {
        let h = parse_history(b"1\t0/304AC00\tno recovery target specified\n").unwrap();
        assert_eq!(
            h,
            vec![HistoryEntry {
                tli: 1,
                switchpoint: Lsn(0x304AC00)
            }]
        );
        let h =
            parse_history(b"1\t0/3000000\tr\n\n2\t0/5000000\tr\n# c\n3\t0/7000000\tr\n").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(switch_point(2, 4, &h), Some((Some(Lsn(0x5000000)), 3)));
        assert_eq!(switch_point(3, 4, &h), Some((Some(Lsn(0x7000000)), 4)));
        assert_eq!(switch_point(4, 4, &h), Some((None, 4)));
        assert_eq!(switch_point(5, 4, &h), None);
        assert_eq!(timeline_of_point(Lsn(0x4000000), 4, &h), 2);
        assert_eq!(timeline_of_point(Lsn(0x8000000), 4, &h), 4);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_history(b"x\ty\n").is_err());
        assert!(parse_history(b"2\t0/1\tr\n1\t0/2\tr\n").is_err());
    }
}
