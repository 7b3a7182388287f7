use super::*;

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
    let p = plan(&ctr_spec(serde_json::json!({})), true).unwrap();
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
    let p = plan(&s, false).unwrap();
    assert_eq!((p.cpus, p.mem_mib), (2, 300));
    let s = ctr_spec(serde_json::json!({"linux": {"resources": {"memory": {"limit": 1 << 20}}}}));
    let e = plan(&s, false).unwrap_err().to_string();
    assert!(e.contains("memory.limit"), "{e}");
}

#[test]
fn what_fcvm_cannot_honour_is_refused() {
    let cases = [
        (
            serde_json::json!({"mounts": [{"destination": "/data", "type": "bind",
                "source": "/srv/data", "options": ["rbind"]}]}),
            "fcvm cannot honour mount /data (bind from /srv/data): \
             host paths and extra file systems cannot reach the VM",
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
        let e = plan(&ctr_spec(extra), false).unwrap_err();
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
    let p = plan(&s, true).unwrap();
    assert!(p.privileged && p.process.privileged && p.process.tty);
    assert_eq!((p.process.rows, p.process.cols), (40, 120));
}
