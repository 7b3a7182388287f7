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
}
