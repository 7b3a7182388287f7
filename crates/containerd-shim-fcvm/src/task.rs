//! The task service containerd calls (runtime v2, `containerd.task.v2.Task`): one container
//! per shim, in one VM (docs/containerd.md).
//!
//! Create builds (or finds) the rootfs erofs and launches the VM — restored from the
//! image-cache snapshot when there is one, booted cold and snapshotted otherwise — with no
//! process yet; Start runs the spec's process in the container; Exec runs more in it; every
//! end is published as `/tasks/exit` and handed to `Wait`. Delete of the init stops the VM.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::types::task::{ProcessInfo, Status as PStatus};
use containerd_shim::protos::{api, topics};
use containerd_shim::{Context, TtrpcResult};
use fcvm::bundle::{BundleVm, VmRequest};
use fcvm::paths::Dirs;
use fcvm_proto::Target;
use tokio::sync::Mutex;

use crate::process::{self, Exited, Proc, Status, Stdio};
use crate::{rootfs, spec};

pub struct Service {
    pub namespace: String,
    pub publisher: Arc<RemotePublisher>,
    pub exit: Arc<ExitSignal>,
    pub dirs: Dirs,
    container: Mutex<Option<Container>>,
}

struct Container {
    id: String,
    bundle: String,
    vm: Arc<BundleVm>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    one_off_rootfs: Option<PathBuf>,
}

fn err(
    code: containerd_shim::protos::ttrpc::Code,
    msg: impl Into<String>,
) -> containerd_shim::protos::ttrpc::Error {
    containerd_shim::protos::ttrpc::Error::RpcStatus(containerd_shim::protos::ttrpc::get_status(
        code,
        msg.into(),
    ))
}

fn not_found(what: &str) -> containerd_shim::protos::ttrpc::Error {
    err(
        containerd_shim::protos::ttrpc::Code::NOT_FOUND,
        format!("{what}: not found"),
    )
}

/// The full chain of an error, on one line (what containerd shows the user).
fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

