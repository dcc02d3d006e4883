//! PostgreSQL's rule for replication slot names (slot.c, ReplicationSlotValidateName): 1 to 63
//! bytes of lower-case ASCII letters, digits and `_`. The one copy of the rule: the relay's own
//! slots (`store::slots`) and the configuration's `--slot` (`config`) both check names here.

/// Why a name is not a valid replication slot name; messages are PostgreSQL's, word for word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotNameError {
    #[error("replication slot name \"{0}\" is too short")]
    TooShort(String),
    #[error("replication slot name \"{0}\" is too long")]
    TooLong(String),
    #[error("replication slot name \"{0}\" contains invalid character")]
    InvalidCharacter(String),
}

impl SlotNameError {
    /// PostgreSQL's errhint, where it gives one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotNameError::InvalidCharacter(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            _ => None,
        }
    }
}

/// NAMEDATALEN - 1.
const MAX_LEN: usize = 63;

/// Checks `name` against PostgreSQL's rule.
pub fn validate(name: &str) -> Result<(), SlotNameError> {
    if name.is_empty() {
        return Err(SlotNameError::TooShort(name.to_string()));
    }
    if name.len() > MAX_LEN {
        return Err(SlotNameError::TooLong(name.to_string()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(SlotNameError::InvalidCharacter(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgresql() {
        assert_eq!(validate("relay_1"), Ok(()));
        assert_eq!(validate(&"a".repeat(63)), Ok(()));
        assert!(matches!(validate(""), Err(SlotNameError::TooShort(_))));
        assert!(matches!(
            validate(&"a".repeat(64)),
            Err(SlotNameError::TooLong(_))
        ));
        let e = validate("Bad-Name").unwrap_err();
        assert_eq!(
            e.to_string(),
            "replication slot name \"Bad-Name\" contains invalid character"
        );
        assert!(e.hint().is_some());
    }
}
