//! The query side's writer: keeps the "customer with recent orders" view up to date from the
//! events of both aggregates. [`crate::query`] reads it.
//!
//! On PostgreSQL the updater is a transactional subscriber: each event's writes go through
//! `ctx.pg_transaction()` ([`eventuate_postgres::PgEventContextExt`]), and the runtime commits
//! them together with the subscriber's checkpoint, so the view holds every event exactly once,
//! even across crashes. The in-memory store has no transactions, so there the updater is
//! registered as non-transactional (see [`CustomerViewUpdater::subscription_for`]) and the
//! in-memory view makes re-delivery harmless itself: it remembers the last version it applied
//! per entity and ignores events at or below it.

use std::collections::HashMap;

use eventuate_core::prelude::*;
use eventuate_core::{EventEnvelope, Position, Subscription};
use eventuate_postgres::PgEventContextExt;
use sqlx::PgConnection;

use crate::customer::{CreditReserved, CustomerCreated};
use crate::money::Money;
use crate::order::{OrderApproved, OrderCreated, OrderRejected, OrderState};
use crate::query::{CustomerView, OrderSummary, RECENT_ORDERS};
use crate::tables::Tables;

/// The view updater (subscriber id `customer-view`).
#[derive(Clone, Debug)]
pub struct CustomerViewUpdater {
    tables: Tables,
}

#[event_handler(subscribe = ["Customer", "Order"], id = "customer-view", transactional)]
impl CustomerViewUpdater {
    async fn customer_created(
        &self,
        ctx: &EventContext,
        event: &CustomerCreated,
    ) -> Result<(), HandlerError> {
        let change = Change::CustomerCreated {
            name: &event.name,
            credit_limit: event.credit_limit,
        };
        self.apply(ctx, change).await
    }

    async fn credit_reserved(
        &self,
        ctx: &EventContext,
        event: &CreditReserved,
    ) -> Result<(), HandlerError> {
        self.apply(ctx, Change::CreditReserved(event.amount)).await
    }

    async fn order_created(
        &self,
        ctx: &EventContext,
        event: &OrderCreated,
    ) -> Result<(), HandlerError> {
        let change = Change::OrderCreated {
            customer_id: &event.customer_id,
            total: event.total,
        };
        self.apply(ctx, change).await
    }

    async fn order_approved(
        &self,
        ctx: &EventContext,
        _: &OrderApproved,
    ) -> Result<(), HandlerError> {
        self.apply(ctx, Change::OrderDecided(OrderState::Approved, None))
            .await
    }

    async fn order_rejected(
        &self,
        ctx: &EventContext,
        event: &OrderRejected,
    ) -> Result<(), HandlerError> {
        let change = Change::OrderDecided(OrderState::Rejected, Some(&event.reason));
        self.apply(ctx, change).await
    }
}

