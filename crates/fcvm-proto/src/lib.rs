//! Wire types of the fcvm agent session, shared by the host (`fcvm`) and the guest agent
//! (`fc-agent`). No I/O lives here: [`codec`] turns [`Frame`]s into bytes and back.
//!
//! One byte stream (a virtio-serial port on QEMU, a vsock connection on Firecracker) carries one
//! multiplexed session. Every frame names a logical stream:
//!
//! ```text
//! stream 0            control: Hello/HelloAck, Restored/RestoreComplete, Prepare/Prepared, Log
//! stream 1..          one per process: Start → Started → Stdout/Stderr… → Exit | Error,
//!                     Stdin/Resize/Signal/Close from the host, Credit both ways
//!                     (the host allocates ids; the container's main process is just a stream
//!                     whose Start targets `Target::Container`)
//!                     or one probe: HttpGet → HttpStatus | Error
//!                     or one file operation: FsRequest → FsReply | FsError (protocol 6)
//! ```
//!
//! # File operations (protocol 6)
//!
//! `FsRequest` acts on the container's files as its processes see them: paths are resolved
//! inside the container's root (symlinks included: nothing leads out of it) and the operation
//! runs with the ids of the request's user. Each request has a stream of its own and exactly one
//! final answer, so a frame is bounded: a `Read` asks for at most [`MAX_CHUNK`] bytes (the host
//! asks again from the next offset until `eof`), a `Write` carries at most [`MAX_CHUNK`] bytes, a
//! `List` answers at most [`MAX_LIST_BYTES`] of entries and says whether more follow (the host
//! asks again, skipping what it has).
//!
//! Every new host connection begins with `Hello{epoch}`; the agent drops all session state that
//! belongs to another epoch (docs/design.md §8). After a snapshot restore the host sends
//! `Restored{epoch}` and waits for `RestoreComplete{epoch}` before it calls the VM ready.
//!
//! # Flow control (protocol 5)
//!
//! The payload of a process stream travels on credit in both directions, so that a reader
//! that stops reading stalls its own stream and nothing else: not the other streams, not the
//! control stream, not the agent or the host.
//!
//! - **Stdin** (host → agent): the host sends at most [`INITIAL_STDIN_CREDIT`] bytes of `Stdin`
//!   payload, plus what the agent grants with `Credit(n)` on that stream as the process reads.
//! - **Output** (agent → host): the agent sends at most [`INITIAL_OUTPUT_CREDIT`] bytes of
//!   `Stdout` and `Stderr` payload (together), plus what the host grants with `Credit(n)` on
//!   that stream. While it has no credit it stops reading the process's output, so the
//!   process blocks in its own write. The host grants as its consumer drains: once it has
//!   handed n bytes on (to its stdout, an exec client, a log), it sends `Credit(n)`. A host
//!   that keeps what arrives grants as it arrives. So what a stream has in flight or waiting
//!   on the host is never more than the credit the host gave it: a per-stream buffer of that
//!   size (plus the few frames not on credit) cannot overflow, and the host's reader of the
//!   channel never has to wait for a slow consumer.
//! - `Credit` goes the other way from the data it grants; its direction says which.
//! - Every process stream starts with the initial credits. A new epoch (`Hello` or `Restored`
//!   with a new epoch) restarts the streams the agent keeps (the container's) at the initial
//!   output credit, as if they were new: the new host cannot know what the old one granted.
//!   Output the agent queued under the old epoch may still arrive after that; the host does
//!   not count it as an overrun.
//! - Not on credit: `Started`, `Exit`, `Error`, `Credit` itself, probe streams (`HttpGet`,
//!   `HttpStatus`) and the control stream, `Log` included (the agent drops `Log` frames it
//!   cannot queue rather than wait, and says how many in the next one).
//! - `Credit` for a stream the agent no longer has (the host granted after the `Exit`) is
//!   dropped quietly.

mod cobs_bulk;
pub mod codec;
pub mod map;

