//! Kubernetes' CRI against a real containerd (Debian's 1.6, its CRI plugin loaded) with the
//! runtime handler `fcvm`: each pod is one real fcvm VM (QEMU, the agent, crun), its
//! containers run in it. Driven by a CRI v1 client (`k8s-cri`), as a kubelet would.
//!
//! Needs: root, containerd, skopeo, protoc (to build the client), and `FCVM_AGENT`
//! (scripts/lib.sh's build_all) so the shim finds the guest assets in the shared test data
//! dir.

mod common;
use common::cri::*;
use common::*;

use std::path::Path;
use std::time::Duration;

use k8s_cri::v1::{ContainerState, Mount, PodSandboxState};

fn start() -> (Containerd, Cri) {
    let c = Containerd::start_cri();
    let logs = c.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let cri = Cri::connect(&c.sock(), &logs);
    (c, cri)
}

/// The pod's sandbox alone: RunPodSandbox (the VM up, its pause container running),
/// StopPodSandbox, RemovePodSandbox — and nothing is left: no shim, no VMM, no VM.
#[test]
fn a_pod_sandbox_runs_stops_and_is_removed() {
    let (c, cri) = start();
    let pc = cri.pod_config("p1");
    let pod = cri
        .run_pod(&pc)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
    assert_eq!(
        cri.pod_state(&pod).unwrap(),
        PodSandboxState::SandboxReady as i32
    );
    assert!(
        vm_ids(&c.log(), &pod).len() == 1,
        "the sandbox's VM is logged once"
    );
    cri.stop_pod(&pod).unwrap();
    assert_eq!(
        cri.pod_state(&pod).unwrap(),
        PodSandboxState::SandboxNotready as i32
    );
    cri.remove_pod(&pod).unwrap();
    assert_nothing_left(&c, &[&pod]);
}

/// A pod of two containers in one VM, sharing its localhost: one serves, the other
/// connects; their exit codes through ContainerStatus, the client's output in its CRI log
/// file, ExecSync in the server, and StopPodSandbox (killing a container still running) +
/// RemovePodSandbox leave nothing.
#[test]
fn a_pods_containers_share_its_vm() {
    let (c, cri) = start();
    let pc = cri.pod_config("web");
    let pod = cri
        .run_pod(&pc)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));

    let server = cri
        .create_container(
            &pod,
            &pc,
            &cri.container_config(
                "server",
                IMAGE,
                &["sh", "-c", "nc -l -p 8080 -e echo hi; echo served; exit 4"],
            ),
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()));
    cri.start_container(&server)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    assert_eq!(
        cri.status(&server).unwrap().state,
        ContainerState::ContainerRunning as i32
    );

    // ExecSync in the running server: both streams and the exit code.
    let r = cri
        .exec_sync(
            &server,
            &["sh", "-c", "echo exec out; echo exec err >&2; exit 6"],
        )
        .unwrap();
    assert_eq!(
        (text(&r.stdout), text(&r.stderr), r.exit_code),
        ("exec out\n".into(), "exec err\n".into(), 6)
    );

    // The client reaches the server on the pod's localhost (retrying until it listens).
    let client = cri
        .create_container(
            &pod,
            &pc,
            &cri.container_config(
                "client",
                IMAGE,
                &[
                    "sh",
                    "-c",
                    "for i in $(seq 300); do out=$(nc 127.0.0.1 8080 </dev/null) && \
                     [ -n \"$out\" ] && { echo \"got: $out\"; exit 3; }; sleep 0.1; done; exit 9",
                ],
            ),
        )
        .unwrap();
    cri.start_container(&client).unwrap();
    // One VM for the pod: the shim logged the same VM for the sandbox and its containers.
    let log = c.log();
    let vm = vm_ids(&log, &pod);
    assert_eq!(vm.len(), 1, "{log}");
    assert_eq!(
        (vm_ids(&log, &server), vm_ids(&log, &client)),
        (vm.clone(), vm)
    );
    let limit = Duration::from_secs(120);
    let cs = cri.wait_exited(&client, limit);
    assert_eq!(cs.exit_code, 3, "client: {cs:?}");
    let ss = cri.wait_exited(&server, limit);
    assert_eq!(ss.exit_code, 4, "server: {ss:?}");
    // The CRI log files, written from the FIFOs the shim fed.
    assert_eq!(log_text(Path::new(&cs.log_path)), "got: hi\n");
    assert_eq!(log_text(Path::new(&ss.log_path)), "served\n");

    // A container still running when the pod stops: StopPodSandbox kills it (SIGKILL,
    // through the shim's Kill), then the sandbox, whose end stops the VM.
    let sleeper = cri
        .create_container(
            &pod,
            &pc,
            &cri.container_config("sleeper", IMAGE, &["sleep", "600"]),
        )
        .unwrap();
    cri.start_container(&sleeper).unwrap();
    cri.remove_container(&client).unwrap();
    cri.stop_pod(&pod).unwrap();
    let st = cri.wait_exited(&sleeper, limit);
    assert_eq!(st.exit_code, 137, "sleeper: {st:?}");
    cri.remove_pod(&pod).unwrap();
    assert_nothing_left(&c, &[&pod, &server, &client, &sleeper]);
}

