//! Watches in a container root of the test's own: envd's event kinds, a recursive watch
//! following a new directory, paths kept in the root, permissions, the overflow rule.

use super::super::tests::{req, tree};
use super::super::{serve_in, FsOp, FsReply, FsResult, Root};
use super::*;

/// Every event of watch `id` until `done` says enough arrived (or a minute passed).
fn watch_until(id: u64, done: impl Fn(&[fcvm_proto::FsEvent]) -> bool) -> Vec<fcvm_proto::FsEvent> {
    let mut all = Vec::new();
    let t0 = std::time::Instant::now();
    while !done(&all) && t0.elapsed().as_secs() < 60 {
        match events(id, 200).unwrap() {
            FsReply::Events { events, .. } => all.extend(events),
            other => panic!("{other:?}"),
        }
    }
    all
}

fn watching(r: &Root, user: &str, path: &str, recursive: bool) -> FsResult<u64> {
    let op = FsOp::Watch {
        path: path.into(),
        recursive,
    };
    match serve_in(r, &req(user, op))? {
        FsReply::Watching { id } => Ok(id),
        other => panic!("{other:?}"),
    }
}

/// A watch reports envd's five kinds of event with names relative to the watched directory;
/// a recursive one follows a directory created after it started; unwatch ends it.
#[test]
fn a_watch_reports_changes_under_it() {
    use fcvm_proto::{FsEvent, FsEventKind::*};
    use std::os::unix::fs::PermissionsExt;
    let (t, r) = tree("watch");
    let dir = t.0.join("root/home/user");
    let id = watching(&r, "user", ".", true).unwrap();
    std::fs::write(dir.join("a"), b"x").unwrap();
    std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(dir.join("a"), dir.join("b")).unwrap();
    std::fs::remove_file(dir.join("b")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let ev = |name: &str, kind| FsEvent {
        name: name.into(),
        kind,
    };
    let seen = watch_until(id, |e| e.iter().any(|e| e.name == "sub"));
    for want in [
        ev("a", Create),
        ev("a", Write),
        ev("a", Chmod),
        ev("a", Rename),
        ev("b", Create),
        ev("b", Remove),
        ev("sub", Create),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    // The new directory is watched by now: what happens in it is reported.
    std::fs::write(dir.join("sub/deep"), b"y").unwrap();
    let seen = watch_until(id, |e| e.iter().any(|e| e.name == "sub/deep"));
    assert!(seen.contains(&ev("sub/deep", Create)), "{seen:?}");
    assert_eq!(unwatch(id).unwrap(), FsReply::Done);
    assert_eq!(events(id, 0).unwrap_err().kind, FsErrorKind::NotFound);
    assert_eq!(unwatch(id).unwrap_err().kind, FsErrorKind::NotFound);
}

/// A watch resolves its path inside the root like any request, needs a directory, and checks
/// the user's permission to read it.
#[test]
fn a_watch_stays_in_the_root_and_needs_a_readable_directory() {
    let (t, r) = tree("watch-root");
    // /tmp/up is "../..": the container's /, never the host's directory above it.
    let id = watching(&r, "", "/tmp/up", false).unwrap();
    std::fs::write(t.0.join("outside"), b"x").unwrap();
    std::fs::write(t.0.join("root/inside"), b"x").unwrap();
    let seen = watch_until(id, |e| e.iter().any(|e| e.name == "inside"));
    assert!(seen.iter().all(|e| e.name != "outside"), "{seen:?}");
    assert!(seen.iter().any(|e| e.name == "inside"), "{seen:?}");
    unwatch(id).unwrap();
    let e = watching(&r, "", "/etc/passwd", false).unwrap_err();
    assert_eq!(e.kind, FsErrorKind::NotADirectory, "{}", e.message);
    assert_eq!(
        watching(&r, "", "/nope", false).unwrap_err().kind,
        FsErrorKind::NotFound
    );
    std::fs::create_dir(t.0.join("root/private")).unwrap();
    std::fs::set_permissions(
        t.0.join("root/private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    assert_eq!(
        watching(&r, "user", "/private", false).unwrap_err().kind,
        FsErrorKind::PermissionDenied
    );
}

/// More unread events than a watch holds: the events it held come out, flagged, and the watch
/// is gone.
#[test]
fn an_overflowing_watch_ends() {
    let (t, r) = tree("watch-overflow");
    let id = watching(&r, "", "/tmp", false).unwrap();
    let name = "x".repeat(200);
    let n = fcvm_proto::MAX_WATCH_BYTES / (name.len() + 16) + 10;
    for i in 0..n / 2 + 1 {
        // create + write: two events each
        std::fs::write(t.0.join(format!("root/tmp/{name}{i:05}")), b"x").unwrap();
    }
    // The watch's thread reads inotify on its own time: on a loaded host it may still be
    // behind the writes, and reading now would make room it then fills. Let it catch up.
    let t0 = std::time::Instant::now();
    while !has_overflowed(id) && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (mut got, mut overflowed) = (0, false);
    let t0 = std::time::Instant::now();
    while !overflowed && t0.elapsed().as_secs() < 60 {
        match events(id, 500).unwrap() {
            FsReply::Events {
                events,
                overflowed: o,
                ..
            } => {
                got += events.len();
                overflowed = o;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(overflowed, "no overflow after {got} events");
    assert!(got < n && got > n / 2, "{got} of {n}");
    assert_eq!(events(id, 0).unwrap_err().kind, FsErrorKind::NotFound);
}
