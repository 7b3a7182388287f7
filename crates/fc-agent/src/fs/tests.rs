//! The container's root keeps every path inside it: symlinks (absolute, relative, climbing),
//! `..`, and the operations on names.

use super::*;
use fcvm_proto::FsKind;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

pub(super) struct Tree(pub(super) PathBuf);

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A container root whose symlinks all aim outside it, next to a "VM file" it must not reach.
pub(super) fn tree(tag: &str) -> (Tree, Root) {
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

pub(super) fn req(user: &str, op: FsOp) -> FsRequest {
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