/// What one event changes in the view; the row is the event's entity.
#[derive(Debug)]
enum Change<'a> {
    CustomerCreated { name: &'a str, credit_limit: Money },
    CreditReserved(Money),
    OrderCreated { customer_id: &'a str, total: Money },
    OrderDecided(OrderState, Option<&'a str>),
}

impl CustomerViewUpdater {
    /// An updater writing to `tables`.
    pub fn new(tables: Tables) -> Self {
        CustomerViewUpdater { tables }
    }

    /// The subscription to register the updater with: transactional on PostgreSQL, not on the
    /// in-memory store (which has no transactions).
    pub fn subscription_for(tables: &Tables, declared: Subscription) -> Subscription {
        declared.transactional(tables.is_postgres())
    }

    async fn apply(&self, ctx: &EventContext, change: Change<'_>) -> Result<(), HandlerError> {
        match &self.tables {
            Tables::Postgres(_) => {
                let mut conn = ctx.pg_transaction().await?;
                apply_in_postgres(&mut conn, ctx.event(), change).await?;
            }
            Tables::Memory(tables) => tables.view().apply(ctx.event(), change),
        }
        Ok(())
    }
}

async fn apply_in_postgres(
    conn: &mut PgConnection,
    event: &EventEnvelope,
    change: Change<'_>,
) -> Result<(), sqlx::Error> {
    let id = event.entity_id.as_str();
    let version = i64::try_from(event.entity_version).unwrap_or(i64::MAX);
    let query = match change {
        Change::CustomerCreated { name, credit_limit } => sqlx::query(
            "INSERT INTO customer_view (customer_id, name, credit_limit, customer_version) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(credit_limit.as_cents())
        .bind(version),
        Change::CreditReserved(amount) => sqlx::query(
            "UPDATE customer_view SET reserved_credit = reserved_credit + $2, \
             customer_version = $3 WHERE customer_id = $1 AND customer_version < $3",
        )
        .bind(id)
        .bind(amount.as_cents())
        .bind(version),
        Change::OrderCreated { customer_id, total } => sqlx::query(
            "INSERT INTO customer_view_orders (order_id, customer_id, total, state, \
             order_version, placed_tx, placed_seq) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (order_id) DO NOTHING",
        )
        .bind(id)
        .bind(customer_id)
        .bind(total.as_cents())
        .bind(OrderState::Pending.as_str())
        .bind(version)
        .bind(i64::try_from(event.position.transaction).unwrap_or(i64::MAX))
        .bind(i64::try_from(event.position.sequence).unwrap_or(i64::MAX)),
        Change::OrderDecided(state, reason) => sqlx::query(
            "UPDATE customer_view_orders SET state = $2, rejection_reason = $3, \
             order_version = $4 WHERE order_id = $1 AND order_version < $4",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(reason)
        .bind(version),
    };
    query.execute(conn).await?;
    Ok(())
}

/// The in-memory view.
#[derive(Debug, Default)]
pub(crate) struct MemoryView {
    customers: HashMap<String, CustomerRow>,
    orders: HashMap<String, OrderRow>,
    /// Last applied version per (entity type, entity id).
    applied: HashMap<(String, String), u64>,
}

#[derive(Debug)]
struct CustomerRow {
    name: String,
    credit_limit: Money,
    reserved_credit: Money,
}

#[derive(Debug)]
struct OrderRow {
    customer_id: String,
    total: Money,
    state: OrderState,
    rejection_reason: Option<String>,
    placed: Position,
}

impl MemoryView {
    fn apply(&mut self, event: &EventEnvelope, change: Change<'_>) {
        let key = (event.entity_type.clone(), event.entity_id.clone());
        let last = self.applied.entry(key).or_insert(0);
        if event.entity_version <= *last {
            return; // a re-delivery: already applied
        }
        *last = event.entity_version;
        let id = &event.entity_id;
        match change {
            Change::CustomerCreated { name, credit_limit } => {
                self.customers.insert(
                    id.clone(),
                    CustomerRow {
                        name: name.to_owned(),
                        credit_limit,
                        reserved_credit: Money::ZERO,
                    },
                );
            }
            Change::CreditReserved(amount) => {
                if let Some(row) = self.customers.get_mut(id) {
                    row.reserved_credit = row.reserved_credit.plus(amount);
                }
            }
            Change::OrderCreated { customer_id, total } => {
                self.orders.insert(
                    id.clone(),
                    OrderRow {
                        customer_id: customer_id.to_owned(),
                        total,
                        state: OrderState::Pending,
                        rejection_reason: None,
                        placed: event.position,
                    },
                );
            }
            Change::OrderDecided(state, reason) => {
                if let Some(row) = self.orders.get_mut(id) {
                    row.state = state;
                    row.rejection_reason = reason.map(str::to_owned);
                }
            }
        }
    }

    pub(crate) fn customer(&self, customer_id: &str) -> Option<CustomerView> {
        let row = self.customers.get(customer_id)?;
        let mut orders: Vec<(&String, &OrderRow)> = self
            .orders
            .iter()
            .filter(|(_, o)| o.customer_id == customer_id)
            .collect();
        orders.sort_by_key(|(_, o)| std::cmp::Reverse(o.placed));
        let recent_orders = orders
            .into_iter()
            .take(RECENT_ORDERS)
            .map(|(order_id, o)| OrderSummary {
                order_id: order_id.clone(),
                total: o.total,
                state: o.state,
                rejection_reason: o.rejection_reason.clone(),
            })
            .collect();
        Some(CustomerView {
            customer_id: customer_id.to_owned(),
            name: row.name.clone(),
            credit_limit: row.credit_limit,
            reserved_credit: row.reserved_credit,
            available_credit: row.credit_limit.minus(row.reserved_credit),
            recent_orders,
        })
    }
}

#[cfg(test)]
mod tests {
    use eventuate_core::EventMetadata;
    use uuid::Uuid;

    use super::*;

    fn envelope(entity_type: &str, id: &str, version: u64, seq: u64) -> EventEnvelope {
        EventEnvelope {
            event_id: Uuid::new_v4(),
            entity_type: entity_type.into(),
            entity_id: id.into(),
            entity_version: version,
            event_type: String::new(),
            payload: String::new(),
            metadata: EventMetadata::default(),
            position: Position::new(seq, seq),
        }
    }

    #[test]
    fn the_memory_view_applies_each_entity_version_once() {
        let mut view = MemoryView::default();
        let created = envelope("Customer", "c1", 1, 1);
        let reserved = envelope("Customer", "c1", 2, 3);
        let order = envelope("Order", "o1", 1, 2);
        let approved = envelope("Order", "o1", 2, 4);
        let customer = Change::CustomerCreated {
            name: "Ada",
            credit_limit: Money::cents(1000),
        };
        view.apply(&created, customer);
        for _ in 0..2 {
            let placed = Change::OrderCreated {
                customer_id: "c1",
                total: Money::cents(300),
            };
            view.apply(&order, placed);
            view.apply(&reserved, Change::CreditReserved(Money::cents(300)));
            view.apply(&approved, Change::OrderDecided(OrderState::Approved, None));
        }
        // An older event arriving late changes nothing either.
        view.apply(&created, Change::CreditReserved(Money::cents(5)));
        let seen = view.customer("c1").expect("the customer is in the view");
        assert_eq!(seen.reserved_credit, Money::cents(300));
        assert_eq!(seen.available_credit, Money::cents(700));
        assert_eq!(seen.recent_orders.len(), 1);
        assert_eq!(seen.recent_orders[0].state, OrderState::Approved);
        assert!(view.customer("c2").is_none());
    }
}
