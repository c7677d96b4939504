//! kdps-registration binary.
fn main() {}
