//! Validation of the names that end up in storage keys, SQL and channel names: entity types,
//! entity ids, event types and subscriber ids. One place decides what is acceptable.

use crate::{Error, Result};

/// Longest accepted entity id, in bytes.
pub const MAX_ENTITY_ID_LEN: usize = 200;
/// Longest accepted identifier (entity type, event type, subscriber id), in bytes.
pub const MAX_IDENTIFIER_LEN: usize = 100;

fn shown(name: &str) -> String {
    if name.len() <= 64 {
        name.to_owned()
    } else {
        let mut end = 64;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &name[..end])
    }
}

/// Checks an identifier: ASCII letter or `_` first, then ASCII letters, digits, `_`, `-`, `.`.
pub fn validate_identifier(kind: &'static str, name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            kind,
            name: shown(name),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return invalid("it is empty");
    };
    if name.len() > MAX_IDENTIFIER_LEN {
        return invalid("it is longer than 100 bytes");
    }
    if !(first.is_ascii_alphabetic() || first == '_') {
        return invalid("it must start with an ASCII letter or `_`");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return invalid("only ASCII letters, digits, `_`, `-` and `.` are allowed");
    }
    Ok(())
}

/// Checks an entity type name.
pub fn validate_entity_type(name: &str) -> Result<()> {
    validate_identifier("entity type", name)
}

/// Checks an event type name.
pub fn validate_event_type(name: &str) -> Result<()> {
    validate_identifier("event type", name)
}

/// Checks a subscriber id.
pub fn validate_subscriber_id(name: &str) -> Result<()> {
    validate_identifier("subscriber id", name)
}

/// Checks an entity id: 1 to 200 bytes, no control characters.
pub fn validate_entity_id(id: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            kind: "entity id",
            name: shown(id),
            reason,
        })
    };
    if id.is_empty() {
        return invalid("it is empty");
    }
    if id.len() > MAX_ENTITY_ID_LEN {
        return invalid("it is longer than 200 bytes");
    }
    if id.chars().any(char::is_control) {
        return invalid("it contains control characters");
    }
    Ok(())
}

/// The partition hash of an entity id: stable across processes, platforms and releases
/// (FNV-1a, 31 bits), so every process agrees on which partition owns an entity.
pub fn entity_hash(entity_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in entity_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash & 0x7fff_ffff
}

/// The partition (of `count`) that owns an entity.
pub fn partition_of(entity_id: &str, count: u32) -> u32 {
    entity_hash(entity_id) % count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_entity_type("Order").is_ok());
        assert!(validate_entity_type("billing.Invoice-v2").is_ok());
        for bad in [
            "",
            "1Order",
            "Or der",
            "Order;DROP",
            "Ordér",
            &"x".repeat(101),
        ] {
            let err = validate_entity_type(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidName {
                        kind: "entity type",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn entity_ids() {
        assert!(validate_entity_id("c-1").is_ok());
        assert!(validate_entity_id("ünïcode ok").is_ok());
        assert!(validate_entity_id("").is_err());
        assert!(validate_entity_id("a\nb").is_err());
        assert!(validate_entity_id(&"é".repeat(150)).is_err());
    }

    #[test]
    fn hash_is_stable() {
        // Fixed values: changing the hash would silently move entities between partitions.
        assert_eq!(entity_hash(""), 0x811c_9dc5 & 0x7fff_ffff);
        assert_eq!(entity_hash("a"), 0xe40c_292c & 0x7fff_ffff);
        assert!(partition_of("anything", 3) < 3);
        assert_eq!(partition_of("x", 0), 0);
    }
}
