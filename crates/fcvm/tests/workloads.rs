//! Flags for real workloads, end to end with real QEMU VMs, the real agent and crun on the
//! built-in busybox image.
//!
//! Plan: `--rootfs-size` gives the container a writable layer of that size that really takes
//! 2 GiB of writes (and bad sizes exit 125 leaving nothing).

mod common;

use std::time::Duration;

use common::*;

const IMG: &str = "builtin:busybox";

fn run_ok(args: &[&str]) -> (i32, String, String) {
    let out = run(args, BOOT);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// A 5G writable layer holds 2 GiB of real data (written, synced and counted in blocks, not
/// a sparse size), and `df` shows its size.
#[test]
fn rootfs_size_gives_room_to_write() {
    let n = name("rootfs");
    let (code, out, err) = run_ok(&[
        "podman",
        "run",
        "--name",
        &n,
        "--rootfs-size",
        "5G",
        IMG,
        "sh",
        "-c",
        "df -m / | tail -1 | awk '{print $2}'; \
         dd if=/dev/zero of=/big bs=1M count=2048 2>/dev/null && sync && du -m /big",
    ]);
    assert_eq!(code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    let size: u64 = lines[0].trim().parse().expect("df size");
    assert!((4800..=5120).contains(&size), "df: {out}");
    // du counts the blocks the file takes, its extent tree's included: 2048 MiB or a bit more.
    let used: u64 = lines[1]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .expect("du");
    assert!((2048..2060).contains(&used), "{out}");
    assert_gone(&n, None);
}

#[test]
fn bad_rootfs_size_exits_125_and_creates_nothing() {
    for (i, bad) in ["0", "garbage", "12Q", "1M"].iter().enumerate() {
        let n = name(&format!("badsize{i}"));
        let out = run(
            &[
                "podman",
                "run",
                "--name",
                &n,
                "--rootfs-size",
                bad,
                IMG,
                "true",
            ],
            Duration::from_secs(60),
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{bad}: {err}");
        assert!(err.contains("--rootfs-size"), "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(vm(&n).is_none(), "{bad} left a VM record");
    }
}
