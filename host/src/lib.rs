pub mod policy;
pub mod secrets;
pub mod store;
