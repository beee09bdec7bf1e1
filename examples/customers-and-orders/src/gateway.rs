//! The outbound gateway: when an order is approved, "send" a confirmation to the customer. A
//! row in `order_confirmations` stands in for the e-mail service.
//!
//! Delivery is at least once, so the call must be idempotent: it is keyed by the event's id
//! (a real e-mail API would get it as its idempotency key), and a second delivery of the same
//! `OrderApproved` sends nothing. The gateway is deliberately *not* transactional: an external
//! call cannot join the checkpoint's transaction, which is exactly why it is keyed.

use eventuate_core::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Money;
use crate::order::{Order, OrderApproved};
use crate::tables::Tables;

/// A confirmation sent for an approved order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The `OrderApproved` event it confirms (the idempotency key).
    pub event_id: Uuid,
    /// The order.
    pub order_id: String,
    /// The customer it was sent to.
    pub customer_id: String,
    /// The order's total.
    pub total: Money,
    /// The text sent.
    pub message: String,
}

/// The gateway subscriber (id `order-confirmation-gateway`).
#[derive(Clone, Debug)]
pub struct ConfirmationGateway {
    tables: Tables,
}

#[event_handler(subscribe = Order, id = "order-confirmation-gateway")]
impl ConfirmationGateway {
    async fn order_approved(
        &self,
        ctx: &EventContext,
        event: &OrderApproved,
    ) -> Result<(), HandlerError> {
        let confirmation = Confirmation {
            event_id: ctx.event_id(),
            order_id: ctx.entity_id().to_owned(),
            customer_id: event.customer_id.clone(),
            total: event.total,
            message: format!(
                "Your order {} of {} is confirmed.",
                ctx.entity_id(),
                event.total
            ),
        };
        self.send(confirmation).await?;
        Ok(())
    }
}

impl ConfirmationGateway {
    /// A gateway writing to `tables`.
    pub fn new(tables: Tables) -> Self {
        ConfirmationGateway { tables }
    }

    async fn send(&self, confirmation: Confirmation) -> Result<(), sqlx::Error> {
        match &self.tables {
            Tables::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO order_confirmations (event_id, order_id, customer_id, total, \
                     message) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(confirmation.event_id)
                .bind(&confirmation.order_id)
                .bind(&confirmation.customer_id)
                .bind(confirmation.total.as_cents())
                .bind(&confirmation.message)
                .execute(pool)
                .await?;
            }
            Tables::Memory(tables) => {
                let mut sent = tables.confirmations();
                if !sent.iter().any(|c| c.event_id == confirmation.event_id) {
                    sent.push(confirmation);
                }
            }
        }
        Ok(())
    }
}

impl Tables {
    /// Every confirmation sent, oldest first.
    pub async fn confirmations(&self) -> Result<Vec<Confirmation>, sqlx::Error> {
        match self {
            Tables::Postgres(pool) => {
                let rows: Vec<(Uuid, String, String, i64, String)> = sqlx::query_as(
                    "SELECT event_id, order_id, customer_id, total, message \
                     FROM order_confirmations ORDER BY confirmed_at, event_id",
                )
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(event_id, order_id, customer_id, total, message)| Confirmation {
                            event_id,
                            order_id,
                            customer_id,
                            total: Money::cents(total),
                            message,
                        },
                    )
                    .collect())
            }
            Tables::Memory(tables) => Ok(tables.confirmations().clone()),
        }
    }
}
