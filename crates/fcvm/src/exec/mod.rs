//! How `fcvm exec` and `fcvm snapshot create` reach a running VM.
//!
//! Only the fcvm process that owns a VM holds its agent session (the channel socket takes one
//! client). It serves the VM's exec socket ([`server`]); the commands connect there as
//! clients: [`client`] runs one process (`fcvm exec`), [`snapshot_request`] asks the owner to
//! snapshot its VM (`fcvm snapshot create`). The three share only the socket's name,
//! [`server::EXEC_SOCK`], and the session protocol.

pub mod client;
pub mod server;
pub mod snapshot_request;

pub use client::{exec, ExecOptions};
pub use snapshot_request::request_snapshot;

#[cfg(test)]
mod tests;
