//! TODO
/// stub
#[derive(Debug)]
pub struct Eventuate;
