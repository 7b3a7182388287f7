//! `containerd-shim-fcvm-v2`: a containerd runtime v2 shim (`io.containerd.fcvm.v2`) that
//! runs each container in an fcvm microVM, a CRI pod's containers in one (docs/containerd.md).
//!
//! containerd-shim 0.11 (the last whose `start` prints the plain address containerd 1.6
//! reads) runs the protocol: `start` spawns the shim daemon for a container (or, for a CRI
//! pod's later container, returns the address of its pod's daemon), the daemon serves
//! [`task::Service`], `delete` cleans up after a dead one.
//!
//! Its reaper is off: with it, a SIGCHLD handler calls `waitpid(-1)` and takes the exits of
//! the children fcvm waits for itself (QEMU, mkfs.erofs), so they would never be seen. For
//! the same reason the shim is no subreaper: nothing of ours daemonizes.

mod container;
mod events;
mod pod;
mod process;
mod rootfs;
mod spec;
mod stats;
mod task;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{run, spawn, ExitSignal, Shim};
use containerd_shim::protos::api::DeleteResponse;
use containerd_shim::{Config, Error, Flags, StartOpts};

struct FcvmShim {
    namespace: String,
    id: String,
    socket: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for FcvmShim {
    type T = task::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        FcvmShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // A CRI pod's containers share one shim (and its VM): the socket is named after the
        // sandbox, and a later container's `start` finds the daemon serving there and
        // returns its address (containerd-shim's `spawn`: the new daemon sees the address
        // in use and exits).
        let grouping = pod::sandbox_of_bundle(std::path::Path::new("config.json"))
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // The daemon removes its socket at exit by this file (in the bundle, our cwd).
        std::fs::write("address", &address)
            .map_err(|e| Error::Other(format!("cannot write the address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // The daemon died without Delete: its VMM died with it (parent-death signal); what
        // is left is the VM's directory and name.
        let dirs = fcvm::paths::Dirs::from_env();
        if let Ok((dir, st)) = fcvm::vm::find(&dirs, &container::vm_name(&self.namespace, &self.id))
        {
            let _ = fcvm::vm::remove(&dirs, &dir, &st, Some(std::time::Duration::ZERO));
        }
        // A pod member's root, which its daemon mounted on the bundle (nothing else mounts
        // there: containerd leaves that to the shim); the bundle is containerd's to remove.
        let _ = nix::mount::umount2("rootfs", nix::mount::MntFlags::MNT_DETACH);
        // And its socket, which only a daemon that ends by itself removes — unless a daemon
        // still answers there: a pod's daemon serves its other containers, and containerd
        // runs this cleanup for one of them whose Create failed too.
        if let Ok(address) = std::fs::read_to_string("address") {
            let path = address.trim().trim_start_matches("unix://");
            if std::path::Path::new(path).starts_with(containerd_shim::SOCKET_ROOT)
                && std::os::unix::net::UnixStream::connect(path).is_err()
            {
                let _ = std::fs::remove_file(path);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(
                containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                    ..Default::default()
                },
            ),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        // A pod's later container spawns a daemon that finds the pod's serving and exits
        // (containerd-shim asks for the service before it knows): it logs nothing.
        let path = self.socket.trim_start_matches("unix://");
        if path.is_empty() || std::os::unix::net::UnixStream::connect(path).is_err() {
            init_logging();
        }
        task::Service::new(&self.namespace, publisher, self.exit.clone())
    }
}

/// The daemon logs to the `log` FIFO in its bundle directory, which containerd copies into
/// its own log.
fn init_logging() {
    let Ok(log) = std::fs::OpenOptions::new().write(true).open("log") else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FCVM_SHIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        .with_writer(std::sync::Mutex::new(log))
        .try_init();
    tracing::info!(
        "containerd-shim-fcvm-v2 {} serving",
        env!("CARGO_PKG_VERSION")
    );
}

// Current-thread, as fcvm's own binary: QEMU's parent-death signal fires when the thread that
// spawned it ends (docs/design.md §3), and this thread lives as long as the shim.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    // fcvm's progress lines are for a terminal; the shim has none.
    std::env::set_var("FCVM_QUIET", "1");
    let config = Config {
        no_setup_logger: true,
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    run::<FcvmShim>("io.containerd.fcvm.v2", Some(config)).await;
    // Not returning into the runtime's drop: it would wait for a blocking open of a stdin
    // FIFO whose writer never came.
    std::process::exit(0);
}
