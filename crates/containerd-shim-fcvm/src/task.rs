//! The task service containerd calls (runtime v2, `containerd.task.v2.Task`): the shim's
//! containers by id — one (a `ctr run` container, in its VM), or a CRI pod's (its sandbox,
//! whose VM it is, and the containers added to that VM) (docs/containerd.md).
//!
//! Create builds (or finds) the rootfs erofs and launches the VM — restored from the
//! image-cache snapshot when there is one, booted cold and snapshotted otherwise — with no
//! process yet (a pod's member is added to its sandbox's VM instead); Start runs the spec's
//! process in the container; Exec runs more in it; every end is published as `/tasks/exit`
//! and handed to `Wait`. The end of the init of the VM's first container (a lone container,
//! a pod's sandbox) stops the VM (Delete of the init waits for that, or stops it if the init
//! never ran); a member's end stops only it, its Delete removes it from the VM.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::protos::{api, topics};
use containerd_shim::TtrpcResult;
use fcvm::bundle::BundleVm;
use fcvm::paths::Dirs;
use fcvm_proto::Target;
use tokio::sync::Mutex;

use crate::container::Container;
use crate::events::{chain, err, exit_event, not_found, pstatus, ts, Events};
use crate::pod::Role;
use crate::process::{self, Exited, Proc, Status, Stdio};
use crate::spec;

pub struct Service {
    pub namespace: String,
    pub events: Events,
    pub exit: Arc<ExitSignal>,
    pub dirs: Dirs,
    containers: Mutex<HashMap<String, Container>>,
}

