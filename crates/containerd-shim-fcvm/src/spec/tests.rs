use super::*;
use crate::pod::Role;

/// The spec `ctr run` writes for a plain container (trimmed to what matters here).
fn ctr_spec(extra: serde_json::Value) -> Spec {
    let mut v = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 1000, "gid": 100, "additionalGids": [0, 10]},
            "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/bin", "A=b"],
            "cwd": "/tmp",
            "capabilities": {"bounding": ["CAP_CHOWN"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs"},
        "hostname": "h1",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            {"destination": "/run", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}]
        }
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

/// Objects merge key by key; anything else (arrays included) is replaced whole.
fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

#[test]
fn a_plain_ctr_spec_is_honoured() {
    let p = plan(&ctr_spec(serde_json::json!({})), true, &Role::Alone).unwrap();
    assert_eq!(p.process.args, ["sh", "-c", "echo hi"]);
    assert_eq!(p.process.env, ["PATH=/bin", "A=b"]);
    assert_eq!(p.process.cwd, "/tmp");
    assert_eq!(p.process.user, "1000:100");
    assert!(p.process.stdin && !p.process.tty && !p.privileged);
    assert_eq!((p.cpus, p.mem_mib), (DEFAULT_CPUS, DEFAULT_MEM_MIB));
    assert_eq!(p.hostname, "h1");
}

#[test]
fn limits_size_the_vm() {
    let s = ctr_spec(serde_json::json!({"linux": {"resources": {
        "memory": {"limit": 300u64 << 20},
        "cpu": {"quota": 150000, "period": 100000}
    }}}));
    let p = plan(&s, false, &Role::Alone).unwrap();
    assert_eq!((p.cpus, p.mem_mib), (2, 300));
    let s = ctr_spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 1 << 20}}}}));
    let e = plan(&s, false, &Role::Alone).unwrap_err().to_string();
    assert!(e.contains("memory.limit"), "{e}");
}

#[test]
fn what_fcvm_cannot_honour_is_refused() {
    let cases = [
        (
            serde_json::json!({"mounts": [{"destination": "/data", "type": "bind",
                "source": "/srv/no-such-data", "options": ["rbind"]}]}),
            "fcvm cannot honour mount /data (bind from /srv/no-such-data): \
             the source does not exist",
        ),
        (
            serde_json::json!({"mounts": [{"destination": "/data", "type": "tmpfs",
                "source": "tmpfs"}]}),
            "fcvm cannot honour mount /data (tmpfs from tmpfs): \
             only binds of host directories reach the VM (no other file system)",
        ),
        (
            serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}}),
            "fcvm cannot honour host network (no network namespace): a VM has its own network",
        ),
        (
            serde_json::json!({"linux": {"namespaces": [
                {"type": "network", "path": "/proc/1/ns/net"}]}}),
            "fcvm cannot honour linux.namespaces Network path /proc/1/ns/net: \
             a VM cannot join another process's namespace",
        ),
        (
            serde_json::json!({"linux": {"resources": {"pids": {"limit": 10}}}}),
            "fcvm cannot honour linux.resources.pids: \
             only memory.limit and cpu quota/period size the VM",
        ),
        (
            serde_json::json!({"root": {"path": "rootfs", "readonly": true}}),
            "fcvm cannot honour root.readonly: \
             the container's root is always writable (an overlay in the VM)",
        ),
        (
            serde_json::json!({"linux": {"devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}}),
            "fcvm cannot honour device /dev/fuse: host devices cannot reach the VM",
        ),
    ];
    for (extra, want) in cases {
        let e = plan(&ctr_spec(extra), false, &Role::Alone).unwrap_err();
        assert_eq!(e.to_string(), want);
    }
}

#[test]
fn privileged_and_terminal() {
    let s = ctr_spec(serde_json::json!({"process": {
        "terminal": true,
        "consoleSize": {"height": 40, "width": 120},
        "capabilities": {"bounding": ["CAP_SYS_ADMIN"]}
    }}));
    let p = plan(&s, true, &Role::Alone).unwrap();
    assert!(p.privileged && p.process.privileged && p.process.tty);
    assert_eq!((p.process.rows, p.process.cols), (40, 120));
}

/// What containerd's CRI plugin adds to a pod's containers: its shared /dev/shm and its DNS
/// and name files as bind mounts, and (members) the sandbox's namespaces by path.
fn cri_spec(member: bool, extra: serde_json::Value) -> Spec {
    let ns = if member {
        serde_json::json!([{"type": "pid"}, {"type": "mount"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "uts", "path": "/proc/42/ns/uts"},
            {"type": "network", "path": "/proc/42/ns/net"}])
    } else {
        // The node's network option: no network namespace of its own.
        serde_json::json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}])
    };
    let mut v = serde_json::json!({
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/x/shm",
             "options": ["rbind", "ro"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/x/resolv.conf",
             "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/x/hosts",
             "options": ["rbind", "rw"]}
        ],
        "linux": {"namespaces": ns, "resources": {"cpu": {"shares": 2}}}
    });
    merge(&mut v, extra);
    ctr_spec(v)
}

