//! Container identity: ids made from random bytes the caller passes in, and the rules for
//! names. Ids and names become directory names under the data dir, so both are restricted to
//! characters that cannot form a path (`/`, `..`).

use crate::runtime::RuntimeError;

/// The length of the short id people type (`berth ps` shows this much).
pub const SHORT_LEN: usize = 12;

/// A new container id: 32 lower-case hex digits from 16 random bytes.
pub fn new_id(random: [u8; 16]) -> String {
    random.iter().map(|b| format!("{b:02x}")).collect()
}

/// The short form of an id.
pub fn short(id: &str) -> &str {
    id.get(..SHORT_LEN).unwrap_or(id)
}

/// Checks a container name or id given by a user or an OCI caller: 1-128 characters of
/// `[A-Za-z0-9_.+-]`, not starting with `.` or `-` (so never `.`/`..` or a flag).
pub fn validate_name(name: &str) -> Result<(), RuntimeError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-'));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if name.is_empty() || name.len() > 128 || !ok_chars || !ok_start {
        return Err(RuntimeError::InvalidSpec {
            field: "name",
            reason: format!(
                "{name:?} must be 1-128 characters of [A-Za-z0-9_.+-] starting with a letter, digit or _"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_hex_of_the_random_bytes() {
        let id = new_id([0xab; 16]);
        assert_eq!(id.len(), 32);
        assert_eq!(short(&id), "abababababab");
    }

    #[test]
    fn names_that_could_form_paths_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "-x",
            ".hidden",
            "a b",
            &"x".repeat(129),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["web", "web-1.2", "a_b+c", "_x"] {
            validate_name(good).unwrap();
        }
    }
}
