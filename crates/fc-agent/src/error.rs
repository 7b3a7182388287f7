//! The agent's error type: one enum for the whole agent, its variants named after the operation
//! that failed, their sources kept. A leaf: every module returns it, and it names no module.
//!
//! Text is made only where an error leaves the agent: in a `Msg` to the host ([`Error::wire`],
//! with [`Error::kind`] for the exit code the host maps it to) and in log lines ([`Report`]).
//! Both print the whole chain, `Mount /dev/vdb on /mnt/image (erofs): ENODEV: No such device`:
//! a message never repeats its source. The process errors the user sees as podman's
//! (`NotFound`, `NotExecutable`, an unknown user or group) keep podman's exact words.

use fcvm_proto::{codec::CodecError, ErrorKind, Msg, Target, PORT_NAME};
use nix::errno::Errno;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files, mounts and system calls -------------------------------------------------
    #[error("Mkdir {}", .0.display())]
    Mkdir(PathBuf, #[source] io::Error),
    #[error("Open {}", .0.display())]
    Open(PathBuf, #[source] io::Error),
    #[error("Read {}", .0.display())]
    Read(PathBuf, #[source] io::Error),
    #[error("Write {}", .0.display())]
    Write(PathBuf, #[source] io::Error),
    #[error("Mount {src} on {dst} ({fstype})")]
    Mount {
        src: String,
        dst: String,
        fstype: String,
        #[source]
        source: Errno,
    },
    #[error("Move the mount {src} to {dst}")]
    MoveMount {
        src: String,
        dst: String,
        #[source]
        source: Errno,
    },
    #[error("Move {} to the new root", .0.display())]
    MoveEntry(PathBuf, #[source] io::Error),
    #[error("Chdir {}", .0.display())]
    Chdir(PathBuf, #[source] io::Error),
    #[error("Chroot")]
    Chroot(#[source] Errno),
    #[error("Pipe")]
    Pipe(#[source] Errno),
    #[error("Open a pty")]
    Openpty(#[source] Errno),
    #[error("Dup")]
    Dup(#[source] io::Error),
    #[error("Start a {0} thread")]
    Thread(&'static str, #[source] io::Error),
    #[error("Socket")]
    Socket(#[source] io::Error),
    /// An ioctl, named by its request (`SIOCSIFADDR`).
    #[error("{0}")]
    Ioctl(&'static str, #[source] io::Error),
    #[error("Set the hostname to {0}")]
    SetHostname(String, #[source] Errno),
    #[error("Set the clock")]
    SetClock(#[source] io::Error),
    #[error("Load module {0}")]
    LoadModule(String, #[source] Errno),
    #[error("Create a memfd")]
    MemfdCreate(#[source] Errno),
    #[error("Seal the memfd")]
    Seal(#[source] Errno),
    #[error("Bind the sealed copy over {}", .0.display())]
    BindSealed(PathBuf, #[source] Errno),

    // ---- the channel and the session ----------------------------------------------------
    #[error("No virtio-serial port named {PORT_NAME}")]
    NoPort,
    #[error("Malformed frame")]
    MalformedFrame(#[source] CodecError),
    #[error("Stale epoch {0}")]
    StaleEpoch(u64),
    #[error("No such stream")]
    NoSuchStream,

    // ---- the container and the network --------------------------------------------------
    #[error("No image disk found")]
    NoImageDisk,
    #[error("No writable disk found")]
    NoWritableDisk,
    #[error("No disk with serial {0} (for {1})")]
    NoExtraDisk(String, String),
    #[error("No {0}: the VM has no network device")]
    NoInterface(&'static str),
    #[error("Bad address {0:?}")]
    BadAddress(String),
    #[error("Bad prefix {0:?}")]
    BadPrefix(String),
    #[error("Bad gateway {0:?}")]
    BadGateway(String),
    #[error("Build the OCI {0}")]
    OciConfig(&'static str, #[source] oci_spec::OciSpecError),
    #[error("Serialize {}", .0.display())]
    Json(PathBuf, #[source] serde_json::Error),
    #[error("crun run --detach exited {code}: {stderr}")]
    CreateWarm { code: i32, stderr: String },
    #[error("crun wrote no pid file")]
    NoPidFile,
    #[error("Encode the command for the container")]
    EncodeInitSpec(#[source] postcard::Error),
    #[error("Hand the command to the container")]
    HandOver(#[source] io::Error),
    #[error("Hear back from the container")]
    HearBack(#[source] io::Error),

    // ---- processes ----------------------------------------------------------------------
    #[error("No command given")]
    NoCommand,
    /// The executable does not exist (podman's words; exit 127).
    #[error("{}", not_found(.name, .target))]
    NotFound { name: String, target: Target },
    /// It exists but cannot be executed (podman's words; exit 126).
    #[error("{}", not_executable(.name, .target))]
    NotExecutable { name: String, target: Target },
    #[error("unable to find user {0}")]
    NoSuchUser(String),
    #[error("unable to find group {0}")]
    NoSuchGroup(String),
    #[error("NUL byte in {0:?}")]
    NulByte(String),
    #[error("Spawn {0}")]
    Spawn(String, #[source] io::Error),
    #[error("The reaper is gone")]
    ReaperGone,
    #[error("Container already running")]
    ContainerRunning,
    #[error("Container is not prepared")]
    NotPrepared,
    #[error("Container is not running")]
    ContainerNotRunning,
    #[error("The container is not running (after {0:?})")]
    ContainerNotCreated(Duration),
    // ---- pods: the VM's further containers (crate::pods) ---------------------------------
    #[error("Invalid container id {0:?}")]
    BadPodId(String),
    #[error("Container {0} exists")]
    PodExists(String),
    #[error("No container {0}")]
    NoSuchPod(String),
    #[error("Too many containers in this VM (at most {0})")]
    TooManyPods(usize),
    #[error("Map {0} is not mounted")]
    NoSuchMap(u32),
    #[error("Map {0} is in use")]
    MapInUse(u32),
    #[error("Invalid bind destination {0:?} (absolute, no '..')")]
    BadBindDestination(String),
    #[error("Too many maps in this VM (at most {0})")]
    TooManyMaps(usize),
    #[error("The agent has no map channel")]
    NoMapChannel,
    #[error("Unmount {0}")]
    Unmount(String, #[source] Errno),
    #[error("crun delete {0} exited {1}")]
    CrunDelete(String, i32),
    #[error("Signal {sig} to {pid}")]
    Kill {
        pid: i32,
        sig: i32,
        #[source]
        source: io::Error,
    },

    // ---- HTTP probes --------------------------------------------------------------------
    #[error("{url}: {why}")]
    ProbeUrl { url: String, why: &'static str },
    #[error("{url}: bad port {port:?}")]
    ProbePort { url: String, port: String },
    #[error("Cannot resolve {0}")]
    Resolve(String, #[source] io::Error),
    #[error("{0} has no address")]
    NoAddress(String),
    #[error("Connect {0}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("{url}: no answer within {} ms", .timeout.as_millis())]
    ProbeTimeout { url: String, timeout: Duration },
    #[error("{0}: send")]
    ProbeSend(String, #[source] io::Error),
    #[error("{0}: read")]
    ProbeRead(String, #[source] io::Error),
    #[error("{url}: not an HTTP response: {head:?}")]
    NotHttp { url: String, head: String },
    #[error("{0}: status line too long")]
    StatusLineTooLong(String),
    #[error("{url}: connection closed before a status line ({bytes} bytes)")]
    ClosedEarly { url: String, bytes: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What the host makes of it: podman's exit codes 127 and 126, else 125.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::NotExecutable { .. } => ErrorKind::NotExecutable,
            _ => ErrorKind::Failed,
        }
    }

    /// The text for a `Msg` to the host: the message and every source, `: `-separated.
    pub fn wire(&self) -> String {
        Report(self).to_string()
    }

    /// The final `Error` frame of a process or probe stream that failed.
    pub fn to_msg(&self) -> Msg {
        Msg::Error {
            kind: self.kind(),
            message: self.wire(),
        }
    }

    /// The error for an executable that is missing (ENOENT) or cannot be run (EACCES,
    /// ENOEXEC) as podman words them, if `errno` is one of those.
    pub fn from_exec_errno(errno: Option<i32>, name: &str, target: Target) -> Option<Error> {
        let name = name.to_string();
        match errno? {
            libc::ENOENT => Some(Error::NotFound { name, target }),
            libc::EACCES | libc::ENOEXEC => Some(Error::NotExecutable { name, target }),
            _ => None,
        }
    }
}

fn not_found(name: &str, target: &Target) -> String {
    if *target == Target::Vm {
        return format!("executable file `{name}` not found in $PATH");
    }
    let where_ = if name.contains('/') { "" } else { " in $PATH" };
    format!(
        "crun: executable file `{name}` not found{where_}: No such file or directory: \
         OCI runtime attempted to invoke a command that was not found"
    )
}

fn not_executable(name: &str, target: &Target) -> String {
    if *target == Target::Vm {
        return format!("{name}: permission denied");
    }
    "crun: open executable: Permission denied: OCI permission denied".into()
}

/// Prints an error and its sources, `: `-separated (for logs and the wire).
pub struct Report<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

impl Error {
    /// For `{}` in a log line: the message and every source.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_texts_and_kinds() {
        let e = |name: &str, t| Error::NotFound {
            name: name.into(),
            target: t,
        };
        assert_eq!(e("nope", Target::Container).kind(), ErrorKind::NotFound);
        assert_eq!(
            e("nope", Target::Container).wire(),
            "crun: executable file `nope` not found in $PATH: No such file or directory: \
             OCI runtime attempted to invoke a command that was not found"
        );
        assert_eq!(
            e("./x", Target::ContainerExec).wire(),
            "crun: executable file `./x` not found: No such file or directory: \
             OCI runtime attempted to invoke a command that was not found"
        );
        assert_eq!(
            e("x", Target::Vm).wire(),
            "executable file `x` not found in $PATH"
        );
        let x = |t| Error::NotExecutable {
            name: "/etc".into(),
            target: t,
        };
        assert_eq!(x(Target::Vm).kind(), ErrorKind::NotExecutable);
        assert_eq!(
            x(Target::ContainerExec).wire(),
            "crun: open executable: Permission denied: OCI permission denied"
        );
        assert_eq!(x(Target::Vm).wire(), "/etc: permission denied");
        assert_eq!(Error::NoSuchUser("bob".into()).kind(), ErrorKind::Failed);
    }

    #[test]
    fn the_wire_text_holds_every_source_once() {
        let e = Error::Mount {
            src: "/dev/vdb".into(),
            dst: "/mnt/image".into(),
            fstype: "erofs".into(),
            source: Errno::ENODEV,
        };
        assert_eq!(
            e.wire(),
            format!("Mount /dev/vdb on /mnt/image (erofs): {}", Errno::ENODEV)
        );
        let io = io::Error::from_raw_os_error(libc::EACCES);
        let e = Error::Write("/etc/hosts".into(), io);
        assert_eq!(e.to_string(), "Write /etc/hosts");
        assert!(e.wire().starts_with("Write /etc/hosts: Permission denied"));
        assert_eq!(
            Error::from_exec_errno(Some(libc::ENOEXEC), "a", Target::Vm).map(|e| e.kind()),
            Some(ErrorKind::NotExecutable)
        );
        assert!(Error::from_exec_errno(Some(libc::EIO), "a", Target::Vm).is_none());
    }
}
