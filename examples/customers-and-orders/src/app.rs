//! Wiring: which store, which subscribers (by [`Role`]), which HTTP routes.

use std::fmt;
use std::str::FromStr;

use eventuate_core::runtime::Running;
use eventuate_core::{BoxError, Eventuate, InMemoryEventStore, Repository};
use eventuate_postgres::PostgresEventStore;

use crate::gateway::ConfirmationGateway;
use crate::tables::Tables;
use crate::view::CustomerViewUpdater;
use crate::workflows::{CustomerWorkflow, OrderWorkflow};

/// Which half of the application a process runs. Two processes with the roles `customers`
/// and `orders` on one database make up the whole application.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Everything in one process.
    #[default]
    All,
    /// Customer side: `POST /customers`, `GET /customers/{id}`, the credit reservation
    /// (`customer-workflow`) and the customer view (`customer-view`).
    Customers,
    /// Order side: `POST /orders`, `GET /orders/{id}`, approval and rejection
    /// (`order-workflow`) and the confirmation gateway (`order-confirmation-gateway`).
    Orders,
}

impl Role {
    /// Whether the role runs the customer side.
    pub fn customers(self) -> bool {
        matches!(self, Role::All | Role::Customers)
    }

    /// Whether the role runs the order side.
    pub fn orders(self) -> bool {
        matches!(self, Role::All | Role::Orders)
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Role::All),
            "customers" => Ok(Role::Customers),
            "orders" => Ok(Role::Orders),
            other => Err(format!(
                "unknown role `{other}`: expected all, customers or orders"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::All => "all",
            Role::Customers => "customers",
            Role::Orders => "orders",
        })
    }
}

/// The event store the application runs on.
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PostgresEventStore),
    /// In memory (when no PostgreSQL is available).
    Memory(InMemoryEventStore),
}

/// One process of the application: a store, the application's tables, and a role.
#[derive(Clone, Debug)]
pub struct App {
    store: Store,
    tables: Tables,
    role: Role,
}

/// A started application: the dispatcher running its subscribers, and its HTTP API.
#[derive(Debug)]
pub struct Started {
    /// The dispatcher.
    pub running: Running,
    /// The HTTP API.
    pub router: axum::Router,
}

impl App {
    /// The application on the PostgreSQL database at `url`: migrates the event store and
    /// creates the application's tables if needed.
    pub async fn postgres(url: &str, role: Role) -> Result<Self, BoxError> {
        let store = PostgresEventStore::builder()
            .migrate_on_connect(true)
            .connect(url)
            .await?;
        Self::on_postgres(store, role).await
    }

    /// The application on an already connected PostgreSQL store.
    pub async fn on_postgres(store: PostgresEventStore, role: Role) -> Result<Self, BoxError> {
        let tables = Tables::postgres(store.pool().clone()).await?;
        Ok(App {
            store: Store::Postgres(store),
            tables,
            role,
        })
    }

    /// The application on a fresh in-memory store.
    pub fn in_memory() -> Self {
        App {
            store: Store::Memory(InMemoryEventStore::new()),
            tables: Tables::memory(),
            role: Role::All,
        }
    }

    /// The application's tables (view, confirmations).
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Stops the store's background tasks (LISTEN connection, NOTIFY forwarder) and closes its
    /// pool; call it after the dispatcher shut down.
    pub async fn close(&self) {
        if let Store::Postgres(store) = &self.store {
            store.close().await;
        }
    }

    /// The dispatcher with the subscribers of this process's role, not started yet.
    pub fn runtime(&self) -> Eventuate {
        let runtime = match &self.store {
            Store::Postgres(store) => Eventuate::new(store.clone()),
            Store::Memory(store) => Eventuate::new(store.clone()),
        };
        // The entity types the subscribers may name: a subscription to a type the runtime is
        // told of is not warned about while no event of it is stored yet (a fresh database).
        let mut runtime = runtime
            .aggregate::<crate::customer::Customer>()
            .aggregate::<crate::order::Order>();
        if self.role.customers() {
            let tables = self.tables.clone();
            runtime = runtime
                .subscriber(CustomerWorkflow)
                .subscriber_with(CustomerViewUpdater::new(tables.clone()), |s| {
                    CustomerViewUpdater::subscription_for(&tables, s)
                });
        }
        if self.role.orders() {
            runtime = runtime
                .subscriber(OrderWorkflow)
                .subscriber(ConfirmationGateway::new(self.tables.clone()));
        }
        runtime
    }

    /// The HTTP API of this process's role over `repository`.
    pub fn router(&self, repository: Repository) -> axum::Router {
        crate::http::router(repository, self.tables.clone(), self.role)
    }

    /// The event store server over this process's store, with the aggregates of its role
    /// registered: their commands can be posted by type name
    /// (`POST /aggregates/Order/{id}/commands/ApproveOrder`), their schemas are served
    /// (`GET /schemas/Order`), and REST writes to them are validated against those schemas.
    pub fn event_store(&self) -> eventuate_server::Server {
        let store: std::sync::Arc<dyn eventuate_core::EventStore> = match &self.store {
            Store::Postgres(store) => std::sync::Arc::new(store.clone()),
            Store::Memory(store) => std::sync::Arc::new(store.clone()),
        };
        let mut server = eventuate_server::Server::new(store);
        if self.role.customers() {
            server = server.aggregate::<crate::customer::Customer>();
        }
        if self.role.orders() {
            server = server.aggregate::<crate::order::Order>();
        }
        server
    }

    /// Starts the dispatcher and builds the HTTP API over its repository.
    pub fn start(&self) -> Result<Started, BoxError> {
        let running = self.runtime().start()?;
        let router = self.router(running.repository());
        Ok(Started { running, router })
    }
}