pub use map::{MapMount, MapReply, MapRequest};

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of [`Msg`] or of the rules of the session; checked in
/// the Hello exchange. 5: output flow control (`Credit` host → agent, [`INITIAL_OUTPUT_CREDIT`]).
/// 6: `privileged` in [`ContainerPlan`] and [`ProcessSpec`], `ProcessSpec.detach`; file
/// operations (`FsRequest`, `FsReply`, `FsError`). 7: watches (`FsOp::Watch`, `WatchEvents`,
/// `Unwatch`), the VM's metrics (`FsOp::Metrics`), `ContainerPlan.disks` (`--disk`) and
/// [`RestorePlan::keep_streams`] (processes that outlive a restore), host directory maps
/// (`MapRequest`, `MapReply`, [`ContainerPlan::maps`]; see [`map`]).
pub const PROTOCOL_VERSION: u32 = 7;

/// The `PATH` of a process whose environment sets none (podman's default), on both sides.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The control stream.
pub const CONTROL: u32 = 0;

/// The stream of the container's main process. Fixed, so that a host that restored a snapshot
/// in which the container already runs can attach to its output; other streams start above it.
pub const CONTAINER_STREAM: u32 = 1;

/// Largest payload chunk either side puts into one Stdout/Stderr/Stdin frame.
pub const MAX_CHUNK: usize = 32 * 1024;

/// Stdin bytes the host may send on a stream before the agent grants more with `Credit`.
pub const INITIAL_STDIN_CREDIT: u32 = 256 * 1024;

/// Output (`Stdout` + `Stderr` payload) bytes the agent may send on a process stream before
/// the host grants more with `Credit` (see "Flow control" above). It bounds what the host
/// holds of a stream whose consumer does not read: 8 chunks of [`MAX_CHUNK`].
pub const INITIAL_OUTPUT_CREDIT: u32 = 256 * 1024;

/// Largest encoded size of the entries of one `FsReply::Entries` (well under the codec's
/// frame limit, whatever the path lengths); also of the events of one `FsReply::Events`.
pub const MAX_LIST_BYTES: usize = 64 * 1024;

/// Watches the agent keeps at a time (`FsOp::Watch` beyond them fails with `Invalid`).
pub const MAX_WATCHERS: usize = 32;

/// Unread events a watch holds, in bytes (each event counts its name + 16). Past that it
/// overflows: further events are dropped, the next `WatchEvents` answers what it held with
/// `overflowed` and the watch ends (docs/protocol.md §4).
pub const MAX_WATCH_BYTES: usize = 256 * 1024;

/// Longest a `WatchEvents` waits for an event (its `wait_ms` is capped to this).
pub const MAX_WATCH_WAIT_MS: u32 = 10_000;

/// Name of the virtio-serial port the agent talks on (QEMU backend).
pub const PORT_NAME: &str = "fcvm.agent";

/// vsock port the agent dials on the Firecracker backend.
pub const VSOCK_PORT: u32 = 1024;

/// One unit on the wire: a message on a logical stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Frame {
    pub stream: u32,
    pub msg: Msg,
}

