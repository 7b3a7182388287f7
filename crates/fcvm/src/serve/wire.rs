//! Both Connect codecs of every envd message served: each request type of the JSON mapping
//! ([`super::pb`], [`super::fspb`]) decodes from JSON or from its protobuf message
//! ([`super::envdpb`]), each reply encodes to either ([`Wire`], [`Reply`]). The handlers see
//! only the JSON mapping's types; this is the one place the two meet.

use super::connect::{self, Reply, RpcError, Wire};
use super::envdpb::{filesystem as fs, process as ps, Empty};
use super::{fspb, pb};

/// Requests: JSON with serde, protobuf through the prost message and `From`.
macro_rules! wire {
    ($($json:ty => $proto:ty),* $(,)?) => {$(
        impl Wire for $json {
            fn from_json(b: &[u8]) -> Result<Self, RpcError> {
                connect::from_json(b)
            }
            fn from_proto(b: &[u8]) -> Result<Self, RpcError> {
                connect::from_proto::<$proto>(b).map(Into::into)
            }
        }
    )*};
}

/// Replies: JSON with serde, protobuf through `From<&reply>` for the prost message.
macro_rules! reply {
    ($($json:ty => $proto:ty),* $(,)?) => {$(
        impl Reply for $json {
            fn to_json(&self) -> Vec<u8> {
                serde_json::to_vec(self).expect("replies serialise")
            }
            fn to_proto(&self) -> Vec<u8> {
                prost::Message::encode_to_vec(&<$proto>::from(self))
            }
        }
    )*};
}

wire! {
    pb::StartRequest => ps::StartRequest,
    pb::SelectorRequest => ps::SelectorRequest,
    pb::SendSignalRequest => ps::SendSignalRequest,
    pb::SendInputRequest => ps::SendInputRequest,
    pb::StreamInputRequest => ps::StreamInputRequest,
    pb::UpdateRequest => ps::UpdateRequest,
    pb::Empty => Empty,
    fspb::PathRequest => fs::PathRequest,
    fspb::MoveRequest => fs::MoveRequest,
    fspb::ListDirRequest => fs::ListDirRequest,
    fspb::WatchRequest => fs::WatchRequest,
    fspb::WatcherRequest => fs::WatcherRequest,
}

reply! {
    pb::EventResponse<'_> => ps::EventResponse,
    pb::ListResponse => ps::ListResponse,
    pb::Empty => Empty,
    fspb::EntryResponse => fs::EntryResponse,
    fspb::ListDirResponse => fs::ListDirResponse,
    fspb::WatchDirResponse<'_> => fs::WatchDirResponse,
    fspb::CreateWatcherResponse => fs::CreateWatcherResponse,
    fspb::GetWatcherEventsResponse => fs::GetWatcherEventsResponse,
}

// ---- process.proto requests ---------------------------------------------------------------

impl From<ps::ProcessSelector> for pb::ProcessSelector {
    fn from(p: ps::ProcessSelector) -> Self {
        match p.selector {
            Some(ps::Selector::Pid(pid)) => pb::ProcessSelector {
                pid: Some(pid),
                tag: None,
            },
            Some(ps::Selector::Tag(tag)) => pb::ProcessSelector {
                pid: None,
                tag: Some(tag),
            },
            None => pb::ProcessSelector::default(),
        }
    }
}

impl From<ps::ProcessConfig> for pb::ProcessConfig {
    fn from(c: ps::ProcessConfig) -> Self {
        pb::ProcessConfig {
            cmd: c.cmd,
            args: c.args,
            envs: c.envs,
            cwd: c.cwd,
        }
    }
}

impl From<ps::Pty> for pb::Pty {
    fn from(p: ps::Pty) -> Self {
        pb::Pty {
            size: p.size.map(|s| pb::PtySize {
                cols: s.cols,
                rows: s.rows,
            }),
        }
    }
}

impl From<ps::ProcessInput> for pb::ProcessInput {
    fn from(i: ps::ProcessInput) -> Self {
        let (mut stdin, mut pty) = (None, None);
        match i.input {
            Some(ps::Input::Stdin(b)) => stdin = Some(pb::Bytes(b)),
            Some(ps::Input::Pty(b)) => pty = Some(pb::Bytes(b)),
            None => {}
        }
        pb::ProcessInput { stdin, pty }
    }
}

