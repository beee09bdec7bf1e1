//! Money as integer cents: exact, and stored as a plain JSON integer (`"total": 300` is 3.00).
//! Signed, so that a negative amount in a request decodes and is refused with a clear message
//! rather than a JSON type error.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An amount in cents.
#[derive(
    Copy,
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// An amount of `cents`.
    pub const fn cents(cents: i64) -> Self {
        Money(cents)
    }

    /// The amount in cents.
    pub const fn as_cents(self) -> i64 {
        self.0
    }

    /// Whether the amount is above zero.
    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    /// The sum, saturating at the bounds (amounts here are far from them).
    pub const fn plus(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// The difference, saturating at the bounds.
    pub const fn minus(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::plus)
    }
}

impl fmt::Display for Money {
    /// `1234` cents is `12.34`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_units_and_cents() {
        assert_eq!(Money::cents(123_456).to_string(), "1234.56");
        assert_eq!(Money::cents(5).to_string(), "0.05");
        assert_eq!(Money::cents(-250).to_string(), "-2.50");
        assert_eq!(serde_json::to_string(&Money::cents(300)).unwrap(), "300");
        let sum: Money = [Money::cents(1), Money::cents(2)].into_iter().sum();
        assert_eq!(sum, Money::cents(3));
    }
}
