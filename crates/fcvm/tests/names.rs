//! Every command that takes a VM or snapshot name checks it before it touches anything.
//!
//! Plan (no VM needed): a private data directory `<tmp>/d/data` with, beside it, planted
//! directories that look like snapshots (a `manifest.json` inside) and a VM. Each command is
//! given a name that would lead outside the data directory (`../../x`, an absolute path,
//! `../x`) or could pass for an option; each must exit 125 with one line naming the bad
//! value, print nothing on stdout, and leave the planted directories as they were.

mod common;

use std::path::Path;
use std::process::Command;

use common::text;

fn fcvm(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fcvm"));
    c.env("FCVM_DATA_DIR", data).env("FCVM_QUIET", "1");
    c
}

/// `d/x` and `d/abs`, each a complete-looking snapshot directory.
fn plant(d: &Path) {
    for dir in [d.join("x"), d.join("abs")] {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("manifest.json"), b"{\"secret\": 1}").unwrap();
    }
}

fn assert_planted(d: &Path) {
    for dir in [d.join("x"), d.join("abs")] {
        assert_eq!(
            std::fs::read(dir.join("manifest.json")).unwrap(),
            b"{\"secret\": 1}",
            "{} was touched",
            dir.display()
        );
    }
}

#[test]
fn names_leading_out_of_the_data_dir_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    let data = d.join("data");
    std::fs::create_dir_all(data.join("snapshots")).unwrap();
    std::fs::create_dir_all(data.join("vms")).unwrap();
    plant(&d);
    let abs = d.join("abs").display().to_string();
    let cases: &[(&[&str], &str)] = &[
        // snapshots/../../x is d/x: `snapshot rm` used to delete it.
        (&["snapshot", "rm", "../../x"], "../../x"),
        (&["snapshot", "rm", "ok", "../../x"], "../../x"),
        // An absolute name replaced the whole path: its manifest was read.
        (&["snapshot", "run", &abs], &abs),
        (&["snapshot", "run", "/etc"], "/etc"),
        (&["snapshot", "run", "ok", "--name", "../x"], "../x"),
        (&["snapshot", "create", "../x", "--tag", "t"], "../x"),
        (&["snapshot", "create", "vm", "--tag", "../../x"], "../../x"),
        (&["rm", "../x"], "../x"),
        (&["rm", "--force", "ok", "/"], "/"),
        (&["logs", "../x"], "../x"),
        (&["exec", "--name", "../x", "--", "true"], "../x"),
        (&["exec", "--name", "-x", "--", "true"], "-x"),
        (
            &["podman", "run", "--name", "a/b", "builtin:busybox", "true"],
            "a/b",
        ),
    ];
    for (args, bad) in cases {
        let out = fcvm(&data).args(*args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("Error: ") && err.contains("Invalid name") && err.contains(*bad),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("secret"),
            "{args:?} read a planted file: {err}"
        );
        assert_eq!(text(&out.stdout), "", "{args:?}");
        assert_planted(&d);
    }
    // Nothing was created in the data directory either.
    for sub in ["snapshots", "vms"] {
        assert_eq!(
            std::fs::read_dir(data.join(sub)).unwrap().count(),
            0,
            "{sub}"
        );
    }
}

#[test]
fn valid_names_still_reach_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for (args, want) in [
        (&["snapshot", "rm", "no-such-snap"][..], "No snapshot named"),
        (&["rm", "no-such-vm"][..], "No VM named"),
        (&["logs", "no-such-vm"][..], "No VM named"),
    ] {
        let out = fcvm(&data).args(args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
