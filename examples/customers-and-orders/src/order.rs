//! The `Order` aggregate: a customer, a total, and a state that the saga moves from `Pending`
//! to `Approved` or `Rejected`. Approving an approved order (or rejecting a rejected one)
//! changes nothing; approving a rejected order is refused.
//!
//! Its commands are dispatched by type name (`#[command_handler(dispatch)]`: they derive
//! `Deserialize`), so the event store server can take them as JSON
//! (`POST /aggregates/Order/{id}/commands/ApproveOrder`), and the events and commands derive
//! `JsonSchema` for the schema document it serves (`GET /schemas/Order`).

use eventuate_core::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::money::Money;

/// An order was placed; the customer's credit is not checked yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCreated {
    /// The customer who placed it.
    pub customer_id: String,
    /// Its total.
    pub total: Money,
}

/// The customer's credit was reserved: the order stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderApproved {
    /// The customer (for the confirmation gateway, which needs no other lookup).
    pub customer_id: String,
    /// The total.
    pub total: Money,
}

/// The customer's credit did not allow the order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    /// The customer.
    pub customer_id: String,
    /// Why.
    pub reason: String,
}

/// The events of an order.
#[derive(Debug, Clone, PartialEq, Events)]
pub enum OrderEvent {
    /// See [`OrderCreated`].
    Created(OrderCreated),
    /// See [`OrderApproved`].
    Approved(OrderApproved),
    /// See [`OrderRejected`].
    Rejected(OrderRejected),
}

/// Where an order is in the saga.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum OrderState {
    /// Waiting for the customer's credit check.
    #[default]
    Pending,
    /// Credit reserved.
    Approved,
    /// Credit refused.
    Rejected,
}

impl OrderState {
    /// The name used in JSON and in the view table.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Pending => "Pending",
            OrderState::Approved => "Approved",
            OrderState::Rejected => "Rejected",
        }
    }

    /// The state named `name` (as written by [`OrderState::as_str`]).
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Rejected]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

/// Places an order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct CreateOrder {
    /// The customer.
    pub customer_id: String,
    /// The total (above zero).
    pub total: Money,
}

/// Approves a pending order (a unit struct: its JSON is `null`, or an empty body).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct ApproveOrder;

/// Rejects a pending order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct RejectOrder {
    /// Why.
    pub reason: String,
}

/// Why an order refused a command (`Serialize`: the server answers it as JSON too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum OrderError {
    /// `CreateOrder` on an existing order.
    #[error("the order already exists")]
    AlreadyExists,
    /// A total of zero or less.
    #[error("the total must be above zero, not {0}")]
    TotalNotPositive(Money),
    /// The order is already in the other final state.
    #[error("the order is already {}", .0.as_str())]
    AlreadyDecided(OrderState),
}

/// An order's state.
#[aggregate(name = "Order", events = OrderEvent)]
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    customer_id: String,
    total: Money,
    state: OrderState,
    rejection_reason: Option<String>,
}

#[command_handler(dispatch)]
impl Order {
    fn create(&self, command: &CreateOrder) -> Result<OrderCreated, OrderError> {
        if !self.customer_id.is_empty() {
            return Err(OrderError::AlreadyExists);
        }
        if !command.total.is_positive() {
            return Err(OrderError::TotalNotPositive(command.total));
        }
        Ok(OrderCreated {
            customer_id: command.customer_id.clone(),
            total: command.total,
        })
    }

    fn approve(&self, _: &ApproveOrder) -> Result<Vec<OrderApproved>, OrderError> {
        match self.state {
            OrderState::Pending => Ok(vec![OrderApproved {
                customer_id: self.customer_id.clone(),
                total: self.total,
            }]),
            OrderState::Approved => Ok(Vec::new()),
            OrderState::Rejected => Err(OrderError::AlreadyDecided(self.state)),
        }
    }

    fn reject(&self, command: &RejectOrder) -> Result<Vec<OrderRejected>, OrderError> {
        match self.state {
            OrderState::Pending => Ok(vec![OrderRejected {
                customer_id: self.customer_id.clone(),
                reason: command.reason.clone(),
            }]),
            OrderState::Rejected => Ok(Vec::new()),
            OrderState::Approved => Err(OrderError::AlreadyDecided(self.state)),
        }
    }

    #[apply]
    fn on_created(&mut self, event: &OrderCreated) {
        self.customer_id = event.customer_id.clone();
        self.total = event.total;
        self.state = OrderState::Pending;
    }

    #[apply]
    fn on_approved(&mut self, _: &OrderApproved) {
        self.state = OrderState::Approved;
    }

    #[apply]
    fn on_rejected(&mut self, event: &OrderRejected) {
        self.state = OrderState::Rejected;
        self.rejection_reason = Some(event.reason.clone());
    }
}

impl Order {
    /// The customer who placed the order.
    pub fn customer_id(&self) -> &str {
        &self.customer_id
    }

    /// The total.
    pub fn total(&self) -> Money {
        self.total
    }

    /// Where the order is in the saga.
    pub fn state(&self) -> OrderState {
        self.state
    }

    /// Why it was rejected, if it was.
    pub fn rejection_reason(&self) -> Option<&str> {
        self.rejection_reason.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use eventuate_core::AggregateFixture;

    use super::*;

    fn created() -> OrderEvent {
        OrderCreated {
            customer_id: "c1".into(),
            total: Money::cents(300),
        }
        .into()
    }

    #[test]
    fn a_pending_order_is_approved_once() {
        let state = AggregateFixture::<Order>::given([created()])
            .when(ApproveOrder)
            .then_expect_events([OrderApproved {
                customer_id: "c1".into(),
                total: Money::cents(300),
            }]);
        assert_eq!(state.state(), OrderState::Approved);
        let approved = OrderEvent::from(OrderApproved {
            customer_id: "c1".into(),
            total: Money::cents(300),
        });
        AggregateFixture::<Order>::given([created(), approved.clone()])
            .when(ApproveOrder)
            .then_expect_events(Vec::<OrderEvent>::new());
        AggregateFixture::<Order>::given([created(), approved])
            .when(RejectOrder { reason: "x".into() })
            .then_expect_error_message("the order is already Approved");
    }

    #[test]
    fn a_pending_order_is_rejected_once() {
        let state = AggregateFixture::<Order>::given([created()])
            .when(RejectOrder {
                reason: "no credit".into(),
            })
            .then_expect_events([OrderRejected {
                customer_id: "c1".into(),
                reason: "no credit".into(),
            }]);
        assert_eq!(state.rejection_reason(), Some("no credit"));
        let rejected = OrderEvent::from(OrderRejected {
            customer_id: "c1".into(),
            reason: "no credit".into(),
        });
        AggregateFixture::<Order>::given([created(), rejected])
            .when(ApproveOrder)
            .then_expect_error_message("the order is already Rejected");
    }

    #[test]
    fn refuses_a_total_of_zero() {
        AggregateFixture::<Order>::given_no_events()
            .when(CreateOrder {
                customer_id: "c1".into(),
                total: Money::cents(0),
            })
            .then_expect_error_message("the total must be above zero");
    }
}
