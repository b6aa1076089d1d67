//! placeholder
/// placeholder
#[derive(Debug)]
pub struct TandemClient;
