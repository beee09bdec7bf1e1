//! The `Customer` aggregate: a name, a credit limit, and the credit reserved for orders.
//!
//! Reservations are kept per order, and the orders whose reservation was refused too, so a
//! `ReserveCredit` for an order already decided changes nothing (the saga's re-delivery is
//! also de-duplicated by the runtime; this makes the aggregate idempotent on its own).
//!
//! Like `Order`, its commands are dispatched by type name and its types derive `JsonSchema`.

use std::collections::{BTreeMap, BTreeSet};

use eventuate_core::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// A customer was registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerCreated {
    /// Display name.
    pub name: String,
    /// The most credit that can be reserved at once.
    pub credit_limit: Money,
}

/// Credit was reserved for an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CreditReserved {
    /// The order the credit is for.
    pub order_id: String,
    /// The amount reserved.
    pub amount: Money,
}

/// An order did not fit in the customer's available credit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerCreditLimitExceeded {
    /// The refused order.
    pub order_id: String,
    /// What it asked for.
    pub amount: Money,
    /// What was available.
    pub available: Money,
}

/// The events of a customer.
#[derive(Debug, Clone, PartialEq, Events)]
pub enum CustomerEvent {
    /// See [`CustomerCreated`].
    Created(CustomerCreated),
    /// See [`CreditReserved`].
    CreditReserved(CreditReserved),
    /// See [`CustomerCreditLimitExceeded`].
    CreditLimitExceeded(CustomerCreditLimitExceeded),
}

/// Registers a customer.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CreateCustomer {
    /// Display name (not empty).
    pub name: String,
    /// Credit limit (above zero).
    pub credit_limit: Money,
}

/// Reserves credit for an order, or records that it does not fit.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ReserveCredit {
    /// The order.
    pub order_id: String,
    /// Its total (above zero).
    pub amount: Money,
}

/// Why a customer refused a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum CustomerError {
    /// `CreateCustomer` on an existing customer.
    #[error("the customer already exists")]
    AlreadyExists,
    /// An empty name.
    #[error("the name must not be empty")]
    EmptyName,
    /// A credit limit of zero or less.
    #[error("the credit limit must be above zero, not {0}")]
    CreditLimitNotPositive(Money),
    /// A reservation of zero or less.
    #[error("the amount to reserve must be above zero, not {0}")]
    AmountNotPositive(Money),
}

/// A customer's state.
#[aggregate(name = "Customer", events = CustomerEvent, snapshot_every = 100)]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    name: String,
    credit_limit: Money,
    /// Credit reserved, per order id.
    reservations: BTreeMap<String, Money>,
    /// Orders whose reservation was refused.
    refused: BTreeSet<String>,
}

#[command_handler(dispatch)]
impl Customer {
    fn create(&self, command: &CreateCustomer) -> Result<CustomerCreated, CustomerError> {
        if !self.name.is_empty() {
            return Err(CustomerError::AlreadyExists);
        }
        let name = command.name.trim();
        if name.is_empty() {
            return Err(CustomerError::EmptyName);
        }
        if !command.credit_limit.is_positive() {
            return Err(CustomerError::CreditLimitNotPositive(command.credit_limit));
        }
        Ok(CustomerCreated {
            name: name.to_owned(),
            credit_limit: command.credit_limit,
        })
    }

    fn reserve_credit(&self, command: &ReserveCredit) -> Result<Vec<CustomerEvent>, CustomerError> {
        if self.reservations.contains_key(&command.order_id)
            || self.refused.contains(&command.order_id)
        {
            return Ok(Vec::new()); // already decided: nothing happens twice
        }
        if !command.amount.is_positive() {
            return Err(CustomerError::AmountNotPositive(command.amount));
        }
        let available = self.available_credit();
        let event = if command.amount > available {
            CustomerCreditLimitExceeded {
                order_id: command.order_id.clone(),
                amount: command.amount,
                available,
            }
            .into()
        } else {
            CreditReserved {
                order_id: command.order_id.clone(),
                amount: command.amount,
            }
            .into()
        };
        Ok(vec![event])
    }