impl Frame {
    pub fn control(msg: Msg) -> Self {
        Frame {
            stream: CONTROL,
            msg,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    // ---- control stream ------------------------------------------------------------------
    /// host → agent: first frame of every host connection. A new epoch discards all old state.
    Hello {
        epoch: u64,
        version: u32,
        /// Entropy from the host's RNG, mixed in and credited by the agent: the guest has no
        /// hardware RNG (QEMU's TCG CPU has no RDRAND), so its CRNG would otherwise be ready
        /// only seconds into boot — and, if that falls after an image-cache snapshot, every
        /// restore would finish initialising it.
        random_seed: Vec<u8>,
    },
    /// agent → host: the session of `epoch` is open.
    HelloAck {
        epoch: u64,
        version: u32,
        info: AgentInfo,
    },
    /// host → agent: the VM was restored from a snapshot; run the restore steps.
    Restored {
        epoch: u64,
        plan: RestorePlan,
    },
    /// agent → host: every restore step ran and every server accepts work again.
    RestoreComplete {
        epoch: u64,
    },
    /// agent → host: a restore step failed; the host must not use this VM.
    RestoreFailed {
        epoch: u64,
        error: String,
    },
    /// host → agent: mount the image and get the container ready (no user process yet).
    Prepare(ContainerPlan),
    /// agent → host: the container root is mounted; `Start{Container}` may follow.
    Prepared,
    /// agent → host: preparing failed.
    PrepareFailed {
        error: String,
    },
    /// agent → host: a message for the VM's log (the agent never fails silently).
    Log {
        level: LogLevel,
        message: String,
    },
    /// host → agent: power the VM off (flush disks first).
    Shutdown,

    // ---- process streams -----------------------------------------------------------------
    /// host → agent: start a process on this stream.
    Start {
        spec: ProcessSpec,
        target: Target,
    },
    /// agent → host: the process runs; `spawn_us` is how long the guest took to spawn it.
    Started {
        pid: u32,
        spawn_us: u64,
    },
    /// host → agent: stdin bytes (only up to the credit the agent granted).
    Stdin(Vec<u8>),
    /// host → agent: stdin is at its end.
    StdinEof,
    /// agent → host: the host may send this many more stdin bytes. host → agent: the agent
    /// may send this many more bytes of output (see "Flow control").
    Credit(u32),
    /// host → agent: the terminal changed size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// host → agent: deliver a signal to the process.
    Signal(i32),
    /// agent → host: output, within the output credit.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// agent → host: the process ended (final frame of the stream). `run_us`: from the agent
    /// receiving `Start` to the process being reaped — what spawning and running it took in
    /// the guest itself.
    Exit {
        code: i32,
        run_us: u64,
    },
    /// agent → host: the process could not run (final frame of the stream).
    Error {
        kind: ErrorKind,
        message: String,
    },
    /// host → agent: the client went away: kill the process and forget the stream.
    Close,

    // ---- probe streams -------------------------------------------------------------------
    /// host → agent: HTTP GET `url` from inside the VM (health checks: the guest has no curl,
    /// and busybox's wget crashes there). Answered by `HttpStatus` or `Error` on the stream.
    HttpGet {
        url: String,
        timeout_ms: u32,
    },
    // ---- host-local control (exec socket of the VM's owning fcvm; never sent to the agent) --
    /// `fcvm snapshot create` → owner: snapshot the VM under this name.
    SnapshotRequest {
        name: String,
    },
    /// owner → client: the snapshot is complete.
    SnapshotDone {
        name: String,
    },
    /// owner → client: it failed; the VM runs on.
    SnapshotFailed {
        error: String,
    },

    /// agent → host: the HTTP status code of an `HttpGet` (final frame of the stream).
    HttpStatus {
        code: u16,
    },

    // ---- file streams (protocol 6) -------------------------------------------------------
    /// host → agent: one file operation in the container (see "File operations").
    FsRequest(FsRequest),
    /// agent → host: it succeeded (final frame of the stream).
    FsReply(FsReply),
    /// agent → host: it failed (final frame of the stream).
    FsError {
        kind: FsErrorKind,
        message: String,
    },

    // ---- host directory maps (protocol 7, control stream; see [`map`]) --------------------
    /// agent → host: one file operation on a map, answered by `MapReply` with its id.
    MapRequest(MapRequest),
    /// host → agent: the answer to a `MapRequest`.
    MapReply(MapReply),

    // ---- pods: more containers in the VM (protocol 7, control stream; see [`PodOp`]) -----
    /// host → agent: one pod operation, answered by `PodReply` with its `seq`.
    PodRequest {
        seq: u64,
        op: PodOp,
    },
    /// agent → host: the operation of `seq` is done (`error`: None) or failed.
    PodReply {
        seq: u64,
        error: Option<String>,
    },
}

impl Msg {
    /// The variant's name, for logs (never the payload, which may be a user's data).
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello { .. } => "Hello",
            Msg::HelloAck { .. } => "HelloAck",
            Msg::Restored { .. } => "Restored",
            Msg::RestoreComplete { .. } => "RestoreComplete",
            Msg::RestoreFailed { .. } => "RestoreFailed",
            Msg::Prepare(_) => "Prepare",
            Msg::Prepared => "Prepared",
            Msg::PrepareFailed { .. } => "PrepareFailed",
            Msg::Log { .. } => "Log",
            Msg::Shutdown => "Shutdown",
            Msg::Start { .. } => "Start",
            Msg::Started { .. } => "Started",
            Msg::Stdin(_) => "Stdin",
            Msg::StdinEof => "StdinEof",
            Msg::Credit(_) => "Credit",
            Msg::Resize { .. } => "Resize",
            Msg::Signal(_) => "Signal",
            Msg::Stdout(_) => "Stdout",
            Msg::Stderr(_) => "Stderr",
            Msg::Exit { .. } => "Exit",
            Msg::Error { .. } => "Error",
            Msg::Close => "Close",
            Msg::HttpGet { .. } => "HttpGet",
            Msg::SnapshotRequest { .. } => "SnapshotRequest",
            Msg::SnapshotDone { .. } => "SnapshotDone",
            Msg::SnapshotFailed { .. } => "SnapshotFailed",
            Msg::HttpStatus { .. } => "HttpStatus",
            Msg::FsRequest(_) => "FsRequest",
            Msg::FsReply(_) => "FsReply",
            Msg::FsError { .. } => "FsError",
            Msg::MapRequest(_) => "MapRequest",
            Msg::MapReply(_) => "MapReply",
            Msg::PodRequest { .. } => "PodRequest",
            Msg::PodReply { .. } => "PodReply",
        }
    }
}