impl From<ps::StartRequest> for pb::StartRequest {
    fn from(r: ps::StartRequest) -> Self {
        pb::StartRequest {
            process: r.process.map(Into::into),
            pty: r.pty.map(Into::into),
            tag: r.tag,
            stdin: r.stdin,
        }
    }
}

impl From<ps::SelectorRequest> for pb::SelectorRequest {
    fn from(r: ps::SelectorRequest) -> Self {
        pb::SelectorRequest {
            process: r.process.map(Into::into),
        }
    }
}

impl From<ps::SendSignalRequest> for pb::SendSignalRequest {
    fn from(r: ps::SendSignalRequest) -> Self {
        pb::SendSignalRequest {
            process: r.process.map(Into::into),
            signal: pb::Signal(r.signal),
        }
    }
}

impl From<ps::SendInputRequest> for pb::SendInputRequest {
    fn from(r: ps::SendInputRequest) -> Self {
        pb::SendInputRequest {
            process: r.process.map(Into::into),
            input: r.input.map(Into::into),
        }
    }
}

impl From<ps::StreamInputRequest> for pb::StreamInputRequest {
    fn from(r: ps::StreamInputRequest) -> Self {
        let mut out = pb::StreamInputRequest::default();
        match r.event {
            Some(ps::InputEvent::Start(s)) => out.start = Some(s.into()),
            Some(ps::InputEvent::Data(d)) => {
                out.data = Some(pb::StreamInputData {
                    input: d.input.map(Into::into),
                })
            }
            Some(ps::InputEvent::Keepalive(_)) => out.keepalive = Some(serde_json::json!({})),
            None => {}
        }
        out
    }
}

impl From<ps::UpdateRequest> for pb::UpdateRequest {
    fn from(r: ps::UpdateRequest) -> Self {
        pb::UpdateRequest {
            process: r.process.map(Into::into),
            pty: r.pty.map(Into::into),
        }
    }
}

impl From<Empty> for pb::Empty {
    fn from(_: Empty) -> Self {
        pb::Empty {}
    }
}

// ---- process.proto replies ----------------------------------------------------------------

impl From<&pb::Event> for ps::ProcessEvent {
    fn from(e: &pb::Event) -> Self {
        let event = match e {
            pb::Event::Start { pid } => ps::Event::Start(ps::StartEvent { pid: *pid }),
            pb::Event::Data(d) => ps::Event::Data(ps::DataEvent {
                output: Some(match d {
                    pb::Data::Stdout(b) => ps::Output::Stdout(b.0.clone()),
                    pb::Data::Stderr(b) => ps::Output::Stderr(b.0.clone()),
                    pb::Data::Pty(b) => ps::Output::Pty(b.0.clone()),
                }),
            }),
            pb::Event::End(end) => ps::Event::End(ps::EndEvent {
                exit_code: end.exit_code,
                exited: end.exited,
                status: end.status.clone(),
                error: end.error.clone(),
            }),
            pb::Event::Keepalive {} => ps::Event::Keepalive(Empty {}),
        };
        ps::ProcessEvent { event: Some(event) }
    }
}

impl From<&pb::EventResponse<'_>> for ps::EventResponse {
    fn from(r: &pb::EventResponse<'_>) -> Self {
        ps::EventResponse {
            event: Some(r.event.into()),
        }
    }
}

impl From<&pb::ListResponse> for ps::ListResponse {
    fn from(r: &pb::ListResponse) -> Self {
        let info = |p: &pb::ProcessInfo| ps::ProcessInfo {
            config: Some(ps::ProcessConfig {
                cmd: p.config.cmd.clone(),
                args: p.config.args.clone(),
                envs: p.config.envs.clone(),
                cwd: p.config.cwd.clone(),
            }),
            pid: p.pid,
            tag: p.tag.clone(),
        };
        ps::ListResponse {
            processes: r.processes.iter().map(info).collect(),
        }
    }
}

