//! Procedural macros of eventuate-rs: `#[derive(Events)]`, `#[aggregate]`, `#[command_handler]`
//! and `#[event_handler]`. Use them through `eventuate_core` (`use eventuate_core::prelude::*`),
//! which re-exports them; the code they generate depends only on `eventuate_core`.
//!
//! Each macro implements traits of `eventuate_core` that can also be written by hand; the docs
//! of each macro show the code it expands to.

mod ast;
mod attr;
mod check;
mod dispatch;
mod entry;
mod expand;

use proc_macro::TokenStream;

/// Implements `EventSet` for an enum of events: one tuple variant per event struct.
///
/// An event's stored **type name** is the name of its struct (the last path segment of the
/// variant's field type, `OrderCreated`), not the variant's name, so that a subscriber in
/// another service can declare its own `OrderCreated` with the fields it needs. Rename one with
/// `#[event(name = "..")]`, e.g. to keep the stored name when the struct is renamed.
///
/// Evolving an event: `#[event(version = 3, upcast(from = 1, with = v1_to_v2), upcast(from =
/// 2, with = v2_to_v3))]` declares its schema version (recorded with each new event) and the
/// chain of `fn(serde_json::Value) -> Result<serde_json::Value, String>` that brings stored
/// older versions up to it (no gaps, one step per version); `aliases("OrderCreated", ..)` are
/// older stored names still read as this event (never another event's name or alias). See
/// the README's "Evolving events".
///
/// ```text
/// #[derive(Debug, Clone, Events)]
/// pub enum OrderEvent {
///     Created(OrderCreated),
///     Approved(OrderApproved),
///     #[event(name = "OrderNoteV2")]
///     Noted(OrderNoted),
/// }
/// ```
///
/// expands to (paths shortened):
///
/// ```text
/// impl EventSet for OrderEvent {
///     const EVENT_TYPES: &'static [&'static str] = &["OrderCreated", "OrderApproved", "OrderNoteV2"];
///     fn event_type(&self) -> &'static str {
///         match *self { Self::Created(_) => "OrderCreated", /* .. */ }
///     }
///     fn encode(&self) -> Result<String, serde_json::Error> {
///         match *self { Self::Created(ref event) => __private::encode::<OrderCreated>(event), /* .. */ }
///     }
///     fn decode(event_type: &str, payload: &str) -> Result<Self, DecodeError> {
///         match event_type {
///             "OrderCreated" => Result::map(__private::decode::<OrderCreated>(payload), Self::Created),
///             // ..
///             _ => Err(DecodeError::UnknownType),
///         }
///     }
/// }
/// // Routes each event to the aggregate's `Apply` impl (`#[apply]` methods).
/// impl<A> ApplyAll<A> for OrderEvent
/// where A: Apply<OrderCreated> + Apply<OrderApproved> + Apply<OrderNoted>
/// {
///     fn apply_to(&self, aggregate: &mut A) {
///         match *self { Self::Created(ref event) => Apply::<OrderCreated>::apply(aggregate, event), /* .. */ }
///     }
/// }
/// impl From<OrderCreated> for OrderEvent { fn from(event: OrderCreated) -> Self { Self::Created(event) } }
/// impl EventOf<OrderEvent> for OrderCreated {}
/// // .. the same for each variant
/// ```
///
/// Errors: not an enum; a variant that does not wrap exactly one type; two variants with the
/// same type name (rename one) or the same type; a name that is not an identifier (ASCII letter
/// or `_` first, then letters, digits, `_`, `-`, `.`).
#[proc_macro_derive(Events, attributes(event))]
pub fn derive_events(input: TokenStream) -> TokenStream {
    entry::derive_events(input.into()).into()
}