fn ts(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

fn pstatus(s: Status) -> PStatus {
    match s {
        Status::Created => PStatus::CREATED,
        Status::Running => PStatus::RUNNING,
        Status::Stopped => PStatus::STOPPED,
    }
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.into(),
            publisher: Arc::new(publisher),
            exit,
            dirs: Dirs::from_env(),
            container: Mutex::new(None),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await;
    }

    /// The process `exec_id` of the container (the init when empty).
    async fn proc(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Proc>, Arc<BundleVm>)> {
        let c = self.container.lock().await;
        let c = c
            .as_ref()
            .filter(|c| c.id == id)
            .ok_or_else(|| not_found(id))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(exec_id))?
        };
        Ok((p, c.vm.clone()))
    }

    async fn create(&self, req: &api::CreateTaskRequest) -> anyhow::Result<Container> {
        use anyhow::Context as _;
        if !req.checkpoint.is_empty() {
            anyhow::bail!(
                "fcvm cannot honour checkpoint: restoring a CRIU checkpoint is not supported"
            );
        }
        let bundle = PathBuf::from(&req.bundle);
        let oci = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .context("Cannot read the bundle's config.json")?;
        let mut plan = spec::plan(&oci, !req.stdin.is_empty())?;
        plan.process.tty = plan.process.tty || req.terminal;
        let dirs = self.dirs.clone();
        let mounts = req.rootfs.clone();
        let root = tokio::task::spawn_blocking(move || rootfs::prepare(&dirs, &mounts)).await??;
        let name = vm_name(&self.namespace, &req.id);
        let vreq = VmRequest {
            name,
            hostname: if plan.hostname.is_empty() {
                req.id.chars().take(63).collect()
            } else {
                plan.hostname.clone()
            },
            rootfs: root.erofs.clone(),
            digest: root.digest.clone(),
            image: format!("containerd:{}/{}", self.namespace, req.id),
            cpus: plan.cpus,
            mem_mib: plan.mem_mib,
            env: plan.process.env.clone(),
            prefetch: plan.process.args.first().cloned().into_iter().collect(),
            privileged: plan.privileged,
            no_snapshot: root.one_off.is_some(),
        };
        let vm = match BundleVm::launch(&self.dirs, &vreq).await {
            Ok(vm) => vm,
            Err(e) => {
                if let Some(d) = &root.one_off {
                    let _ = std::fs::remove_dir_all(d);
                }
                return Err(e);
            }
        };
        match &vm.restored_from {
            Some(s) => {
                tracing::info!(id = %req.id, vm = %vm.id, "restored from image-cache snapshot {s}")
            }
            None => {
                tracing::info!(id = %req.id, vm = %vm.id, "booted cold (image-cache snapshot saved for the next)")
            }
        }
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        Ok(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            vm: Arc::new(vm),
            init: Proc::new("", plan.process, stdio),
            execs: HashMap::new(),
            one_off_rootfs: root.one_off,
        })
    }

    /// Starts `p` in the VM; its exit is published when it comes.
    async fn start_proc(&self, cid: &str, p: &Arc<Proc>, vm: &BundleVm) -> TtrpcResult<u32> {
        if p.status() != Status::Created {
            return Err(err(
                containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                "process already started",
            ));
        }
        let target = if p.exec_id.is_empty() {
            Target::Container
        } else {
            Target::ContainerExec
        };
        let spec = p.spec.lock().expect("spec").clone();
        let mut stream = vm.session.start(spec, target).await;
        let (pid, early) = match process::started(&mut stream).await {
            Ok(x) => x,
            Err(why) => {
                p.set_exited(127);
                self.publish_exit(cid, p, 0).await;
                return Err(err(
                    containerd_shim::protos::ttrpc::Code::UNKNOWN,
                    format!("fcvm: the process did not start: {why}"),
                ));
            }
        };
        let (publisher, ns, cid2, me) = (
            self.publisher.clone(),
            self.namespace.clone(),
            cid.to_string(),
            p.clone(),
        );
        p.running(stream, pid, early, move |_code| {
            tokio::spawn(async move {
                let e = me.exit().expect("exited");
                publish(
                    &publisher,
                    &ns,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(exit_event(&cid2, &me, pid, e)),
                )
                .await;
            });
        });
        Ok(pid)
    }

    async fn publish_exit(&self, cid: &str, p: &Proc, pid: u32) {
        if let Some(e) = p.exit() {
            self.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(exit_event(cid, p, pid, e)),
            )
            .await;
        }
    }
}

fn exit_event(cid: &str, p: &Proc, pid: u32, e: Exited) -> TaskExit {
    TaskExit {
        container_id: cid.into(),
        id: if p.exec_id.is_empty() {
            cid.into()
        } else {
            p.exec_id.clone()
        },
        pid,
        exit_status: e.code,
        exited_at: ts(e.at),
        ..Default::default()
    }
}

async fn publish(publisher: &RemotePublisher, ns: &str, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = publisher
        .publish(Context::default(), topic, ns, event)
        .await
    {
        tracing::warn!("cannot publish {topic}: {e}");
    }
}