/// What the agent tells the host about itself in `HelloAck`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub agent_version: String,
    pub kernel: String,
    /// Guest uptime (ms) when the session opened: the kernel boot + agent start.
    pub uptime_ms: u64,
    /// Whether the container was prepared in an earlier epoch (true after a restore).
    pub prepared: bool,
}

/// Everything that shapes the container's root, sent once per VM (before any snapshot).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerPlan {
    /// Filesystem of the read-only image disk ("erofs" or "ext4").
    pub image_fstype: String,
    /// Hostname of the VM and the container.
    pub hostname: String,
    /// The VM's network; None = loopback only.
    pub network: Option<NetConfig>,
    /// Create the warm container (crun's set-up done, a stand-in waiting for the command):
    /// worth it when an image-cache snapshot is saved next; otherwise the container's Start
    /// runs plain `crun run`, which is cheaper than creating and then handing over.
    pub warm: bool,
    /// Commands (argv[0], resolved on the image's default PATH) whose executables, ELF
    /// interpreters and /etc/passwd and /etc/group the agent reads into the page cache with
    /// the warm container, so that a restored run does not wait on the image disk for them.
    pub prefetch: Vec<String>,
    /// The `PATH` of this run's container processes: the agent indexes the executables on
    /// it with the warm container, so that a restored run's first command is looked up
    /// without touching the image disk (whatever the command). Empty: [`DEFAULT_PATH`].
    pub path: String,
    /// `--privileged`: the container (warm or not) gets every capability, the VM's devices,
    /// no masked paths and a writable /sys (the VM is the boundary).
    pub privileged: bool,
    /// Extra disks (`--disk`): each an ext4 the agent mounts and bind-mounts into the
    /// container, found by its virtio serial.
    pub disks: Vec<DiskMount>,
    /// `--map`: the agent mounts each one (FUSE served by the host through `MapRequest`s) and
    /// binds it into the container at its guest path (protocol 7).
    pub maps: Vec<MapMount>,
}

/// One extra disk of [`ContainerPlan::disks`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMount {
    /// The virtio-blk serial the host gave the disk (`/sys/block/vd*/serial` in the guest).
    pub serial: String,
    /// Absolute mount point inside the container.
    pub guest: String,
}

/// How the agent configures the VM's network interface (no DHCP client in the guest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Interface address with prefix length, e.g. "10.0.2.15/24".
    pub address: String,
    /// Default gateway, e.g. "10.0.2.2".
    pub gateway: String,
    /// Nameservers written to the container's /etc/resolv.conf.
    pub dns: Vec<String>,
    /// Search domains for resolv.conf.
    pub search: Vec<String>,
    pub mtu: u16,
}

/// A process to run: already merged from image config and flags by the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// Working directory; empty means "/".
    pub cwd: String,
    /// `user[:group]`, names or ids; empty means root.
    pub user: String,
    pub tty: bool,
    /// Whether the host forwards stdin (else the process gets /dev/null).
    pub stdin: bool,
    pub rows: u16,
    pub cols: u16,
    /// Every capability for this process (`exec --privileged`). A `Target::Container` start
    /// sets it as its [`ContainerPlan`] did.
    pub privileged: bool,
    /// `exec -d`: the host's exec server keeps the process running after its client leaves
    /// and drops its output (the agent does not look at it).
    pub detach: bool,
}