/// A process and where it runs: the VM, and the pod member it belongs to (None: the VM's
/// first container).
struct Found {
    p: Arc<Proc>,
    vm: Arc<BundleVm>,
    member: Option<String>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.into(),
            events: Events::spawn(publisher, namespace.into()),
            exit,
            dirs: Dirs::from_env(),
            containers: Mutex::new(HashMap::new()),
        }
    }

    async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
    }

    /// The process `exec_id` of container `id` (the init when empty).
    async fn proc(&self, id: &str, exec_id: &str) -> TtrpcResult<Found> {
        let cs = self.containers.lock().await;
        let c = cs.get(id).ok_or_else(|| not_found(id))?;
        let p = if exec_id.is_empty() {
            c.init.clone()
        } else {
            c.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(exec_id))?
        };
        Ok(Found {
            p,
            vm: c.vm.clone(),
            member: c.member().then(|| c.id.clone()),
        })
    }

    /// Starts `p` in the VM; its exit is published when it comes. The exit of the init of
    /// the VM's first container also stops the VM at once: nothing runs in a container after
    /// its init (as in runc's, and as `fcvm podman run` quits at its container's end), nor
    /// in a pod after its sandbox's, and Delete need not wait for it.
    async fn start_proc(&self, cid: &str, f: &Found) -> TtrpcResult<u32> {
        let (p, vm) = (&f.p, &f.vm);
        if p.status() != Status::Created {
            return Err(err(Code::FAILED_PRECONDITION, "process already started"));
        }
        let spec = p.spec.lock().expect("spec").clone();
        let opened = match (&f.member, p.exec_id.is_empty()) {
            (None, true) => Ok(vm.session.start(spec, Target::Container).await),
            (None, false) => Ok(vm.session.start(spec, Target::ContainerExec).await),
            (Some(id), true) => vm.start_container(id, spec).await,
            (Some(id), false) => vm.exec_in(id, spec).await,
        };
        let started = match opened {
            Ok(mut stream) => process::started(&mut stream)
                .await
                .map(|(pid, early)| (pid, early, stream)),
            Err(e) => Err(format!("{:#}", anyhow::Error::from(e))),
        };
        let (pid, early, stream) = match started {
            Ok(x) => x,
            Err(why) => {
                p.set_exited(127);
                self.publish_exit(cid, p, 0).await;
                return Err(err(
                    Code::UNKNOWN,
                    format!("fcvm: the process did not start: {why}"),
                ));
            }
        };
        let (events, cid2, me) = (self.events.clone(), cid.to_string(), p.clone());
        let stop = (p.exec_id.is_empty() && f.member.is_none()).then(|| vm.clone());
        p.running(stream, pid, early, move |_code| {
            if let Some(vm) = stop {
                tokio::task::spawn_blocking(move || vm.stop());
            }
            tokio::spawn(async move {
                let e = me.exit().expect("exited");
                events
                    .publish(
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

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        // The shim's containers are a pod's (a sandbox, then its members) or one alone; the
        // lock is not held through the VM's launch.
        let vms: HashMap<String, Arc<BundleVm>> = {
            let cs = self.containers.lock().await;
            if cs.contains_key(&req.id) {
                return Err(err(
                    Code::ALREADY_EXISTS,
                    format!("container {} exists", req.id),
                ));
            }
            cs.values()
                .filter(|c| c.role == Role::Sandbox && c.vm.running())
                .map(|c| (c.id.clone(), c.vm.clone()))
                .collect()
        };
        let sandbox = |sid: &str| vms.get(sid).cloned();
        let c = match Container::create(&self.dirs, &self.namespace, &req, sandbox).await {
            Ok(c) => c,
            Err(e) => {
                let msg = chain(&e);
                tracing::error!(id = %req.id, "create failed: {msg}");
                return Err(err(Code::INVALID_ARGUMENT, msg));
            }
        };
        let pid = c.vm.vmm_pid;
        self.containers.lock().await.insert(req.id.clone(), c);
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
        let f = self.proc(&req.id, &req.exec_id).await?;
        let pid = self.start_proc(&req.id, &f).await?;
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
        let p = self.proc(&req.id, &req.exec_id).await?.p;
        let bundle = self
            .containers
            .lock()
            .await
            .get(&req.id)
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
        let p = self.proc(&req.id, &req.exec_id).await?.p;
        let e = p.wait().await;
        Ok(api::WaitResponse {
            exit_status: e.code,
            exited_at: ts(e.at),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let p = self.proc(&req.id, &req.exec_id).await?.p;
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
                        Code::UNAVAILABLE,
                        "the VM's agent does not take the signal",
                    ));
                }
            }
        }
        if req.all && req.exec_id.is_empty() {
            let execs: Vec<_> = self
                .containers
                .lock()
                .await
                .get(&req.id)
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
        let mut cs = self.containers.lock().await;
        let c = cs.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
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
        let c = cs.remove(&req.id).expect("checked");
        drop(cs);
        c.init.set_exited(137);
        for e in c.execs.values() {
            e.set_exited(137);
        }
        let e = c.init.exit().expect("exited");
        let pid = c.init.pid();
        let t0 = std::time::Instant::now();
        if c.member() {
            // Out of its pod's VM (what still runs in it is killed); a VM already stopped
            // took it along.
            if c.vm.running() {
                if let Err(e) = c.vm.remove_container(&c.id).await {
                    tracing::warn!(id = %req.id, "cannot remove the container from its VM: {:#}", anyhow::Error::from(e));
                }
            }
            if let Some(d) = &c.mounted_rootfs {
                crate::pod::unmount_rootfs(d);
            }
            tracing::info!(id = %req.id, ms = t0.elapsed().as_millis(), "deleted: removed from its pod's VM");
        } else {
            let vm = c.vm.clone();
            tokio::task::spawn_blocking(move || vm.stop()).await.ok();
            if let Some(d) = &c.one_off_rootfs {
                let _ = std::fs::remove_dir_all(d);
            }
            tracing::info!(id = %req.id, ms = t0.elapsed().as_millis(), "deleted: VM stopped and removed");
        }
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
        let cs = self.containers.lock().await;
        let c = cs.get(&req.id).ok_or_else(|| not_found(&req.id))?;
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
                    Code::INVALID_ARGUMENT,
                    format!("invalid exec process spec: {e}"),
                )
            })?;
        let mut pspec = spec::process_spec(&oci, !req.stdin.is_empty())
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        pspec.tty = pspec.tty || req.terminal;
        let mut cs = self.containers.lock().await;
        let c = cs.get_mut(&req.id).ok_or_else(|| not_found(&req.id))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        if c.init.status() != Status::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
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
        drop(cs);
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
        let p = self.proc(&req.id, &req.exec_id).await?.p;
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
        let p = self.proc(&req.id, &req.exec_id).await?.p;
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
        crate::stats::stats(&self.proc(&req.id, "").await?.vm)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .containers
            .lock()
            .await
            .get(&req.id)
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
        // A shim with a container still to delete stays, even told to go now (as runc's):
        // containerd asks that after one container of a pod failed to be created, while
        // the others still run here.
        let _ = req.now;
        if !self.containers.lock().await.is_empty() {
            return Ok(api::Empty::new());
        }
        // What the shim published (the last, its /tasks/delete) reaches containerd first.
        self.events.flush().await;
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