/// The VM's name in `fcvm ls`: the container's, when fcvm's name rules take it.
pub fn vm_name(ns: &str, id: &str) -> String {
    let n = format!("ctrd-{ns}-{id}");
    if fcvm::vm::names::validate(&n).is_ok() {
        return n;
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(format!("{ns}/{id}")));
    format!("ctrd-{}", &h[..16])
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let mut slot = self.container.lock().await;
        if slot.is_some() {
            return Err(err(
                containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                "this shim already runs a container",
            ));
        }
        let c = match Service::create(self, &req).await {
            Ok(c) => c,
            Err(e) => {
                let msg = chain(&e);
                tracing::error!(id = %req.id, "create failed: {msg}");
                return Err(err(
                    containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT,
                    msg,
                ));
            }
        };
        let pid = c.vm.vmm_pid;
        *slot = Some(c);
        drop(slot);
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (p, vm) = self.proc(&req.id, &req.exec_id).await?;
        let pid = self.start_proc(&req.id, &p, &vm).await?;
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (p, _vm) = self.proc(&req.id, &req.exec_id).await?;
        let bundle = self
            .container
            .lock()
            .await
            .as_ref()
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        let exit = p.exit();
        Ok(api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle,
            pid: p.pid(),
            status: pstatus(p.status()).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map(|e| e.code).unwrap_or_default(),
            exited_at: exit.map(|e| ts(e.at)).unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let (p, _vm) = self.proc(&req.id, &req.exec_id).await?;
        let e = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: e.code,
            exited_at: ts(e.at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (p, _vm) = self.proc(&req.id, &req.exec_id).await?;
        let sig = req.signal as i32;
        match p.status() {
            Status::Stopped => return Err(not_found("process already finished")),
            // Never started: it ends here, as runc's shim ends a created container.
            Status::Created => {
                if p.set_exited(128 + req.signal) {
                    self.publish_exit(&req.id, &p, 0).await;
                }
            }
            Status::Running => {
                if !p.signal(sig) {
                    return Err(err(
                        containerd_shim::protos::ttrpc::Code::UNAVAILABLE,
                        "the VM's agent does not take the signal",
                    ));
                }
            }
        }
        if req.all && req.exec_id.is_empty() {
            let execs: Vec<_> = self
                .container
                .lock()
                .await
                .iter()
                .flat_map(|c| c.execs.values().cloned())
                .collect();
            for e in execs {
                e.signal(sig);
            }
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut slot = self.container.lock().await;
        let c = slot
            .as_mut()
            .filter(|c| c.id == req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if !req.exec_id.is_empty() {
            let p = c
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            let e = p.exit().unwrap_or(Exited {
                code: 137,
                at: SystemTime::now(),
            });
            return Ok(api::DeleteResponse {
                pid: p.pid(),
                exit_status: e.code,
                exited_at: ts(e.at),
                ..Default::default()
            });
        }
        let c = slot.take().expect("checked");
        drop(slot);
        c.init.set_exited(137);
        for e in c.execs.values() {
            e.set_exited(137);
        }
        let e = c.init.exit().expect("exited");
        let pid = c.init.pid();
        let vm = c.vm.clone();
        tokio::task::spawn_blocking(move || vm.stop()).await.ok();
        if let Some(d) = &c.one_off_rootfs {
            let _ = std::fs::remove_dir_all(d);
        }
        tracing::info!(id = %req.id, "deleted: VM stopped and removed");
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: e.code,
                exited_at: ts(e.at),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: e.code,
            exited_at: ts(e.at),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let slot = self.container.lock().await;
        let c = slot
            .as_ref()
            .filter(|c| c.id == req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let processes = std::iter::once(&c.init)
            .chain(c.execs.values())
            .filter(|p| p.status() == Status::Running)
            .map(|p| ProcessInfo {
                pid: p.pid(),
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let oci: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                err(
                    containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT,
                    format!("invalid exec process spec: {e}"),
                )
            })?;
        let mut pspec = spec::process_spec(&oci, !req.stdin.is_empty()).map_err(|e| {
            err(
                containerd_shim::protos::ttrpc::Code::INVALID_ARGUMENT,
                e.to_string(),
            )
        })?;
        pspec.tty = pspec.tty || req.terminal;
        let mut slot = self.container.lock().await;
        let c = slot
            .as_mut()
            .filter(|c| c.id == req.id)
            .ok_or_else(|| not_found(&req.id))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                containerd_shim::protos::ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        if c.init.status() != Status::Running {
            return Err(err(
                containerd_shim::protos::ttrpc::Code::FAILED_PRECONDITION,
                "the container is not running",
            ));
        }
        pspec.privileged = c.init.spec.lock().expect("spec").privileged;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        c.execs
            .insert(req.exec_id.clone(), Proc::new(&req.exec_id, pspec, stdio));
        drop(slot);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let (p, _vm) = self.proc(&req.id, &req.exec_id).await?;
        p.resize(
            req.height.min(u16::MAX as u32) as u16,
            req.width.min(u16::MAX as u32) as u16,
        );
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let (p, _vm) = self.proc(&req.id, &req.exec_id).await?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let (_p, vm) = self.proc(&req.id, "").await?;
        crate::stats::stats(&vm)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .container
            .lock()
            .await
            .as_ref()
            .filter(|c| c.id == req.id)
            .map(|c| c.vm.vmm_pid)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // A shim with a container still to delete stays, unless told to go now.
        if self.container.lock().await.is_some() && !req.now {
            return Ok(api::Empty::new());
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
