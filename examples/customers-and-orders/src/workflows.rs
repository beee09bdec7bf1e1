//! The "place order" saga, as two subscribers that send commands:
//!
//! ```text
//! OrderCreated ──customer-workflow──▶ Customer.ReserveCredit ─▶ CreditReserved ────────────┐
//!                                                             └▶ CustomerCreditLimitExceeded┤
//!          Order.ApproveOrder / Order.RejectOrder ◀──order-workflow────────────────────────┘
//! ```
//!
//! Commands go through [`EventContext::update`], which is idempotent per triggering event and
//! records the event as the command's cause (so the outcome can be traced back to the HTTP
//! request). A command the target refuses, or a missing aggregate, turns into a permanent
//! handler error through `?`: the event is parked at once rather than retried. Each side subscribes to the *other* side's aggregate, so the customer side and
//! the order side can run in different processes.

use eventuate_core::prelude::*;

use crate::customer::{CreditReserved, Customer, CustomerCreditLimitExceeded, ReserveCredit};
use crate::order::{ApproveOrder, Order, OrderCreated, RejectOrder};

/// Customer side: reserves credit for every new order.
#[derive(Debug, Default, Clone, Copy)]
pub struct CustomerWorkflow;

#[event_handler(subscribe = Order, id = "customer-workflow")]
impl CustomerWorkflow {
    async fn reserve_credit(
        &self,
        ctx: &EventContext,
        event: &OrderCreated,
    ) -> Result<(), HandlerError> {
        let command = ReserveCredit {
            order_id: ctx.entity_id().to_owned(),
            amount: event.total,
        };
        ctx.update::<Customer>(&event.customer_id, command).await?;
        Ok(())
    }
}

/// Order side: approves or rejects the order according to the customer's decision.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrderWorkflow;

#[event_handler(subscribe = Customer, id = "order-workflow")]
impl OrderWorkflow {
    async fn approve(
        &self,
        ctx: &EventContext,
        event: &CreditReserved,
    ) -> Result<(), HandlerError> {
        ctx.update::<Order>(&event.order_id, ApproveOrder).await?;
        Ok(())
    }

    async fn reject(
        &self,
        ctx: &EventContext,
        event: &CustomerCreditLimitExceeded,
    ) -> Result<(), HandlerError> {
        let reason = format!(
            "credit limit exceeded: {} requested, {} available",
            event.amount, event.available
        );
        ctx.update::<Order>(&event.order_id, RejectOrder { reason })
            .await?;
        Ok(())
    }
}