/// Where a process runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The container's main process (`crun run`); only one per VM.
    Container,
    /// Joins the running container (`crun exec`).
    ContainerExec,
    /// In the VM itself, outside the container.
    Vm,
    /// A further container of the VM (a pod's, protocol 7): `crun run` of container `id`
    /// ([`valid_pod_id`]) rooted at map `root` (mounted by [`PodOp::AddMap`]), in the
    /// network, IPC and UTS namespaces of the VM's first container (`Container`, which must
    /// be running), with mount and pid namespaces of its own. Once per id.
    PodContainer { id: String, root: u32 },
    /// Joins pod container `id` (`crun exec`).
    PodExec { id: String },
}

/// Longest pod container id ([`valid_pod_id`]).
pub const MAX_POD_ID: usize = 64;

/// Containers a VM runs beside its first one (`Target::PodContainer`s not yet removed).
pub const MAX_POD_CONTAINERS: usize = 64;

/// Maps a VM has mounted at once: the plan's and those added by [`PodOp::AddMap`].
pub const MAX_MAPS: usize = 128;

/// Whether `id` may name a pod container: 1 to [`MAX_POD_ID`] bytes of ASCII letters, digits,
/// `_`, `.` and `-`, not starting with `.` or `-` (ids come from the host's clients, and
/// name files and crun state in the guest). Both sides check it.
pub fn valid_pod_id(id: &str) -> bool {
    (1..=MAX_POD_ID).contains(&id.len())
        && !id.starts_with(['.', '-'])
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `p` as an absolute, lexically clean path other than `/` (`//a/./b/` is `/a/b`); `None` if
/// it is relative, holds `..` or a NUL, or names `/` itself. Where a map or a bind goes in a
/// container: the host cleans what its users give (`--map`, a pod's binds) and the agent
/// checks what the host sends.
pub fn clean_guest_path(p: &str) -> Option<String> {
    if !p.starts_with('/') || p.contains('\0') {
        return None;
    }
    let mut out = Vec::new();
    for c in std::path::Path::new(p).components() {
        match c {
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            std::path::Component::Normal(n) => out.push(n.to_str()?),
            _ => return None,
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(format!("/{}", out.join("/")))
}

/// What a `PodRequest` asks of the agent (protocol 7; docs/design.md §21).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodOp {
    /// Mount map `map` (a number the host chose, not in use: the plan's maps are 0..n) in
    /// the VM, served by the host through `MapRequest`s like the plan's maps; the root of a
    /// `Target::PodContainer` to come. At most [`MAX_MAPS`] maps at once.
    AddMap { map: u32, read_only: bool },
    /// Unmount map `map` (the host stops serving it after the reply). Refused while a pod
    /// container not yet removed has it as its root; unknown maps are fine (nothing to do).
    RemoveMap { map: u32 },
    /// `crun delete --force` pod container `id` (kills what still runs in it) and forget it;
    /// its root map stays mounted until `RemoveMap`. An unknown id is fine.
    RemoveContainer { id: String },
    /// Bind mounts for pod container `id`, to be made when its `Target::PodContainer` starts
    /// (sent after their maps' `AddMap`, before that `Start`): each map's directory at its
    /// `destination` in the container. Replaces what an earlier `Binds` for `id` said; refused
    /// once `id` started, for a destination that is not absolute or has a `..`, and beyond
    /// [`MAX_MAPS`] binds. Appended in protocol 7 (branch `binds`).
    Binds { id: String, binds: Vec<PodBind> },
}

/// One bind mount of a pod container ([`PodOp::Binds`]): added map `map` (mounted by
/// [`PodOp::AddMap`]) at `destination` (absolute, no `..`) in the container, read-only if
/// `read_only` (whatever the map is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodBind {
    pub map: u32,
    pub destination: String,
    pub read_only: bool,
}

/// Why a process could not run; the host maps these to podman's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// 127
    NotFound,
    /// 126
    NotExecutable,
    /// 125: anything else (no container, bad user, runtime failure…)
    Failed,
}

