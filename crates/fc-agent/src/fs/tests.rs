//! The container's root keeps every path inside it: symlinks (absolute, relative, climbing),
//! `..`, and the operations on names.

use super::*;
use fcvm_proto::FsKind;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

struct Tree(PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A container root whose symlinks all aim outside it, next to a "VM file" it must not reach.
fn tree(tag: &str) -> (Tree, Root) {
    let base = std::env::temp_dir().join(format!("fc-agent-fs-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    for d in ["etc", "home/user", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(base.join("secret"), b"the VM's file").unwrap();
    std::fs::write(root.join("etc/secret"), b"the container's file").unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000)).unwrap();
    let host_secret = base.join("secret");
    symlink(&host_secret, root.join("tmp/abs")).unwrap();
    symlink("/etc/secret", root.join("tmp/abs-inside")).unwrap();
    symlink("../../../../../../secret", root.join("tmp/climb")).unwrap();
    symlink("../..", root.join("tmp/up")).unwrap();
    symlink("/proc/self/root/etc/hostname", root.join("tmp/magic")).unwrap();
    let r = Root::open(root.to_str().unwrap()).unwrap();
    (Tree(base), r)
}

fn req(user: &str, op: FsOp) -> FsRequest {
    FsRequest {
        user: user.into(),
        op,
    }
}

fn read(r: &Root, path: &str) -> FsResult<Vec<u8>> {
    let op = FsOp::Read {
        path: path.into(),
        offset: 0,
        len: MAX_CHUNK as u32,
    };
    match serve_in(r, &req("", op))? {
        FsReply::Data { data, eof: true } => Ok(data),
        other => panic!("{other:?}"),
    }
}

#[test]
fn symlinks_and_dots_never_leave_the_root() {
    let (_t, r) = tree("escape");
    let inside = b"the container's file".to_vec();
    assert_eq!(read(&r, "/etc/secret").unwrap(), inside);
    // An absolute target is the container's path (the VM's /tmp/... does not exist inside).
    assert_eq!(
        read(&r, "/tmp/abs").unwrap_err().kind,
        FsErrorKind::NotFound
    );
    assert_eq!(read(&r, "/tmp/abs-inside").unwrap(), inside);
    // `..` in a link stops at the root: ../../secret is the container's /secret.
    assert_eq!(
        read(&r, "/tmp/climb").unwrap_err().kind,
        FsErrorKind::NotFound
    );
    assert_eq!(read(&r, "/tmp/up/etc/secret").unwrap(), inside);
    assert_eq!(read(&r, "/../../etc/secret").unwrap(), inside);
    // No magic link through a /proc.
    assert!(read(&r, "/tmp/magic").is_err());
    // Writing through a link that aims out writes inside.
    let w = FsOp::Write {
        path: "/tmp/climb".into(),
        offset: 0,
        data: b"x".to_vec(),
        truncate: true,
    };
    serve_in(&r, &req("", w)).unwrap();
    assert_eq!(read(&r, "/secret").unwrap(), b"x");
    assert_eq!(
        std::fs::read(_t.0.join("secret")).unwrap(),
        b"the VM's file"
    );
}

#[test]
fn write_read_list_move_remove() {
    let (t, r) = tree("ops");
    let big: Vec<u8> = (0..MAX_CHUNK + 10).map(|i| i as u8).collect();
    for (off, chunk) in [(0, &big[..MAX_CHUNK]), (MAX_CHUNK, &big[MAX_CHUNK..])] {
        let op = FsOp::Write {
            path: "d/e/f.bin".into(),
            offset: off as u64,
            data: chunk.to_vec(),
            truncate: off == 0,
        };
        let FsReply::Entry(e) = serve_in(&r, &req("user", op)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (e.path.as_str(), e.owner.as_str()),
            ("/home/user/d/e/f.bin", "user")
        );
    }
    let meta = std::fs::metadata(t.0.join("root/home/user/d/e/f.bin")).unwrap();
    assert_eq!(meta.len(), big.len() as u64);
    let op = FsOp::Read {
        path: "/home/user/d/e/f.bin".into(),
        offset: MAX_CHUNK as u64,
        len: 100,
    };
    assert_eq!(
        serve_in(&r, &req("", op)).unwrap(),
        FsReply::Data {
            data: big[MAX_CHUNK..].to_vec(),
            eof: true
        }
    );
    let list = |depth| match serve_in(
        &r,
        &req(
            "",
            FsOp::List {
                path: "/home/user".into(),
                depth,
                skip: 0,
            },
        ),
    )
    .unwrap()
    {
        FsReply::Entries {
            entries,
            more: false,
        } => entries
            .into_iter()
            .map(|e| (e.path, e.kind))
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(list(1), [("/home/user/d".to_string(), FsKind::Dir)]);
    assert_eq!(list(3).len(), 3);
    let mk = |p: &str| serve_in(&r, &req("", FsOp::MakeDir { path: p.into() }));
    assert!(mk("/a/b/c").is_ok());
    assert_eq!(mk("/a/b").unwrap_err().kind, FsErrorKind::Exists);
    assert_eq!(
        mk("/etc/passwd/x").unwrap_err().kind,
        FsErrorKind::NotADirectory
    );
    let mv = FsOp::Move {
        from: "/home/user/d".into(),
        to: "/a/b/c/moved".into(),
    };
    serve_in(&r, &req("", mv)).unwrap();
    assert!(t.0.join("root/a/b/c/moved/e/f.bin").exists());
    // Removing a link removes the link, never what it names.
    serve_in(
        &r,
        &req(
            "",
            FsOp::Remove {
                path: "/tmp/up".into(),
            },
        ),
    )
    .unwrap();
    assert!(t.0.join("root/etc/secret").exists());
    serve_in(&r, &req("", FsOp::Remove { path: "/a".into() })).unwrap();
    assert!(!t.0.join("root/a").exists());
    let stat = |p: &str| serve_in(&r, &req("", FsOp::Stat { path: p.into() }));
    assert_eq!(stat("/a").unwrap_err().kind, FsErrorKind::NotFound);
    let FsReply::Entry(e) = stat("/tmp/abs-inside").unwrap() else {
        panic!()
    };
    assert_eq!(
        (e.kind, e.symlink_target.as_deref()),
        (FsKind::File, Some("/etc/secret"))
    );
    assert_eq!(
        serve_in(&r, &req("", FsOp::Remove { path: "/".into() }))
            .unwrap_err()
            .kind,
        FsErrorKind::Invalid
    );
    assert_eq!(
        serve_in(&r, &req("nobody", FsOp::Stat { path: "/".into() }))
            .unwrap_err()
            .kind,
        FsErrorKind::Invalid
    );
}

/// A user's request is checked as that user: root's files stay root's.
#[test]
fn a_users_request_has_the_users_permissions() {
    let (t, r) = tree("perm");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        t.0.join("root/etc/secret"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let op = FsOp::Read {
        path: "/etc/secret".into(),
        offset: 0,
        len: 10,
    };
    assert_eq!(
        serve_in(&r, &req("user", op)).unwrap_err().kind,
        FsErrorKind::PermissionDenied
    );
    let op = FsOp::Write {
        path: "/etc/new".into(),
        offset: 0,
        data: vec![1],
        truncate: true,
    };
    assert_eq!(
        serve_in(&r, &req("user", op)).unwrap_err().kind,
        FsErrorKind::PermissionDenied
    );
    // And the thread is root again afterwards.
    assert!(read(&r, "/etc/secret").is_ok());
}

#[test]
fn paths_are_cleaned_lexically() {
    assert_eq!(
        clean("/home/u", "a/../b/./c").unwrap(),
        ["home", "u", "b", "c"]
    );
    assert_eq!(clean("/", "/../../x").unwrap(), ["x"]);
    assert!(clean("/", "/").unwrap().is_empty());
    assert_eq!(clean("/", "").unwrap_err().kind, FsErrorKind::Invalid);
}

/// Every event of watch `id` until `done` says enough arrived (or a minute passed).
fn watch_until(id: u64, done: impl Fn(&[fcvm_proto::FsEvent]) -> bool) -> Vec<fcvm_proto::FsEvent> {
    let mut all = Vec::new();
    let t0 = std::time::Instant::now();
    while !done(&all) && t0.elapsed().as_secs() < 60 {
        match watch::events(id, 200).unwrap() {
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
    assert_eq!(watch::unwatch(id).unwrap(), FsReply::Done);
    assert_eq!(
        watch::events(id, 0).unwrap_err().kind,
        FsErrorKind::NotFound
    );
    assert_eq!(watch::unwatch(id).unwrap_err().kind, FsErrorKind::NotFound);
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
    watch::unwatch(id).unwrap();
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
    let (mut got, mut overflowed) = (0, false);
    let t0 = std::time::Instant::now();
    while !overflowed && t0.elapsed().as_secs() < 60 {
        match watch::events(id, 500).unwrap() {
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
    assert_eq!(
        watch::events(id, 0).unwrap_err().kind,
        FsErrorKind::NotFound
    );
}
