//! envd's `filesystem.proto` messages in protobuf's JSON mapping (as [`super::pb`] does for
//! `process.proto`): requests tolerate unknown and missing fields; `int64` is a string,
//! a Timestamp RFC 3339, an enum its name.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PathRequest {
    pub path: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MoveRequest {
    pub source: String,
    pub destination: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ListDirRequest {
    pub path: String,
    pub depth: u32,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub file_type: &'static str,
    pub path: String,
    pub size: String,
    pub mode: u32,
    pub permissions: String,
    pub owner: String,
    pub group: String,
    pub modified_time: String,
    /// `modified_time` for the proto codec (seconds, nanoseconds since the epoch).
    #[serde(skip)]
    pub mtime: (i64, u32),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    pub is_symlink: bool,
}

/// Stat, MakeDir and Move answer one entry.
#[derive(Debug, Clone, Serialize)]
pub struct EntryResponse {
    pub entry: EntryInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListDirResponse {
    pub entries: Vec<EntryInfo>,
}

/// WatchDir's and CreateWatcher's request (`include_entry` and `allow_network_mounts` are
/// not served: the SDK asks for neither from envd 0.5.7).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatchRequest {
    pub path: String,
    pub recursive: bool,
}

/// GetWatcherEvents' and RemoveWatcher's request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct WatcherRequest {
    pub watcher_id: String,
}

/// `enum EventType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "EVENT_TYPE_CREATE")]
    Create = 1,
    #[serde(rename = "EVENT_TYPE_WRITE")]
    Write = 2,
    #[serde(rename = "EVENT_TYPE_REMOVE")]
    Remove = 3,
    #[serde(rename = "EVENT_TYPE_RENAME")]
    Rename = 4,
    #[serde(rename = "EVENT_TYPE_CHMOD")]
    Chmod = 5,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilesystemEvent {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EventType,
}

/// `WatchDirResponse.event`: the oneof, one key set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchDirEvent {
    Start {},
    Filesystem(FilesystemEvent),
    Keepalive {},
}

/// The oneof is the response's own (not a nested message's, as in process.proto's
/// `StartResponse`): its key is at the top, `{"start": {}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(transparent)]
pub struct WatchDirResponse<'a> {
    pub event: &'a WatchDirEvent,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateWatcherResponse {
    pub watcher_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct GetWatcherEventsResponse {
    pub events: Vec<FilesystemEvent>,
}

pub use super::pb::Empty;

/// `ls -l`'s `-rw-r--r--` of an `st_mode` (Go's `FileMode.String()`, as envd writes it, has
/// `d` for directories and `L` for symlinks).
pub fn permissions(mode: u32) -> String {
    let t = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'L',
        _ => '-',
    };
    let mut s = String::from(t);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_encode_as_envd_writes_them() {
        let e = EntryInfo {
            name: "a".into(),
            file_type: "FILE_TYPE_FILE",
            path: "/a".into(),
            size: "3".into(),
            mode: 0o644,
            permissions: permissions(0o100644),
            owner: "root".into(),
            group: "root".into(),
            modified_time: "2024-01-01T00:00:00Z".into(),
            mtime: (1_704_067_200, 0),
            symlink_target: None,
            is_symlink: false,
        };
        let v = serde_json::to_value(EntryResponse { entry: e }).unwrap();
        assert_eq!(v["entry"]["type"], "FILE_TYPE_FILE");
        assert_eq!(v["entry"]["permissions"], "-rw-r--r--");
        assert_eq!(v["entry"]["modifiedTime"], "2024-01-01T00:00:00Z");
        assert!(v["entry"].get("symlinkTarget").is_none());
        assert_eq!(permissions(0o40755), "drwxr-xr-x");
        let r: ListDirRequest = serde_json::from_str(r#"{"path":"/x","depth":2,"z":1}"#).unwrap();
        assert_eq!((r.path.as_str(), r.depth), ("/x", 2));
    }

    #[test]
    fn watch_messages_encode_as_envd_writes_them() {
        let ev = WatchDirEvent::Filesystem(FilesystemEvent {
            name: "sub/a".into(),
            kind: EventType::Chmod,
        });
        let j = |e: &WatchDirEvent| serde_json::to_string(&WatchDirResponse { event: e }).unwrap();
        assert_eq!(
            j(&ev),
            r#"{"filesystem":{"name":"sub/a","type":"EVENT_TYPE_CHMOD"}}"#
        );
        assert_eq!(j(&WatchDirEvent::Start {}), r#"{"start":{}}"#);
        let r: WatchRequest =
            serde_json::from_str(r#"{"path":"/x","recursive":true,"includeEntry":false}"#).unwrap();
        assert!(r.recursive && r.path == "/x");
        let r: WatcherRequest = serde_json::from_str(r#"{"watcherId":"7"}"#).unwrap();
        assert_eq!(r.watcher_id, "7");
        let c = CreateWatcherResponse {
            watcher_id: "7".into(),
        };
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"watcherId":"7"}"#);
    }
}