impl ErrorKind {
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::NotFound => 127,
            ErrorKind::NotExecutable => 126,
            ErrorKind::Failed => 125,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// What a restored VM must change before it serves again (docs/design.md §9, step 3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// Host wall clock at the time of the Restored message (ns since the Unix epoch).
    pub clock_unix_ns: u64,
    /// Fresh entropy for the guest RNG.
    pub random_seed: Vec<u8>,
    /// New identity for clones; None keeps the snapshot's.
    pub hostname: Option<String>,
    pub machine_id: Option<String>,
    /// New network config for a clone (its own address); None keeps the snapshot's.
    pub network: Option<NetConfig>,
    /// Exec and VM streams of the snapshot that the new host takes over (protocol 7): they
    /// keep running under the new epoch, same ids, their output credit back at the initial
    /// value. Every other exec and VM stream is killed, as before.
    pub keep_streams: Vec<u32>,
}

/// A file operation and the container user it runs as.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FsRequest {
    /// `user[:group]` as in [`ProcessSpec::user`]; empty means root. Relative paths are
    /// relative to the user's home directory.
    pub user: String,
    pub op: FsOp,
}

/// What a [`FsRequest`] does. Paths are cleaned lexically first (`..` never climbs above `/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FsOp {
    /// Up to `len` (at most [`MAX_CHUNK`]) bytes of a regular file from `offset`:
    /// `FsReply::Data`.
    Read { path: String, offset: u64, len: u32 },
    /// Writes `data` (at most [`MAX_CHUNK`] bytes) at `offset` of a regular file, created
    /// (with its missing parent directories) if absent; `truncate` empties it first.
    /// `FsReply::Entry` of the file.
    Write {
        path: String,
        offset: u64,
        data: Vec<u8>,
        truncate: bool,
    },
    /// `FsReply::Entry` (a symlink is described with its target's type).
    Stat { path: String },
    /// The entries of a directory, `depth` levels down (1: its own), skipping the first
    /// `skip`: `FsReply::Entries`.
    List { path: String, depth: u32, skip: u32 },
    /// Creates a directory and its missing parents: `FsReply::Entry`; `Exists` if it was
    /// there already.
    MakeDir { path: String },
    /// Renames `from` to `to` (creating `to`'s missing parents): `FsReply::Entry` of `to`.
    Move { from: String, to: String },
    /// Removes a file, a symlink or a directory with everything in it: `FsReply::Done`.
    Remove { path: String },
    /// Watches directory `path` (and, `recursive`, every directory under it, including those
    /// created later) for changes: `FsReply::Watching`. The watch lives in the agent until
    /// `Unwatch`, its overflow, or the VM's end; it outlives the request and the epoch.
    Watch { path: String, recursive: bool },
    /// The watch's events since the last call, waiting up to `wait_ms` (at most
    /// [`MAX_WATCH_WAIT_MS`]) for the first: `FsReply::Events`. `NotFound` for a watch that
    /// does not exist (any more).
    WatchEvents { id: u64, wait_ms: u32 },
    /// Ends a watch: `FsReply::Done` (`NotFound` if there is none).
    Unwatch { id: u64 },
    /// The VM's CPU, memory and the container root's disk use: `FsReply::Metrics`. The
    /// request's user and no path matter.
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FsReply {
    Data {
        data: Vec<u8>,
        eof: bool,
    },
    Entry(FsEntry),
    /// `more`: entries beyond these follow (ask again with a larger `skip`).
    Entries {
        entries: Vec<FsEntry>,
        more: bool,
    },
    Done,
    /// The id of a new watch (for `WatchEvents` and `Unwatch`).
    Watching {
        id: u64,
    },
    /// Events in the order they happened, at most [`MAX_LIST_BYTES`] of them; `more`: others
    /// wait (ask again). `overflowed`: events were dropped after these (more than
    /// [`MAX_WATCH_BYTES`] unread, or the kernel's queue overflowed) and the watch has ended.
    Events {
        events: Vec<FsEvent>,
        more: bool,
        overflowed: bool,
    },
    Metrics(VmMetrics),
}

/// One change under a watched directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsEvent {
    /// The path relative to the watched directory (`sub/file` in a recursive watch).
    pub name: String,
    pub kind: FsEventKind,
}

/// envd's event types (fsnotify's operations, as inotify reports them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsEventKind {
    /// Created, or moved in.
    Create,
    /// Its data changed.
    Write,
    Remove,
    /// Moved away (or renamed: its new name gets `Create`).
    Rename,
    /// Its mode, owner or times changed.
    Chmod,
}