    #[apply]
    fn on_created(&mut self, event: &CustomerCreated) {
        self.name = event.name.clone();
        self.credit_limit = event.credit_limit;
    }

    #[apply]
    fn on_credit_reserved(&mut self, event: &CreditReserved) {
        self.reservations
            .insert(event.order_id.clone(), event.amount);
    }

    #[apply]
    fn on_credit_limit_exceeded(&mut self, event: &CustomerCreditLimitExceeded) {
        self.refused.insert(event.order_id.clone());
    }
}

impl Customer {
    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Credit limit.
    pub fn credit_limit(&self) -> Money {
        self.credit_limit
    }

    /// Credit reserved for orders.
    pub fn reserved_credit(&self) -> Money {
        self.reservations.values().copied().sum()
    }

    /// Credit limit less reserved credit.
    pub fn available_credit(&self) -> Money {
        self.credit_limit.minus(self.reserved_credit())
    }
}

#[cfg(test)]
mod tests {
    use eventuate_core::AggregateFixture;

    use super::*;

    fn created(limit: i64) -> CustomerEvent {
        CustomerCreated {
            name: "Ada".into(),
            credit_limit: Money::cents(limit),
        }
        .into()
    }

    fn reserve(order: &str, amount: i64) -> ReserveCredit {
        ReserveCredit {
            order_id: order.into(),
            amount: Money::cents(amount),
        }
    }

    #[test]
    fn reserves_while_the_limit_allows_and_refuses_beyond() {
        AggregateFixture::<Customer>::given([created(1000)])
            .when(reserve("o1", 1000))
            .then_expect_events([CreditReserved {
                order_id: "o1".into(),
                amount: Money::cents(1000),
            }]);
        let reserved = CustomerEvent::from(CreditReserved {
            order_id: "o1".into(),
            amount: Money::cents(300),
        });
        let state = AggregateFixture::<Customer>::given([created(1000), reserved.clone()])
            .when(reserve("o2", 701))
            .then_expect_events([CustomerCreditLimitExceeded {
                order_id: "o2".into(),
                amount: Money::cents(701),
                available: Money::cents(700),
            }]);
        assert_eq!(state.reserved_credit(), Money::cents(300));
    }

    #[test]
    fn a_decided_order_is_not_decided_again() {
        let reserved = CustomerEvent::from(CreditReserved {
            order_id: "o1".into(),
            amount: Money::cents(300),
        });
        let refused = CustomerEvent::from(CustomerCreditLimitExceeded {
            order_id: "o2".into(),
            amount: Money::cents(900),
            available: Money::cents(700),
        });
        for order in ["o1", "o2"] {
            AggregateFixture::<Customer>::given([created(1000), reserved.clone(), refused.clone()])
                .when(reserve(order, 1))
                .then_expect_events(Vec::<CustomerEvent>::new());
        }
    }

    #[test]
    fn refuses_bad_input() {
        AggregateFixture::<Customer>::given_no_events()
            .when(CreateCustomer {
                name: " ".into(),
                credit_limit: Money::cents(1),
            })
            .then_expect_error_message("the name must not be empty");
        AggregateFixture::<Customer>::given_no_events()
            .when(CreateCustomer {
                name: "Ada".into(),
                credit_limit: Money::cents(0),
            })
            .then_expect_error_message("the credit limit must be above zero, not 0.00");
        AggregateFixture::<Customer>::given([created(5)])
            .when(CreateCustomer {
                name: "Ada".into(),
                credit_limit: Money::cents(5),
            })
            .then_expect_error_message("the customer already exists");
        AggregateFixture::<Customer>::given([created(5)])
            .when(reserve("o1", -1))
            .then_expect_error_message("the amount to reserve must be above zero, not -0.01");
    }
}