#[test]
fn a_pods_cri_specs_are_honoured() {
    let sandbox = plan(
        &cri_spec(false, serde_json::json!({})),
        false,
        &Role::Sandbox,
    )
    .unwrap();
    assert_eq!(sandbox.mem_mib, DEFAULT_MEM_MIB);
    let member = Role::Member {
        sandbox: "s1".into(),
    };
    let p = plan(&cri_spec(true, serde_json::json!({})), false, &member).unwrap();
    assert_eq!(p.process.args, ["sh", "-c", "echo hi"]);
    // A lone container with the same spec asks for what a VM cannot do.
    let e = plan(&cri_spec(true, serde_json::json!({})), false, &Role::Alone).unwrap_err();
    assert!(e.to_string().contains("mount /dev/shm"), "{e}");
}

#[test]
fn what_a_pod_cannot_have_is_refused() {
    let member = Role::Member {
        sandbox: "s1".into(),
    };
    let cases = [
        (
            Role::Sandbox,
            cri_spec(
                false,
                serde_json::json!({"linux": {"namespaces": [
                    {"type": "network", "path": "/var/run/netns/cni-1"}]}}),
            ),
            "fcvm cannot honour linux.namespaces Network path /var/run/netns/cni-1: a pod's \
             network is its VM's; a CNI network namespace is not carried into the VM \
             (use the node network option)",
        ),
        (
            member.clone(),
            cri_spec(
                true,
                serde_json::json!({"linux": {"namespaces": [
                    {"type": "pid", "path": "/proc/42/ns/pid"}]}}),
            ),
            "fcvm cannot honour linux.namespaces Pid path /proc/42/ns/pid: a pod's shared \
             PID namespace is not supported (each container has its own)",
        ),
        (
            member.clone(),
            cri_spec(
                true,
                serde_json::json!({"linux": {"resources": {"memory": {"limit": 300u64 << 20}}}}),
            ),
            "fcvm cannot honour linux.resources.memory.limit: a pod's containers share the VM \
             its sandbox sized; one container's limit cannot be applied in it",
        ),
        (
            member.clone(),
            cri_spec(
                true,
                serde_json::json!({"mounts": [{"destination": "/data", "type": "bind",
                    "source": "/srv/no-such-data", "options": ["rbind"]}]}),
            ),
            "fcvm cannot honour mount /data (bind from /srv/no-such-data): \
             the source does not exist",
        ),
        (
            member.clone(),
            cri_spec(
                true,
                serde_json::json!({"mounts": [{"destination": "/data", "type": "tmpfs",
                    "source": "tmpfs"}]}),
            ),
            "fcvm cannot honour mount /data (tmpfs from tmpfs): \
             only binds of host directories reach the VM (no other file system)",
        ),
        (
            Role::Sandbox,
            cri_spec(
                false,
                serde_json::json!({"mounts": [{"destination": "/data", "type": "bind",
                    "source": "/", "options": ["rbind"]}]}),
            ),
            "fcvm cannot honour mount /data (bind from /): \
             a pod's sandbox container takes no host paths or extra file systems",
        ),
    ];
    for (role, spec, want) in cases {
        assert_eq!(plan(&spec, false, &role).unwrap_err().to_string(), want);
    }
}

