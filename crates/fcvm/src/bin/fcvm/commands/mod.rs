//! One file per verb: parse, call the library, add context.

pub mod exec;
pub mod logs;
pub mod ls;
pub mod podman;
pub mod rm;
pub mod serve;
pub mod setup;
pub mod snapshot;
