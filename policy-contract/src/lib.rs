//! The policy contract as plain Rust: what crosses the WIT boundary, in types
//! that neither the host nor a guest generated. Both sides depend on this
//! crate; neither depends on the other.
//!
//! The WIT packages themselves live in `wit/` beside this file, one folder per
//! released version (`policy@0.1.0`, `policy@0.2.0`); a released one is never
//! edited.

pub mod call;
pub mod model;

pub use call::{Answer, Call};