/// Implements `Aggregate` for a struct holding an aggregate's state.
///
/// Keys: `events = Path` (required: the event set, an enum with `#[derive(Events)]`);
/// `name = "Order"` (the stored entity type; default: the struct's name);
/// `aliases("PurchaseOrder", ..)` (older entity type names: an entity whose history is stored
/// under one of them is loaded, and appended to, under that name; see the README's *Evolving
/// events*);
/// `snapshot_every = 100` (take a snapshot every 100 events; needs `Serialize` and
/// `Deserialize` on the struct); `snapshot_version = 2` (bump it when the state's shape changes,
/// so old snapshots are ignored); `ignore(EventA, EventB)` (events that do not change the
/// state, so they need no `#[apply]` method).
///
/// Every event of the set needs an `#[apply]` method in the aggregate's `#[command_handler]`
/// impl, or an entry in `ignore(..)`; a missing one fails the build naming the aggregate and the
/// event.
///
/// ```text
/// #[aggregate(name = "Order", aliases("PurchaseOrder"), events = OrderEvent,
///     snapshot_every = 100, ignore(OrderNoted))]
/// #[derive(Debug, Default, Clone, Serialize, Deserialize)]
/// pub struct Order { approved: bool, total: u64 }
/// ```
///
/// expands to the struct, unchanged, and (paths shortened):
///
/// ```text
/// impl Aggregate for Order {
///     const ENTITY_TYPE: &'static str = "Order";
///     const ENTITY_TYPE_ALIASES: &'static [&'static str] = &["PurchaseOrder"];
///     const SNAPSHOT_EVERY: Option<u64> = Some(100);
///     type Event = OrderEvent;
///     fn initial() -> Self {
///         <Self as InitialState>::initial_state() // the struct's `Default`
///     }
///     fn apply(&mut self, event: &OrderEvent) {
///         <OrderEvent as ApplyAll<Self>>::apply_to(event, self)
///     }
///     fn to_snapshot(&self) -> Option<Result<String, serde_json::Error>> {
///         Some(serde_json::to_string::<Self>(self))
///     }
///     fn from_snapshot(snapshot: &str) -> Option<Result<Self, serde_json::Error>> {
///         Some(serde_json::from_str::<Self>(snapshot))
///     }
///     // `Some(self.clone())` when the struct is `Clone` (autoref specialization), else `None`:
///     // only `Clone` aggregates go into the repository's aggregate cache.
///     fn clone_for_cache(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// impl Apply<OrderNoted> for Order {
///     fn apply(&mut self, _: &OrderNoted) {}
/// }
/// ```
#[proc_macro_attribute]
pub fn aggregate(args: TokenStream, input: TokenStream) -> TokenStream {
    entry::aggregate(args.into(), input.into()).into()
}

/// Turns the methods of an aggregate's inherent impl block into its command handlers and its
/// `#[apply]` methods.
///
/// - `#[apply] fn name(&mut self, event: &Event)` applies one event type to the state
///   (a misspelling such as `#[aply]` is reported with the right spelling). `Event` must be
///   one of the aggregate's events (`EventOf<A::Event>`, as `#[derive(Events)]` declares
///   them): a method for another type would never run, and is reported at that type.
/// - Every other method is a command handler: `fn name(&self, command: Command) ->
///   Result<R, Error>`, or with `command: &Command`. A handler decides; it does not mutate the
///   state (its events do, through `#[apply]`) and is not `async`. `R` is one event (any type
///   with `Into<Event>`), a `Vec` of events, or a tuple of events (in order); a type that is not
///   an event of the aggregate is reported at that type, in the return type. A command taken by
///   value must be `Clone`: the repository may run the handler again after a concurrency
///   conflict. `Error` must implement `std::error::Error + Send + Sync + 'static`.
///
/// **`#[command_handler(dispatch)]`** also implements `CommandSet`: the block's commands can
/// be decoded from JSON by type name (the last segment of the command type's path) and run
/// (`eventuate_core::commands::dispatch`, the event store server's command route). Every
/// command of the block must implement `serde::Deserialize` (reported at the command type);
/// commands that do not belong in a block without `dispatch`. One `dispatch` block per
/// aggregate. With eventuate-core's `schemas` feature it also lists each command's JSON Schema
/// (for types that derive `schemars::JsonSchema`). See the README's macro reference for the
/// expansion.
///
/// There is one handler per command type and one `#[apply]` per event type. Other items
/// (constants, types) are left alone; put helper functions in another impl block (a method
/// with no command or no `self` is reported, once, saying so).
///
/// ```text
/// #[command_handler]
/// impl Order {
///     fn create(&self, command: CreateOrder) -> Result<OrderCreated, OrderError> { .. }
///     fn approve(&self, command: &ApproveOrder) -> Result<Vec<OrderEvent>, OrderError> { .. }
///     #[apply]
///     fn on_created(&mut self, event: &OrderCreated) { self.total = event.total; }
/// }
/// ```
///
/// expands to the impl block (without the `#[apply]` attributes), and (paths shortened):
///
/// ```text
/// impl HandleCommand<CreateOrder> for Order {
///     type Error = OrderError;
///     fn handle(&self, command: &CreateOrder) -> Result<Vec<OrderEvent>, OrderError> {
///         match Self::create(self, <CreateOrder as CloneCommand>::clone_command(command)) {
///             // `IntoEvent` is `Into`, with an error message that names the aggregate's events.
///             Ok(output) => Ok(Vec::from([<OrderCreated as IntoEvent<OrderEvent>>::into_event(output)])),
///             Err(error) => Err(error),
///         }
///     }
/// }
/// impl HandleCommand<ApproveOrder> for Order {
///     type Error = OrderError;
///     fn handle(&self, command: &ApproveOrder) -> Result<Vec<OrderEvent>, OrderError> {
///         match Self::approve(self, command) {
///             Ok(output) => Ok(output.into_iter().map(|event| IntoEvent::<OrderEvent>::into_event(event)).collect()),
///             Err(error) => Err(error),
///         }
///     }
/// }
/// impl Apply<OrderCreated> for Order {
///     fn apply(&mut self, event: &OrderCreated) { Self::on_created(self, event) }
/// }
/// // `OrderCreated` is one of `Order`'s events (`AppliedEvent` holds for each `EventOf` the set).
/// const _: () = <OrderCreated as AppliedEvent<<Order as Aggregate>::Event>>::CHECKED;
/// ```
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    entry::command_handler(args.into(), input.into()).into()
}

