//! TODO
/// stub
#[derive(Debug)]
pub struct AggregateFixture;
