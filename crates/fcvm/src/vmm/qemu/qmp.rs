//! A minimal QMP client: JSON lines over the VM's `qmp.sock`.
//!
//! fcvm uses QMP only for snapshot work (stop, migrate with `x-ignore-shared`, incoming
//! migration, cont) and status queries. Events are skipped; each command waits for its own
//! `return` or `error`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("Cannot connect to QMP at {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("QMP {0} failed: {1}")]
    Command(String, String),
    #[error("QMP sent invalid JSON")]
    Json(#[from] serde_json::Error),
    #[error("QMP {0} did not finish within {1:?}")]
    Timeout(String, Duration),
}

pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => {
                    return Err(QmpError::Connect(path.display().to_string(), e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (rd, wr) = stream.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd),
            wr,
        };
        q.read_msg().await?; // greeting
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.rd.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        let msg = json!({ "execute": cmd, "arguments": args });
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(b'\n');
        self.wr.write_all(&bytes).await?;
        loop {
            let v = self.read_msg().await?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                let desc = e["desc"].as_str().unwrap_or("unknown error").to_string();
                return Err(QmpError::Command(cmd.into(), desc));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", json!({})).await?;
        Ok(v["status"].as_str().unwrap_or("").to_string())
    }

    /// `x-ignore-shared`: leave shared RAM (the VM's RAM file) out of the migration stream.
    /// Both ends of a stream must agree: it changes the stream's format.
    pub async fn set_ignore_shared(&mut self, on: bool) -> Result<(), QmpError> {
        self.execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": on}]}),
        )
        .await
        .map(|_| ())
    }

    /// Waits until the current migration (outgoing or incoming) completes.
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<(), QmpError> {
        let start = Instant::now();
        loop {
            let v = self.execute("query-migrate", json!({})).await?;
            match v["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                s @ ("failed" | "cancelled") => {
                    let why = v["error-desc"].as_str().unwrap_or(s).to_string();
                    return Err(QmpError::Command("migrate".into(), why));
                }
                _ => {}
            }
            if start.elapsed() > timeout {
                return Err(QmpError::Timeout("migrate".into(), timeout));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}
