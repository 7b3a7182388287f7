//! The protobuf codec against bytes the E2B SDK's own generated classes (protobuf-py, from
//! envd's .proto files) produce for the same messages: requests decode to what the JSON
//! codec gives, replies encode to the SDK's bytes exactly.

use super::*;
use connect::Codec;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn proto<T: Wire>(h: &str) -> T {
    connect::decode(Codec::Proto, &hex(h)).unwrap()
}

#[test]
fn requests_decode_from_the_sdks_bytes() {
    // StartRequest(process=ProcessConfig(cmd="/bin/bash", args=["-l","-c","echo hi"],
    // envs={"A":"1"}, cwd="/tmp"), pty=PTY(size=Size(cols=80, rows=24)), tag="t", stdin=False)
    let r: pb::StartRequest = proto("0a2a0a092f62696e2f6261736812022d6c12022d6312076563686f2068691a060a014112013122042f746d7012060a04085010181a01742000");
    let p = r.process.unwrap();
    assert_eq!(
        (p.cmd.as_str(), p.args.as_slice(), p.cwd.as_deref()),
        (
            "/bin/bash",
            &["-l", "-c", "echo hi"].map(String::from)[..],
            Some("/tmp")
        )
    );
    assert_eq!(p.envs["A"], "1");
    let size = r.pty.unwrap().size.unwrap();
    assert_eq!((size.cols, size.rows), (80, 24));
    assert_eq!((r.tag.as_deref(), r.stdin), (Some("t"), Some(false)));

    // SendSignalRequest(process=ProcessSelector(pid=12), signal=SIGKILL)
    let r: pb::SendSignalRequest = proto("0a02080c1009");
    assert_eq!(
        (r.process.unwrap().pid, r.signal),
        (Some(12), pb::Signal(9))
    );

    // StreamInputRequest(data=DataEvent(input=ProcessInput(stdin=b"hi")))
    let r: pb::StreamInputRequest = proto("120612040a026869");
    let input = r.data.unwrap().input.unwrap();
    assert_eq!(input.stdin, Some(pb::Bytes(b"hi".to_vec())));
    assert!(r.start.is_none());

    // CreateWatcherRequest(path="/tmp", recursive=True)
    let r: fspb::WatchRequest = proto("0a042f746d701001");
    assert_eq!((r.path.as_str(), r.recursive), ("/tmp", true));

    // Empty messages (ListRequest) and unknown fields.
    let _: pb::Empty = proto("");
    let r: fspb::PathRequest = proto("0a022f78a00601");
    assert_eq!(r.path, "/x");
}

fn encoded<T: Reply>(msg: &T) -> String {
    connect::encode(Codec::Proto, msg)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn replies_encode_to_the_sdks_bytes() {
    // StartResponse(event=ProcessEvent(end=EndEvent(exit_code=-1, exited=False,
    // status="signal: killed"))): exit_code is a sint32.
    let end = pb::Event::End(pb::End {
        exit_code: -1,
        exited: false,
        status: "signal: killed".into(),
        error: None,
    });
    assert_eq!(
        encoded(&pb::EventResponse { event: &end }),
        "0a141a1208011a0e7369676e616c3a206b696c6c6564"
    );
    let out = pb::Event::Data(pb::Data::Stdout(pb::Bytes(b"hi\n".to_vec())));
    assert_eq!(
        encoded(&pb::EventResponse { event: &out }),
        "0a0712050a0368690a"
    );
    // StatResponse(entry=EntryInfo(name="a", type=FILE, path="/a", size=3, mode=0o644,
    // permissions="-rw-r--r--", owner="root", group="root",
    // modified_time=Timestamp(seconds=1704067200, nanos=5)))
    let entry = fspb::EntryInfo {
        name: "a".into(),
        file_type: "FILE_TYPE_FILE",
        path: "/a".into(),
        size: "3".into(),
        mode: 0o644,
        permissions: "-rw-r--r--".into(),
        owner: "root".into(),
        group: "root".into(),
        modified_time: String::new(),
        mtime: (1_704_067_200, 5),
        symlink_target: None,
        is_symlink: false,
    };
    assert_eq!(
        encoded(&fspb::EntryResponse { entry }),
        "0a300a016110011a022f61200328a403320a2d72772d722d2d722d2d3a04726f6f744204726f6f744a08088081c8ac061005"
    );
    // WatchDirResponse(filesystem=FilesystemEvent(name="sub/a", type=CHMOD)), and start.
    let ev = fspb::WatchDirEvent::Filesystem(fspb::FilesystemEvent {
        name: "sub/a".into(),
        kind: fspb::EventType::Chmod,
    });
    assert_eq!(
        encoded(&fspb::WatchDirResponse { event: &ev }),
        "12090a057375622f611005"
    );
    let start = fspb::WatchDirEvent::Start {};
    assert_eq!(encoded(&fspb::WatchDirResponse { event: &start }), "0a00");
    assert_eq!(encoded(&pb::Empty {}), "");
}