#[test]
fn roles_come_from_the_cri_annotations() {
    let with = |a: serde_json::Value| ctr_spec(serde_json::json!({ "annotations": a }));
    assert_eq!(
        crate::pod::role(&ctr_spec(serde_json::json!({}))),
        Role::Alone
    );
    let s = with(serde_json::json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": "abc"}));
    assert_eq!(crate::pod::role(&s), Role::Sandbox);
    let s = with(serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "abc"}));
    assert_eq!(
        crate::pod::role(&s),
        Role::Member {
            sandbox: "abc".into()
        }
    );
}

/// A pod member's binds of host directories become [`Map`]s (read-only when asked, in
/// the spec's order); a file, a bad destination, propagation and unknown options are
/// refused; a lone container's are planned alike.
#[test]
fn a_members_binds_of_host_directories_are_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let (data, conf) = (dir.path().join("data"), dir.path().join("conf"));
    std::fs::create_dir(&data).unwrap();
    std::fs::create_dir(&conf).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let member = Role::Member {
        sandbox: "s1".into(),
    };
    let with = |mounts: serde_json::Value| {
        let mut s = cri_spec(true, serde_json::json!({}));
        let mut all = s.mounts().clone().unwrap();
        all.extend(serde_json::from_value::<Vec<oci_spec::runtime::Mount>>(mounts).unwrap());
        s.set_mounts(Some(all));
        s
    };
    // Destinations come out cleaned.
    let s = with(serde_json::json!([
        {"destination": "/data", "type": "bind", "source": data,
         "options": ["rbind", "rprivate", "rw"]},
        {"destination": "/etc//conf/", "source": conf, "options": ["rbind", "ro", "nosuid"]}
    ]));
    let p = plan(&s, false, &member).unwrap();
    let bind = |host: &std::path::Path, guest: &str, read_only| Map {
        host: host.to_path_buf(),
        guest: guest.into(),
        read_only,
    };
    assert_eq!(
        p.binds,
        [bind(&data, "/data", false), bind(&conf, "/etc/conf", true)]
    );
    // The CRI's own files are still the VM's, not binds.
    assert!(plan(&cri_spec(true, serde_json::json!({})), false, &member)
        .unwrap()
        .binds
        .is_empty());
    let f = file.display();
    let d = data.display();
    let cases = [
        (
            serde_json::json!([{"destination": "/f", "type": "bind", "source": file,
                "options": ["rbind"]}]),
            format!(
                "mount /f (bind from {f}): only a host directory can be bound into the VM, \
                 not a file"
            ),
        ),
        (
            serde_json::json!([{"destination": "/a/../etc", "type": "bind", "source": data}]),
            format!(
                "mount /a/../etc (bind from {d}): the destination must be absolute, \
                 below / and without '..'"
            ),
        ),
        (
            serde_json::json!([{"destination": "/", "type": "bind", "source": data}]),
            format!(
                "mount / (bind from {d}): the destination must be absolute, \
                 below / and without '..'"
            ),
        ),
        (
            serde_json::json!([{"destination": "/d", "type": "bind", "source": data,
                "options": ["rbind", "rshared"]}]),
            format!(
                "mount /d (bind from {d}): option rshared: mount propagation cannot cross \
                 into the VM"
            ),
        ),
        (
            serde_json::json!([{"destination": "/d", "type": "bind", "source": data,
                "options": ["noexec"]}]),
            format!("mount /d (bind from {d}): option noexec (a bind of a host directory takes"),
        ),
        (
            serde_json::json!([{"destination": "/d", "type": "bind", "source": data},
                {"destination": "//d/./", "type": "bind", "source": data}]),
            format!("mount //d/./ (bind from {d}): another bind has this destination"),
        ),
    ];
    for (mounts, want) in cases {
        let e = plan(&with(mounts), false, &member).unwrap_err().to_string();
        let want = format!("fcvm cannot honour {want}");
        assert!(e.starts_with(&want), "{e}\n{want}");
    }
    let s = ctr_spec(
        serde_json::json!({"mounts": [{"destination": "/data", "type": "bind",
        "source": data, "options": ["rbind", "ro"]}]}),
    );
    let p = plan(&s, false, &Role::Alone).unwrap();
    assert_eq!(p.binds, [bind(&data, "/data", true)]);
}
