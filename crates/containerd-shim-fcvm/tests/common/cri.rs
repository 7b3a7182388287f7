//! A CRI v1 client for the tests (what a kubelet would call), over containerd's unix socket:
//! `k8s-cri`'s generated gRPC clients on a tonic channel, each call blocking on a runtime of
//! its own so the tests stay synchronous like the rest of the harness.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// The runtime handler containerd's config maps to the shim.
pub const HANDLER: &str = "fcvm";

pub struct Cri {
    rt: tokio::runtime::Runtime,
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
    /// Where the pods' container logs go (a pod's `log_directory` is below it).
    pub logs: PathBuf,
}

impl Cri {
    pub fn connect(sock: &Path, logs: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let sock = sock.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is not used: every connection is the unix socket.
                Endpoint::try_from("http://[::]:50051")
                    .unwrap()
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let sock = sock.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(sock).await?,
                            ))
                        }
                    }))
                    .await
            })
            .expect("CRI connection");
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            logs: logs.to_path_buf(),
        }
    }

    pub fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A pod's config, with [`namespaces`].
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with the `fcvm` handler: the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: HANDLER.into(),
        };
        self.block(async move { c.run_pod_sandbox(req).await })
            .map(|r| r.into_inner().pod_sandbox_id)
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.block(async move { c.stop_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.block(async move { c.remove_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn pod_state(&self, id: &str) -> Result<i32, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.block(async move { c.pod_sandbox_status(req).await })
            .map(|r| r.into_inner().status.map(|s| s.state).unwrap_or(-1))
    }

    /// A container's config: `image`, `args` as its command, its log at `<name>.log` in
    /// the pod's log directory.
    pub fn container_config(&self, name: &str, image: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            // As a kubelet passes the pod's options to each container (unset means POD).
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn create_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.block(async move { c.create_container(req).await })
            .map(|r| r.into_inner().container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        let req = StartContainerRequest {
            container_id: id.into(),
        };
        self.block(async move { c.start_container(req).await })
            .map(|_| ())
    }

    pub fn status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.block(async move { c.container_status(req).await })
            .map(|r| r.into_inner().status.expect("status"))
    }

    /// Waits (up to `limit`) for the container to exit; its status then.
    pub fn wait_exited(&self, id: &str, limit: Duration) -> ContainerStatus {
        let start = std::time::Instant::now();
        loop {
            let s = self.status(id).expect("ContainerStatus");
            if s.state == ContainerState::ContainerExited as i32 {
                return s;
            }
            assert!(start.elapsed() < limit, "{id} did not exit: {s:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, tonic::Status> {
        let mut c = self.runtime.clone();
        let req = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        };
        self.block(async move { c.exec_sync(req).await })
            .map(|r| r.into_inner())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.runtime.clone();
        let req = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.block(async move { c.remove_container(req).await })
            .map(|_| ())
    }

    /// Every pod CRI still knows of (the drop of a failed test removes them).
    pub fn pods(&self) -> Vec<String> {
        let mut c = self.runtime.clone();
        let req = ListPodSandboxRequest { filter: None };
        self.block(async move { c.list_pod_sandbox(req).await })
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }
}

/// The pods' namespace options: the node network option (no CNI here), a PID namespace per
/// container (kubelet's default), IPC shared in the pod.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The text of a CRI log file (lines `<time> <stream> <tag> <text>`): its `text`s.
pub fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3))
        .map(|t| format!("{t}\n"))
        .collect()
}
