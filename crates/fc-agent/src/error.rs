//! The agent's errors.

use fcvm_proto::ErrorKind;

/// Why a process could not start: the kind the host maps to an exit code, and the text.
pub type StartError = (ErrorKind, String);

pub fn failed(msg: impl Into<String>) -> StartError {
    (ErrorKind::Failed, msg.into())
}

pub fn os<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StartError {
    move |e| failed(format!("{what}: {e}"))
}
