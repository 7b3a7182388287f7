//! The task service containerd calls (runtime v2, `containerd.task.v2.Task`): one container
//! per shim, in one VM (docs/containerd.md).
//!
//! Create builds (or finds) the rootfs erofs and launches the VM — restored from the
//! image-cache snapshot when there is one, booted cold and snapshotted otherwise — with no
//! process yet; Start runs the spec's process in the container; Exec runs more in it; every
//! end is published as `/tasks/exit` and handed to `Wait`. The init's end stops the VM (Delete
//! of the init waits for that, or stops it if the init never ran).

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
use crate::process::{self, Exited, Proc, Status, Stdio};
use crate::spec;

pub struct Service {
    pub namespace: String,
    pub events: Events,
    pub exit: Arc<ExitSignal>,
    pub dirs: Dirs,
    container: Mutex<Option<Container>>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            namespace: namespace.into(),
            events: Events::spawn(publisher, namespace.into()),
            exit,
            dirs: Dirs::from_env(),
            container: Mutex::new(None),
        }
    }

    async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
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

    /// Starts `p` in the VM; its exit is published when it comes. The init's exit also
    /// stops the VM at once: nothing runs in a container after its init (as in runc's, and
    /// as `fcvm podman run` quits at its container's end), and Delete need not wait for it.
    async fn start_proc(&self, cid: &str, p: &Arc<Proc>, vm: &Arc<BundleVm>) -> TtrpcResult<u32> {
        if p.status() != Status::Created {
            return Err(err(Code::FAILED_PRECONDITION, "process already started"));
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
                    Code::UNKNOWN,
                    format!("fcvm: the process did not start: {why}"),
                ));
            }
        };
        let (events, cid2, me) = (self.events.clone(), cid.to_string(), p.clone());
        let stop = p.exec_id.is_empty().then(|| vm.clone());
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
        let mut slot = self.container.lock().await;
        if slot.is_some() {
            return Err(err(
                Code::ALREADY_EXISTS,
                "this shim already runs a container",
            ));
        }
        let c = match Container::create(&self.dirs, &self.namespace, &req).await {
            Ok(c) => c,
            Err(e) => {
                let msg = chain(&e);
                tracing::error!(id = %req.id, "create failed: {msg}");
                return Err(err(Code::INVALID_ARGUMENT, msg));
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
                        Code::UNAVAILABLE,
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
        let t0 = std::time::Instant::now();
        tokio::task::spawn_blocking(move || vm.stop()).await.ok();
        if let Some(d) = &c.one_off_rootfs {
            let _ = std::fs::remove_dir_all(d);
        }
        tracing::info!(id = %req.id, ms = t0.elapsed().as_millis(), "deleted: VM stopped and removed");
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
                    Code::INVALID_ARGUMENT,
                    format!("invalid exec process spec: {e}"),
                )
            })?;
        let mut pspec = spec::process_spec(&oci, !req.stdin.is_empty())
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        pspec.tty = pspec.tty || req.terminal;
        let mut slot = self.container.lock().await;
        let c = slot
            .as_mut()
            .filter(|c| c.id == req.id)
            .ok_or_else(|| not_found(&req.id))?;
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
        // What the shim published (the last, its /tasks/delete) reaches containerd first.
        self.events.flush().await;
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