/// Implements `Subscriber` for a type from an impl block of event handlers.
///
/// Every method is a handler: `async fn name(&self, ctx: &EventContext, event: &Event) ->
/// Result<(), E>` with `E: Into<HandlerError>`. A handler is matched by the event's stored type
/// name: the last path segment of `Event`, or `#[event(name = "..")]` on the method. Events are
/// decoded from JSON by name, so the subscriber may declare its own `Event` struct with only the
/// fields it needs (it may live in another crate or service).
///
/// Keys:
/// - `subscribe` (required): the entity types to consume: `"Order"`, an aggregate type `Order`,
///   or a list of either (`["Order", Customer]`); with a single aggregate type (not a list) the
///   build checks that every handler takes one of that aggregate's events (and under the name it
///   is stored with); in a list, aggregate types only supply their entity type names;
/// - `id = "customer-workflow"`: the durable id (checkpoint, leases, parked events); default:
///   the type's name;
/// - `start = "beginning" | "now"`: where a new subscriber starts (default `"beginning"`);
/// - `partitions = 3`: partitions consumed in parallel (by entity id; default 1);
/// - `max_attempts = 5`: attempts before an event is parked;
/// - `transactional` (or `transactional = true`): run each delivery in a store transaction
///   committed with the checkpoint.
///
/// ```text
/// #[event_handler(subscribe = "Order", id = "customer-workflow", partitions = 3)]
/// impl CustomerWorkflow {
///     async fn reserve(&self, ctx: &EventContext, event: &OrderCreated) -> Result<(), HandlerError> {
///         ctx.update::<Customer>(&event.customer_id, ReserveCredit { .. }).await?;
///         Ok(())
///     }
/// }
/// ```
///
/// expands to the impl block, and (paths shortened):
///
/// ```text
/// impl Subscriber for CustomerWorkflow {
///     fn subscription(&self) -> Subscription {
///         Subscription::new("customer-workflow", ["Order"])
///             .event_types(["OrderCreated"])
///             .partitions(3)
///     }
///     fn handle<'a>(&'a self, ctx: &'a EventContext)
///         -> impl Future<Output = Result<(), HandlerError>> + Send + 'a
///     {
///         async move {
///             let event_type = ctx.event().event_type.as_str();
///             if event_type == "OrderCreated" {
///                 let event: OrderCreated = match __private::decode_for_handler::<OrderCreated>(ctx) {
///                     Ok(event) => event,
///                     Err(error) => return Err(error),
///                 };
///                 return match HandlerFuture::checked(Self::reserve(self, ctx, &event)).await {
///                     Ok(()) => Ok(()),
///                     Err(error) => Err(IntoHandlerError::into_handler_error(error)),
///                 };
///             }
///             Ok(())
///         }
///     }
/// }
/// ```
///
/// With `subscribe = Order`, the entity type is `<Order as Aggregate>::ENTITY_TYPE` and each
/// handler gets a compile-time check that its event is `EventOf<<Order as Aggregate>::Event>`.
///
/// **Catch-all.** One method may carry `#[catch_all]`: `async fn name(&self, ctx:
/// &EventContext) -> Result<(), E>`. It receives every event that no typed handler takes
/// (audit logs, relays), undecoded (`ctx.event()`); the subscription then has no
/// `event_types` filter, so the runtime delivers every event type of the subscribed entities.
/// At most one per impl.
///
/// **`Send`.** The runtime is multi-threaded, so each handler's future must be `Send`. Each
/// call is checked (`__private::HandlerFuture`) at the handler's name: a future that is not
/// `Send` is reported there, once; the usual cause is a value that is not `Send` (an `Rc`, a
/// `RefCell` borrow, a `std::sync::MutexGuard`) alive across an `.await`. The error type `E`
/// is converted with `__private::IntoHandlerError`, so one that is neither `HandlerError` nor
/// a `std::error::Error + Send + Sync + 'static` (say `String`) is reported at `E`.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    entry::event_handler(args.into(), input.into()).into()
}
