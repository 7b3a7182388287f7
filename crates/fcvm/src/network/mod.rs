//! VM networking (stub: loopback only until the network issue lands).
//!
//! API the rest of fcvm codes against: `NetworkOptions` from the flags, `check` before
//! anything is created, `setup` for a VM (returns QEMU args, the guest config, and owned
//! helpers that are torn down when the `Network` is dropped).

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("Invalid --network {0:?}: expected rootless, bridged or none")]
    Mode(String),
    #[error("Invalid --publish {0:?}")]
    Publish(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Rootless,
    Bridged,
    #[default]
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        match s {
            "rootless" => Ok(NetworkMode::Rootless),
            "bridged" => Ok(NetworkMode::Bridged),
            "none" => Ok(NetworkMode::None),
            _ => Err(NetworkError::Mode(s.into())),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    pub mode: NetworkMode,
    /// Raw `--publish` values (podman syntax).
    pub publish: Vec<String>,
}

/// What `fcvm ls --json` shows about a VM's network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub mode: NetworkMode,
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub ports: Vec<String>,
}

/// A VM's network while it runs; dropping it tears everything down.
#[derive(Debug, Default)]
pub struct Network {
    pub qemu_args: Vec<String>,
    pub guest: Option<fcvm_proto::NetConfig>,
    pub info: NetworkInfo,
}

/// Validates the options up front (ports free, tools present, privileges).
pub fn check(opts: &NetworkOptions) -> Result<(), NetworkError> {
    if opts.mode != NetworkMode::None || !opts.publish.is_empty() {
        return Err(NetworkError::Mode(
            format!("{:?}", opts.mode).to_lowercase(),
        ));
    }
    Ok(())
}

/// Sets up the network of one VM whose directory is `vm_dir`.
pub fn setup(opts: &NetworkOptions, _vm_dir: &Path, _vm_id: &str) -> Result<Network, NetworkError> {
    check(opts)?;
    Ok(Network::default())
}
