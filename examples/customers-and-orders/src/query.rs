//! The query side's reader: the "customer with recent orders" view that
//! [`crate::view::CustomerViewUpdater`] maintains. Eventually consistent: a change made by a
//! command shows up here once the updater has handled its event.

use serde::{Deserialize, Serialize};

use crate::money::Money;
use crate::order::OrderState;
use crate::tables::Tables;

/// How many orders the view lists per customer, newest first.
pub const RECENT_ORDERS: usize = 10;

/// A customer, their credit, and their most recent orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerView {
    /// The customer's id.
    pub customer_id: String,
    /// Display name.
    pub name: String,
    /// Credit limit.
    pub credit_limit: Money,
    /// Credit reserved by approved orders.
    pub reserved_credit: Money,
    /// Credit limit less reserved credit.
    pub available_credit: Money,
    /// The [`RECENT_ORDERS`] most recent orders, newest first.
    pub recent_orders: Vec<OrderSummary>,
}

/// One order in a [`CustomerView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The order's id.
    pub order_id: String,
    /// Its total.
    pub total: Money,
    /// Its state.
    pub state: OrderState,
    /// Why it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection_reason: Option<String>,
}

/// Reads the view.
#[derive(Clone, Debug)]
pub struct CustomerViewQuery {
    tables: Tables,
}

impl CustomerViewQuery {
    /// A query over `tables`.
    pub fn new(tables: Tables) -> Self {
        CustomerViewQuery { tables }
    }

    /// The customer's view, `None` if the view has no such customer (yet).
    pub async fn find(&self, customer_id: &str) -> Result<Option<CustomerView>, sqlx::Error> {
        let pool = match &self.tables {
            Tables::Memory(tables) => return Ok(tables.view().customer(customer_id)),
            Tables::Postgres(pool) => pool,
        };
        // One statement, so customer and orders come from one snapshot.
        let row: Option<(String, i64, i64, sqlx::types::Json<Vec<OrderSummary>>)> = sqlx::query_as(
            "SELECT c.name, c.credit_limit, c.reserved_credit, COALESCE(( \
                   SELECT json_agg(json_build_object('order_id', o.order_id, \
                     'total', o.total, 'state', o.state, \
                     'rejection_reason', o.rejection_reason) \
                     ORDER BY o.placed_tx DESC, o.placed_seq DESC) \
                   FROM (SELECT * FROM customer_view_orders \
                     WHERE customer_id = c.customer_id \
                     ORDER BY placed_tx DESC, placed_seq DESC LIMIT $2) o \
                 ), '[]'::json) \
                 FROM customer_view c WHERE c.customer_id = $1",
        )
        .bind(customer_id)
        .bind(RECENT_ORDERS as i64)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|(name, credit_limit, reserved_credit, orders)| {
            let (limit, reserved) = (Money::cents(credit_limit), Money::cents(reserved_credit));
            CustomerView {
                customer_id: customer_id.to_owned(),
                name,
                credit_limit: limit,
                reserved_credit: reserved,
                available_credit: limit.minus(reserved),
                recent_orders: orders.0,
            }
        }))
    }
}