/// A pod's containers with host directories mounted (as Kubernetes volumes arrive): one
/// reads the host's file at /data and writes one the host then sees; one with the volume
/// read-only reads it and cannot write (exit code and error checked); a host *file*
/// mounted is refused clearly at StartContainer and the pod goes on. Removing them and the
/// pod leaves nothing.
#[test]
fn a_pods_containers_bind_host_directories() {
    let (c, cri) = start();
    let pc = cri.pod_config("vols");
    let pod = cri
        .run_pod(&pc)
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()));
    let vol = c.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    let mount = |host: &Path, readonly| Mount {
        container_path: "/data".into(),
        host_path: host.display().to_string(),
        readonly,
        ..Default::default()
    };

    // Bad input: a host file cannot be served as a map.
    let file = c.dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let mut bad = cri.container_config("bad", IMAGE, &["true"]);
    bad.mounts = vec![mount(&file, false)];
    // CRI creates the task (and so asks the shim) at StartContainer.
    let bad = cri.create_container(&pod, &pc, &bad).unwrap();
    let e = cri.start_container(&bad).unwrap_err();
    let want = format!(
        "fcvm cannot honour mount /data (bind from {}): only a host directory can be bound \
         into the VM, not a file",
        file.display()
    );
    assert!(e.message().contains(&want), "{e}");
    cri.remove_container(&bad).unwrap();

    let mut rw = cri.container_config(
        "rw",
        IMAGE,
        &[
            "sh",
            "-c",
            "cat /data/in && echo from guest > /data/out && exit 2",
        ],
    );
    rw.mounts = vec![mount(&vol, false)];
    let rw = cri
        .create_container(&pod, &pc, &rw)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()));
    cri.start_container(&rw)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let limit = Duration::from_secs(120);
    let st = cri.wait_exited(&rw, limit);
    assert_eq!(
        st.exit_code,
        2,
        "rw: {st:?}\n{}",
        log_text(Path::new(&st.log_path))
    );
    assert_eq!(log_text(Path::new(&st.log_path)), "from host\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from guest\n"
    );

    let mut ro = cri.container_config(
        "ro",
        IMAGE,
        &[
            "sh",
            "-c",
            "cat /data/in; echo again > /data/again && exit 0; exit 5",
        ],
    );
    ro.mounts = vec![mount(&vol, true)];
    let ro = cri.create_container(&pod, &pc, &ro).unwrap();
    cri.start_container(&ro)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let st = cri.wait_exited(&ro, limit);
    let out = log_text(Path::new(&st.log_path));
    assert_eq!(st.exit_code, 5, "ro: {st:?}\n{out}");
    assert!(
        out.starts_with("from host\n") && out.contains("Read-only file system"),
        "{out}"
    );
    assert!(!vol.join("again").exists());

    cri.remove_container(&rw).unwrap();
    cri.remove_container(&ro).unwrap();
    cri.stop_pod(&pod).unwrap();
    cri.remove_pod(&pod).unwrap();
    assert_nothing_left(&c, &[&pod, &rw, &ro]);
}

/// One pod up: RunPodSandbox, then CreateContainer + StartContainer of a container that
/// sleeps; its id on success.
fn pod_up(cri: &Cri, name: &str) -> Result<String, String> {
    let pc = cri.pod_config(name);
    let pod = cri
        .run_pod(&pc)
        .map_err(|e| format!("RunPodSandbox: {e}"))?;
    let cc = cri.container_config("main", IMAGE, &["sleep", "600"]);
    let id = cri
        .create_container(&pod, &pc, &cc)
        .map_err(|e| format!("CreateContainer: {e}"))?;
    cri.start_container(&id)
        .map_err(|e| format!("StartContainer: {e}"))?;
    Ok(pod)
}

/// bench/containerd.py's pods figure (not a test: `--ignored`): one pod up, then
/// `FCVM_BENCH_PODS` (10) pods up at once from as many threads; wall times and failures,
/// printed as `pods: ...` lines. Every pod is removed afterwards.
#[test]
#[ignore]
// Its figures are its output (bench/containerd.py reads them).
#[allow(clippy::print_stdout)]
fn pods_bench() {
    let n: usize = std::env::var("FCVM_BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (c, cri) = start();
    // Warm: the pause image's erofs and image-cache snapshot exist from here on.
    let warm = pod_up(&cri, "warm").unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let down = |pod: &str| {
        let _ = cri.stop_pod(pod);
        let _ = cri.remove_pod(pod);
    };
    down(&warm);
    let (t0, busy0) = (std::time::Instant::now(), cpu_busy_ms());
    let one = pod_up(&cri, "one").unwrap_or_else(|e| panic!("{e}\n{}", c.log()));
    let one_ms = t0.elapsed().as_millis();
    let one_busy_ms = cpu_busy_ms() - busy0;
    // Its container's share: mounting its root in the (restored) VM, as the shim logged it.
    let added_ms = c
        .log()
        .lines()
        .rfind(|l| l.contains("added to pod"))
        .and_then(|l| l.split(" ms=").nth(1))
        .and_then(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
        .unwrap_or("?")
        .to_string();
    down(&one);
    let (t0, busy0) = (std::time::Instant::now(), cpu_busy_ms());
    let results: Vec<Result<String, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let cri = &cri;
                s.spawn(move || pod_up(cri, &format!("p{i}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall_ms = t0.elapsed().as_millis();
    let busy_ms = cpu_busy_ms() - busy0;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    for pod in cri.pods() {
        down(&pod);
    }
    println!("pods: one pod up {one_ms} ms (host CPU busy meanwhile {one_busy_ms} ms)");
    println!("pods: its container added to the pod's VM in {added_ms} ms (the shim's log)");
    println!(
        "pods: {n} pods at once: wall {wall_ms} ms ({:.2} x one pod), failures {}",
        wall_ms as f64 / one_ms as f64,
        failures.len()
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "pods: host CPU busy meanwhile {busy_ms} ms of {} ms ({cores} cores x wall)",
        wall_ms as u64 * cores as u64
    );
    for f in failures {
        println!("pods: failure: {f}");
    }
}

/// The host's CPU time spent busy (all cores, all processes) so far, from /proc/stat.
fn cpu_busy_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    // USER_HZ is 100 on Linux.
    busy * 10
}
