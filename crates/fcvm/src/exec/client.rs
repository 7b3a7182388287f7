//! `fcvm exec`: runs one command in a running VM through its owner's exec socket
//! ([`super::server`]) and returns its exit code. The process's stdio is this process's
//! ([`crate::attach`]).

use anyhow::Context;
use fcvm_proto::Target;
use tokio::net::UnixStream;

use super::server::EXEC_SOCK;
use crate::session::Session;

/// What `fcvm exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub name: String,
    /// Run in the VM itself instead of the container.
    pub vm: bool,
    pub command: Vec<String>,
    /// `--env-file` then `-e` entries, resolved (`KEY=VALUE`; a later one wins).
    pub env: Vec<String>,
    /// `-d`: return once the process started; it keeps running.
    pub detach: bool,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub interactive: bool,
    pub tty: bool,
    /// Every capability for the process (`--privileged`).
    pub privileged: bool,
}

pub async fn exec(dirs: &crate::paths::Dirs, o: ExecOptions) -> anyhow::Result<i32> {
    let t0 = std::time::Instant::now();
    let (dir, st) = crate::vm::find(dirs, &o.name)?;
    let status = st.observed();
    if !status.can_exec() {
        anyhow::bail!("VM {} is not running (it is {status})", o.name);
    }
    if o.command.is_empty() {
        anyhow::bail!(
            "No command given: fcvm exec --name {} -- CMD [ARG...]",
            o.name
        );
    }
    let env = o.env.clone();
    if o.detach && (o.interactive || o.tty) {
        anyhow::bail!("fcvm exec -d takes no -i or -t: nothing stays attached");
    }
    let conn = UnixStream::connect(dir.path.join(EXEC_SOCK))
        .await
        .with_context(|| format!("VM {} does not accept execs", o.name))?;
    let session = Session::client(conn);
    let (rows, cols) = crate::attach::terminal_size().unwrap_or((24, 80));
    let spec = fcvm_proto::ProcessSpec {
        args: o.command,
        env,
        cwd: o.workdir.unwrap_or_default(),
        user: o.user.unwrap_or_default(),
        tty: o.tty,
        stdin: o.interactive,
        rows,
        cols,
        privileged: o.privileged,
        detach: o.detach,
    };
    let target = if o.vm {
        Target::Vm
    } else {
        Target::ContainerExec
    };
    let mut proc = session.start(spec, target).await;
    if o.detach {
        return detached(&mut proc, &o.name).await;
    }
    let outcome = crate::attach::attach(
        proc,
        crate::attach::AttachOptions {
            stdin: o.interactive,
            tty: o.tty,
            stop_on_signal: true,
        },
    )
    .await;
    if std::env::var_os("FCVM_TIMINGS").is_some() {
        // For bench/exec.py: the guest's own spawn time next to what this client saw.
        let us = |t: std::time::Instant| (t - t0).as_micros();
        if let Some((at, spawn_us)) = outcome.started {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "fcvm timings: spawn_us={spawn_us} started_us={} total_us={}",
                    us(at),
                    t0.elapsed().as_micros()
                );
            }
        }
    }
    outcome
        .result
        .with_context(|| format!("exec in VM {}", o.name))
}

/// `exec -d`: the server answers `Started` (the process runs on, podman's exit 0; fcvm has no
/// exec session id to print) or the start's `Error`, with podman's code for it.
async fn detached(proc: &mut crate::session::Process, name: &str) -> anyhow::Result<i32> {
    use fcvm_proto::{ErrorKind, Msg};
    match proc.recv().await {
        Some(Msg::Started { .. }) => Ok(0),
        Some(Msg::Error { kind, message }) => {
            #[allow(clippy::print_stderr)] // the command's own error, as an attached exec's
            {
                eprintln!("{message}");
            }
            Ok(match kind {
                ErrorKind::NotFound => 127,
                ErrorKind::NotExecutable => 126,
                _ => 125,
            })
        }
        Some(Msg::Exit { code, .. }) => Ok(code),
        _ => anyhow::bail!("VM {name}: the connection ended before the process started"),
    }
}