impl From<&pb::Empty> for Empty {
    fn from(_: &pb::Empty) -> Self {
        Empty {}
    }
}

// ---- filesystem.proto ---------------------------------------------------------------------

impl From<fs::PathRequest> for fspb::PathRequest {
    fn from(r: fs::PathRequest) -> Self {
        fspb::PathRequest { path: r.path }
    }
}

impl From<fs::MoveRequest> for fspb::MoveRequest {
    fn from(r: fs::MoveRequest) -> Self {
        fspb::MoveRequest {
            source: r.source,
            destination: r.destination,
        }
    }
}

impl From<fs::ListDirRequest> for fspb::ListDirRequest {
    fn from(r: fs::ListDirRequest) -> Self {
        fspb::ListDirRequest {
            path: r.path,
            depth: r.depth,
        }
    }
}

impl From<fs::WatchRequest> for fspb::WatchRequest {
    fn from(r: fs::WatchRequest) -> Self {
        fspb::WatchRequest {
            path: r.path,
            recursive: r.recursive,
        }
    }
}

impl From<fs::WatcherRequest> for fspb::WatcherRequest {
    fn from(r: fs::WatcherRequest) -> Self {
        fspb::WatcherRequest {
            watcher_id: r.watcher_id,
        }
    }
}

impl From<&fspb::EntryInfo> for fs::EntryInfo {
    fn from(e: &fspb::EntryInfo) -> Self {
        fs::EntryInfo {
            name: e.name.clone(),
            r#type: match e.file_type {
                "FILE_TYPE_FILE" => 1,
                "FILE_TYPE_DIRECTORY" => 2,
                "FILE_TYPE_SYMLINK" => 3,
                _ => 0,
            },
            path: e.path.clone(),
            size: e.size.parse().unwrap_or(0),
            mode: e.mode,
            permissions: e.permissions.clone(),
            owner: e.owner.clone(),
            group: e.group.clone(),
            modified_time: Some(fs::Timestamp {
                seconds: e.mtime.0,
                nanos: e.mtime.1 as i32,
            }),
            symlink_target: e.symlink_target.clone(),
            is_symlink: e.is_symlink,
        }
    }
}

impl From<&fspb::EntryResponse> for fs::EntryResponse {
    fn from(r: &fspb::EntryResponse) -> Self {
        fs::EntryResponse {
            entry: Some((&r.entry).into()),
        }
    }
}

impl From<&fspb::ListDirResponse> for fs::ListDirResponse {
    fn from(r: &fspb::ListDirResponse) -> Self {
        fs::ListDirResponse {
            entries: r.entries.iter().map(Into::into).collect(),
        }
    }
}

impl From<&fspb::FilesystemEvent> for fs::FilesystemEvent {
    fn from(e: &fspb::FilesystemEvent) -> Self {
        fs::FilesystemEvent {
            name: e.name.clone(),
            r#type: e.kind as i32,
            entry: None,
        }
    }
}

impl From<&fspb::WatchDirResponse<'_>> for fs::WatchDirResponse {
    fn from(r: &fspb::WatchDirResponse<'_>) -> Self {
        let event = match r.event {
            fspb::WatchDirEvent::Start {} => fs::WatchEvent::Start(Empty {}),
            fspb::WatchDirEvent::Filesystem(e) => fs::WatchEvent::Filesystem(e.into()),
            fspb::WatchDirEvent::Keepalive {} => fs::WatchEvent::Keepalive(Empty {}),
        };
        fs::WatchDirResponse { event: Some(event) }
    }
}

impl From<&fspb::CreateWatcherResponse> for fs::CreateWatcherResponse {
    fn from(r: &fspb::CreateWatcherResponse) -> Self {
        fs::CreateWatcherResponse {
            watcher_id: r.watcher_id.clone(),
        }
    }
}

impl From<&fspb::GetWatcherEventsResponse> for fs::GetWatcherEventsResponse {
    fn from(r: &fspb::GetWatcherEventsResponse) -> Self {
        fs::GetWatcherEventsResponse {
            events: r.events.iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests;
