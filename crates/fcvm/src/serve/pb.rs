//! envd's `process.proto` messages in protobuf's JSON mapping (the codec the E2B SDK uses):
//! fields in lowerCamelCase, `bytes` as base64, a `oneof` as the one key that is set, enums by
//! name (numbers are accepted too). Requests tolerate unknown and missing fields; replies
//! always write the fields the SDK reads.

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `bytes`: base64 in JSON (standard alphabet; the URL-safe one is accepted on input).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let trimmed = s.trim_end_matches('=');
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ProcessConfig {
    pub cmd: String,
    pub args: Vec<String>,
    pub envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct PtySize {
    pub cols: u32,
    pub rows: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Pty {
    pub size: Option<PtySize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StartRequest {
    pub process: Option<ProcessConfig>,
    pub pty: Option<Pty>,
    pub tag: Option<String>,
    pub stdin: Option<bool>,
}

/// `oneof selector { uint32 pid; string tag; }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessSelector {
    pub pid: Option<u32>,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SelectorRequest {
    pub process: Option<ProcessSelector>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendSignalRequest {
    pub process: Option<ProcessSelector>,
    pub signal: Signal,
}

/// `oneof input { bytes stdin; bytes pty; }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessInput {
    pub stdin: Option<Bytes>,
    pub pty: Option<Bytes>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SendInputRequest {
    pub process: Option<ProcessSelector>,
    pub input: Option<ProcessInput>,
}

/// `StreamInputRequest.event`: `start` first, then `data` and `keepalive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamInputRequest {
    pub start: Option<SelectorRequest>,
    pub data: Option<StreamInputData>,
    pub keepalive: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamInputData {
    pub input: Option<ProcessInput>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct UpdateRequest {
    pub process: Option<ProcessSelector>,
    pub pty: Option<Pty>,
}

/// `enum Signal`: by name or by number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signal(pub i32);

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(i32),
            Name(String),
        }
        Ok(Signal(match Raw::deserialize(d)? {
            Raw::Num(n) => n,
            Raw::Name(s) => match s.as_str() {
                "SIGNAL_SIGKILL" => libc::SIGKILL,
                "SIGNAL_SIGTERM" => libc::SIGTERM,
                "SIGNAL_UNSPECIFIED" => 0,
                other => return Err(serde::de::Error::custom(format!("unknown signal {other}"))),
            },
        }))
    }
}

/// `ProcessEvent.event`: the oneof, one key set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Start { pid: u32 },
    Data(Data),
    End(End),
    Keepalive {},
}

/// `DataEvent.output`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Data {
    Stdout(Bytes),
    Stderr(Bytes),
    Pty(Bytes),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct End {
    pub exit_code: i32,
    pub exited: bool,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `StartResponse` and `ConnectResponse` alike: `{"event": {…}}`.
#[derive(Debug, Clone, Serialize)]
pub struct EventResponse<'a> {
    pub event: &'a Event,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessInfo {
    pub config: ProcessConfig,
    pub pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListResponse {
    pub processes: Vec<ProcessInfo>,
}

/// Every empty message: the reply of SendSignal, SendInput, CloseStdin, Update and the
/// filesystem's Remove and RemoveWatcher; List's request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_request_as_the_sdk_sends_it() {
        let r: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"/tmp"},"stdin":false,"future":1}"#,
        )
        .unwrap();
        let p = r.process.unwrap();
        assert_eq!(p.cmd, "/bin/bash");
        assert_eq!(p.args, ["-l", "-c", "echo hi"]);
        assert_eq!(p.envs["A"], "1");
        assert_eq!(p.cwd.as_deref(), Some("/tmp"));
        assert_eq!(r.stdin, Some(false));
        assert!(r.pty.is_none());
    }

    #[test]
    fn events_encode_as_oneofs() {
        let j = |e: &Event| serde_json::to_string(&EventResponse { event: e }).unwrap();
        assert_eq!(
            j(&Event::Start { pid: 7 }),
            r#"{"event":{"start":{"pid":7}}}"#
        );
        assert_eq!(
            j(&Event::Data(Data::Stdout(Bytes(b"hi\n".to_vec())))),
            r#"{"event":{"data":{"stdout":"aGkK"}}}"#
        );
        let end = Event::End(End {
            exit_code: 1,
            exited: true,
            status: "exit status 1".into(),
            error: None,
        });
        assert_eq!(
            j(&end),
            r#"{"event":{"end":{"exitCode":1,"exited":true,"status":"exit status 1"}}}"#
        );
        assert_eq!(j(&Event::Keepalive {}), r#"{"event":{"keepalive":{}}}"#);
    }

    #[test]
    fn signals_and_input_decode() {
        let r: SendSignalRequest =
            serde_json::from_str(r#"{"process":{"pid":12},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
        assert_eq!((r.process.unwrap().pid, r.signal), (Some(12), Signal(9)));
        let r: SendSignalRequest = serde_json::from_str(r#"{"signal":15}"#).unwrap();
        assert_eq!(r.signal, Signal(15));
        assert!(serde_json::from_str::<SendSignalRequest>(r#"{"signal":"SIGHUP"}"#).is_err());
        let r: SendInputRequest =
            serde_json::from_str(r#"{"process":{"tag":"t"},"input":{"stdin":"aGk="}}"#).unwrap();
        assert_eq!(r.input.unwrap().stdin, Some(Bytes(b"hi".to_vec())));
    }
}