/// What the VM uses, as E2B's metrics report it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VmMetrics {
    pub cpu_count: u32,
    /// Busy share of all CPUs over a short sample (0–100).
    pub cpu_used_pct: f32,
    pub mem_total: u64,
    /// Total − available, in bytes.
    pub mem_used: u64,
    /// Page cache and buffers, in bytes.
    pub mem_cache: u64,
    /// The container root's filesystem, in bytes.
    pub disk_total: u64,
    pub disk_used: u64,
}

/// One file as `ls -l` would show it inside the container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FsEntry {
    /// Absolute path inside the container.
    pub path: String,
    pub kind: FsKind,
    pub size: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Names from the container's /etc/passwd and /etc/group (the id when none).
    pub owner: String,
    pub group: String,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// The link's text, for a symlink.
    pub symlink_target: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsKind {
    #[default]
    File,
    Dir,
    /// A symlink whose target does not resolve.
    Symlink,
    /// A device, socket or fifo.
    Other,
}

/// Why a file operation failed (the host maps these to envd's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsErrorKind {
    NotFound,
    Exists,
    NotADirectory,
    IsADirectory,
    PermissionDenied,
    /// A bad path or argument (empty, `/` where a name is needed, a chunk too large…).
    Invalid,
    /// No container to act in (not prepared yet).
    NoContainer,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use codec::{encode, Decoder, MAX_ENCODED};

    fn round_trip(frames: &[Frame]) {
        let mut d = Decoder::new();
        for f in frames {
            d.feed(&encode(f).unwrap());
        }
        for f in frames {
            assert_eq!(d.next_frame().unwrap().unwrap(), *f);
        }
        assert!(d.next_frame().is_none());
    }

    fn entry(path: String) -> FsEntry {
        FsEntry {
            path,
            kind: FsKind::Dir,
            size: 4096,
            mode: 0o40755,
            uid: 1000,
            gid: 1000,
            owner: "user".into(),
            group: "user".into(),
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
            symlink_target: Some("/x".into()),
        }
    }

    #[test]
    fn file_messages_round_trip() {
        let req = |op| {
            Msg::FsRequest(FsRequest {
                user: "user".into(),
                op,
            })
        };
        let p = || "/home/user/a".to_string();
        let frames: Vec<Frame> = [
            req(FsOp::Read {
                path: p(),
                offset: 7,
                len: MAX_CHUNK as u32,
            }),
            req(FsOp::Write {
                path: p(),
                offset: 0,
                data: vec![0; MAX_CHUNK],
                truncate: true,
            }),
            req(FsOp::Stat { path: p() }),
            req(FsOp::List {
                path: p(),
                depth: 2,
                skip: 10,
            }),
            req(FsOp::MakeDir { path: p() }),
            req(FsOp::Move { from: p(), to: p() }),
            req(FsOp::Remove { path: p() }),
            req(FsOp::Watch {
                path: p(),
                recursive: true,
            }),
            req(FsOp::WatchEvents {
                id: 3,
                wait_ms: MAX_WATCH_WAIT_MS,
            }),
            req(FsOp::Unwatch { id: 3 }),
            req(FsOp::Metrics),
            Msg::FsReply(FsReply::Watching { id: u64::MAX }),
            Msg::FsReply(FsReply::Events {
                events: vec![FsEvent {
                    name: "sub/a".into(),
                    kind: FsEventKind::Chmod,
                }],
                more: true,
                overflowed: true,
            }),
            Msg::FsReply(FsReply::Metrics(VmMetrics {
                cpu_count: 2,
                cpu_used_pct: 12.5,
                mem_total: 1 << 30,
                mem_used: 1 << 20,
                mem_cache: 5,
                disk_total: 1 << 40,
                disk_used: 7,
            })),
            Msg::FsReply(FsReply::Data {
                data: vec![9; MAX_CHUNK],
                eof: true,
            }),
            Msg::FsReply(FsReply::Entry(entry(p()))),
            Msg::FsReply(FsReply::Entries {
                entries: vec![entry(p()), FsEntry::default()],
                more: false,
            }),
            Msg::FsReply(FsReply::Done),
            Msg::FsError {
                kind: FsErrorKind::NotFound,
                message: "no such file".into(),
            },
        ]
        .into_iter()
        .enumerate()
        .map(|(i, msg)| Frame {
            stream: 2 + i as u32,
            msg,
        })
        .collect();
        round_trip(&frames);
    }

    /// A full chunk of data and a listing of MAX_LIST_BYTES (with the longest paths) each fit
    /// one frame.
    #[test]
    fn the_largest_file_replies_fit_a_frame() {
        let mut entries = Vec::new();
        let mut size = 0;
        let long = "/".to_string() + &"x".repeat(4095);
        while size + long.len() <= MAX_LIST_BYTES {
            size += long.len() + 64;
            entries.push(entry(long.clone()));
        }
        let f = Frame {
            stream: 3,
            msg: Msg::FsReply(FsReply::Entries {
                entries,
                more: true,
            }),
        };
        assert!(encode(&f).unwrap().len() <= MAX_ENCODED);
        round_trip(&[f]);
    }

    /// The pod messages round-trip and come after every older message; pod ids are checked.
    #[test]
    fn pod_messages_round_trip() {
        let frames = [
            Frame::control(Msg::PodRequest {
                seq: 1,
                op: PodOp::AddMap {
                    map: 3,
                    read_only: false,
                },
            }),
            Frame::control(Msg::PodRequest {
                seq: 2,
                op: PodOp::RemoveMap { map: 3 },
            }),
            Frame::control(Msg::PodRequest {
                seq: 3,
                op: PodOp::RemoveContainer { id: "app".into() },
            }),
            Frame::control(Msg::PodRequest {
                seq: 4,
                op: PodOp::Binds {
                    id: "app".into(),
                    binds: vec![PodBind {
                        map: 4,
                        destination: "/data".into(),
                        read_only: true,
                    }],
                },
            }),
            Frame::control(Msg::PodReply {
                seq: 3,
                error: Some("no".into()),
            }),
            Frame {
                stream: 5,
                msg: Msg::Start {
                    spec: ProcessSpec::default(),
                    target: Target::PodContainer {
                        id: "a".repeat(MAX_POD_ID),
                        root: 7,
                    },
                },
            },
            Frame {
                stream: 6,
                msg: Msg::Start {
                    spec: ProcessSpec::default(),
                    target: Target::PodExec { id: "b".into() },
                },
            },
        ];
        round_trip(&frames);
        // Appended: the older operations keep their index (byte 2, after the message's
        // variant and the one-byte seq).
        let op = |op| postcard::to_allocvec(&Msg::PodRequest { seq: 1, op }).unwrap()[2];
        assert_eq!(op(PodOp::RemoveContainer { id: "a".into() }), 2);
        let binds = PodOp::Binds {
            id: "a".into(),
            binds: vec![],
        };
        assert_eq!(op(binds), 3);
        let body = |msg| postcard::to_allocvec(&msg).unwrap()[0];
        assert_eq!(
            body(Msg::PodReply {
                seq: 0,
                error: None
            }),
            33
        );
        for good in ["a", "app-1", "A_b.c", &"x".repeat(MAX_POD_ID)] {
            assert!(valid_pod_id(good), "{good}");
        }
        let long = "x".repeat(MAX_POD_ID + 1);
        for bad in ["", ".", "..", "-x", "a/b", "a b", "é", "a\0", &long] {
            assert!(!valid_pod_id(bad), "{bad}");
        }
    }

    /// postcard encodes the variant's index: the file messages come after every older one,
    /// so a protocol-5 message keeps its bytes.
    #[test]
    fn older_variants_keep_their_index() {
        let body = |msg| postcard::to_allocvec(&msg).unwrap()[0];
        assert_eq!(
            body(Msg::Hello {
                epoch: 0,
                version: 0,
                random_seed: vec![]
            }),
            0
        );
        assert_eq!(body(Msg::HttpStatus { code: 1 }), 26);
        assert_eq!(
            body(Msg::FsRequest(FsRequest {
                user: String::new(),
                op: FsOp::Remove {
                    path: String::new()
                }
            })),
            27
        );
        assert_eq!(
            body(Msg::FsError {
                kind: FsErrorKind::Failed,
                message: String::new()
            }),
            29
        );
    }
}
