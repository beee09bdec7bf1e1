//! TODO
/// stub
#[derive(Debug, Default)]
pub struct InMemoryEventStore;
