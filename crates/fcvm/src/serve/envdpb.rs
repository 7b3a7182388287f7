//! envd's `process.proto` and `filesystem.proto` as protobuf messages (`prost` derives, no
//! protoc): the binary side of Connect's proto codec. Field numbers and types are envd's (as
//! the E2B SDK's generated descriptors give them); a message several calls share is written
//! once (`Selector` for ConnectRequest and CloseStdinRequest, `PathRequest` for Stat, MakeDir
//! and Remove, `Empty` for every empty reply). Unknown fields are skipped on decode, as
//! protobuf does; fields fcvm never fills (EntryInfo's `metadata`) are left out.
//! [`super::wire`] converts these to and from the JSON mapping's types ([`super::pb`],
//! [`super::fspb`]) the handlers use.

#![allow(clippy::doc_markdown, reason = "field names as in the .proto files")]

/// Every empty message (ListRequest, the empty replies, KeepAlive and StartEvent of WatchDir).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

pub mod process {
    use std::collections::BTreeMap;

    pub use super::Empty;

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct PtySize {
        #[prost(uint32, tag = "1")]
        pub cols: u32,
        #[prost(uint32, tag = "2")]
        pub rows: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Pty {
        #[prost(message, optional, tag = "1")]
        pub size: Option<PtySize>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessConfig {
        #[prost(string, tag = "1")]
        pub cmd: String,
        #[prost(string, repeated, tag = "2")]
        pub args: Vec<String>,
        #[prost(btree_map = "string, string", tag = "3")]
        pub envs: BTreeMap<String, String>,
        #[prost(string, optional, tag = "4")]
        pub cwd: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessInfo {
        #[prost(message, optional, tag = "1")]
        pub config: Option<ProcessConfig>,
        #[prost(uint32, tag = "2")]
        pub pid: u32,
        #[prost(string, optional, tag = "3")]
        pub tag: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListResponse {
        #[prost(message, repeated, tag = "1")]
        pub processes: Vec<ProcessInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartRequest {
        #[prost(message, optional, tag = "1")]
        pub process: Option<ProcessConfig>,
        #[prost(message, optional, tag = "2")]
        pub pty: Option<Pty>,
        #[prost(string, optional, tag = "3")]
        pub tag: Option<String>,
        #[prost(bool, optional, tag = "4")]
        pub stdin: Option<bool>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UpdateRequest {
        #[prost(message, optional, tag = "1")]
        pub process: Option<ProcessSelector>,
        #[prost(message, optional, tag = "2")]
        pub pty: Option<Pty>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Selector {
        #[prost(uint32, tag = "1")]
        Pid(u32),
        #[prost(string, tag = "2")]
        Tag(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessSelector {
        #[prost(oneof = "Selector", tags = "1, 2")]
        pub selector: Option<Selector>,
    }

    /// ConnectRequest and CloseStdinRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SelectorRequest {
        #[prost(message, optional, tag = "1")]
        pub process: Option<ProcessSelector>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SendSignalRequest {
        #[prost(message, optional, tag = "1")]
        pub process: Option<ProcessSelector>,
        /// `enum Signal`: its number is the signal's.
        #[prost(int32, tag = "2")]
        pub signal: i32,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Input {
        #[prost(bytes = "vec", tag = "1")]
        Stdin(Vec<u8>),
        #[prost(bytes = "vec", tag = "2")]
        Pty(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessInput {
        #[prost(oneof = "Input", tags = "1, 2")]
        pub input: Option<Input>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SendInputRequest {
        #[prost(message, optional, tag = "1")]
        pub process: Option<ProcessSelector>,
        #[prost(message, optional, tag = "2")]
        pub input: Option<ProcessInput>,
    }

    /// StreamInputRequest.DataEvent.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InputData {
        #[prost(message, optional, tag = "2")]
        pub input: Option<ProcessInput>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum InputEvent {
        #[prost(message, tag = "1")]
        Start(SelectorRequest),
        #[prost(message, tag = "2")]
        Data(InputData),
        #[prost(message, tag = "3")]
        Keepalive(Empty),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamInputRequest {
        #[prost(oneof = "InputEvent", tags = "1, 2, 3")]
        pub event: Option<InputEvent>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StartEvent {
        #[prost(uint32, tag = "1")]
        pub pid: u32,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Output {
        #[prost(bytes = "vec", tag = "1")]
        Stdout(Vec<u8>),
        #[prost(bytes = "vec", tag = "2")]
        Stderr(Vec<u8>),
        #[prost(bytes = "vec", tag = "3")]
        Pty(Vec<u8>),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DataEvent {
        #[prost(oneof = "Output", tags = "1, 2, 3")]
        pub output: Option<Output>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EndEvent {
        #[prost(sint32, tag = "1")]
        pub exit_code: i32,
        #[prost(bool, tag = "2")]
        pub exited: bool,
        #[prost(string, tag = "3")]
        pub status: String,
        #[prost(string, optional, tag = "4")]
        pub error: Option<String>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Event {
        #[prost(message, tag = "1")]
        Start(StartEvent),
        #[prost(message, tag = "2")]
        Data(DataEvent),
        #[prost(message, tag = "3")]
        End(EndEvent),
        #[prost(message, tag = "4")]
        Keepalive(Empty),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ProcessEvent {
        #[prost(oneof = "Event", tags = "1, 2, 3, 4")]
        pub event: Option<Event>,
    }

    /// StartResponse and ConnectResponse.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EventResponse {
        #[prost(message, optional, tag = "1")]
        pub event: Option<ProcessEvent>,
    }
}

pub mod filesystem {
    pub use super::Empty;

    /// google.protobuf.Timestamp.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryInfo {
        #[prost(string, tag = "1")]
        pub name: String,
        /// `enum FileType`: 1 file, 2 directory, 3 symlink.
        #[prost(int32, tag = "2")]
        pub r#type: i32,
        #[prost(string, tag = "3")]
        pub path: String,
        #[prost(int64, tag = "4")]
        pub size: i64,
        #[prost(uint32, tag = "5")]
        pub mode: u32,
        #[prost(string, tag = "6")]
        pub permissions: String,
        #[prost(string, tag = "7")]
        pub owner: String,
        #[prost(string, tag = "8")]
        pub group: String,
        #[prost(message, optional, tag = "9")]
        pub modified_time: Option<Timestamp>,
        #[prost(string, optional, tag = "10")]
        pub symlink_target: Option<String>,
        #[prost(bool, tag = "12")]
        pub is_symlink: bool,
    }

    /// StatRequest, MakeDirRequest, RemoveRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PathRequest {
        #[prost(string, tag = "1")]
        pub path: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MoveRequest {
        #[prost(string, tag = "1")]
        pub source: String,
        #[prost(string, tag = "2")]
        pub destination: String,
    }

    /// StatResponse, MakeDirResponse, MoveResponse.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryResponse {
        #[prost(message, optional, tag = "1")]
        pub entry: Option<EntryInfo>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListDirRequest {
        #[prost(string, tag = "1")]
        pub path: String,
        #[prost(uint32, tag = "2")]
        pub depth: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListDirResponse {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<EntryInfo>,
    }

    /// WatchDirRequest and CreateWatcherRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchRequest {
        #[prost(string, tag = "1")]
        pub path: String,
        #[prost(bool, tag = "2")]
        pub recursive: bool,
        #[prost(bool, tag = "3")]
        pub include_entry: bool,
        #[prost(bool, tag = "4")]
        pub allow_network_mounts: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FilesystemEvent {
        #[prost(string, tag = "1")]
        pub name: String,
        /// `enum EventType`: 1 create, 2 write, 3 remove, 4 rename, 5 chmod.
        #[prost(int32, tag = "2")]
        pub r#type: i32,
        #[prost(message, optional, tag = "3")]
        pub entry: Option<EntryInfo>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(
        clippy::large_enum_variant,
        reason = "built for one reply and encoded at once, never stored"
    )]
    pub enum WatchEvent {
        #[prost(message, tag = "1")]
        Start(Empty),
        #[prost(message, tag = "2")]
        Filesystem(FilesystemEvent),
        #[prost(message, tag = "3")]
        Keepalive(Empty),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchDirResponse {
        #[prost(oneof = "WatchEvent", tags = "1, 2, 3")]
        pub event: Option<WatchEvent>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateWatcherResponse {
        #[prost(string, tag = "1")]
        pub watcher_id: String,
    }

    /// GetWatcherEventsRequest and RemoveWatcherRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatcherRequest {
        #[prost(string, tag = "1")]
        pub watcher_id: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GetWatcherEventsResponse {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<FilesystemEvent>,
    }
}
