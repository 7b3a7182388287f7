//! The snapshot, rehydrate and restore steps driven through a test double of the [`Vmm`]
//! seam: the order of the verbs, that a failed step never leaves a VM paused or a helper
//! running, and that nothing half-written is published.

use std::path::Path;
use std::sync::Arc;

use super::{create, restore, Manifest, SnapshotError, SnapshotKind, RAM_FILE, RW_DISK};
use crate::paths::Dirs;
use crate::vmm::double::{Double, Journal};
use crate::vmm::{Accel, NetDev, Nic, VmSpec, Vmm, VmmError, VmmKind};

fn nm(s: &str) -> crate::vm::names::Name {
    crate::vm::names::Name::new(s).unwrap()
}

fn manifest(name: &str) -> Manifest {
    Manifest {
        maps: vec![],
        version: super::MANIFEST_VERSION,
        name: name.into(),
        kind: SnapshotKind::User,
        created_at: chrono::Utc::now(),
        key: None,
        source: "src".into(),
        backend: VmmKind::Qemu,
        accel: Accel::Tcg,
        cpus: 1,
        mem_mib: 1,
        kernel: "/k".into(),
        kernel_id: "k".into(),
        initramfs: "/i".into(),
        initramfs_id: "i".into(),
        protocol: Some(fcvm_proto::PROTOCOL_VERSION),
        image: "img".into(),
        image_digest: "d".into(),
        rootfs: "/r".into(),
        fstype: "erofs".into(),
        net_devices: true,
        container_running: true,
        container_env: vec![],
        files: vec![],
        disks: vec![],
        labels: Default::default(),
    }
}

fn source(journal: &Journal, dir: &Path, fail: Option<&'static str>) -> Double {
    let m = manifest("x");
    Double {
        label: "vm".into(),
        spec: m.vm_spec(dir, dir.join(RW_DISK), crate::vmm::Memory::Anonymous, None),
        journal: journal.clone(),
        fail,
    }
}

/// A `Boot` that starts doubles labelled "helper" and records the NIC they were given.
fn booter(journal: &Journal) -> impl Fn(&VmSpec) -> Result<Arc<dyn Vmm>, VmmError> + Sync {
    let journal = journal.clone();
    move |spec: &VmSpec| {
        let nic = spec.nic.as_ref().map(|n| format!("{:?}", n.netdev));
        journal.push(format!(
            "boot helper nic={nic:?} incoming={}",
            spec.incoming
        ));
        Ok(Arc::new(Double {
            label: "helper".into(),
            spec: spec.clone(),
            journal: journal.clone(),
            fail: None,
        }) as Arc<dyn Vmm>)
    }
}

fn setup(own_ram: bool) -> (tempfile::TempDir, Dirs, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path().join("data"));
    let vm_dir = t.path().join("vm");
    std::fs::create_dir_all(&vm_dir).unwrap();
    std::fs::write(vm_dir.join(RW_DISK), b"disk").unwrap();
    if own_ram {
        std::fs::write(vm_dir.join(RAM_FILE), b"ram").unwrap();
    }
    (t, dirs, vm_dir)
}

fn nic() -> Nic {
    Nic {
        netdev: NetDev::Tap {
            ifname: "fc0".into(),
        },
        mac: "02:fc:00:00:00:01".into(),
    }
}

#[tokio::test]
async fn a_vm_with_its_own_ram_is_paused_saved_copied_and_resumed() {
    let (_t, dirs, vm_dir) = setup(true);
    let j = Journal::default();
    let vm = source(&j, &vm_dir, None);
    let m = create::create(
        &dirs,
        &vm,
        &vm_dir,
        manifest("s1"),
        Some(&nic()),
        &booter(&j),
    )
    .await
    .unwrap();
    assert_eq!(j.entries(), ["vm: pause", "vm: save Devices", "vm: resume"]);
    let names: Vec<_> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["devstate", "ram", "rw.ext4"]);
    let d = super::dir(&dirs, &nm("s1"));
    assert_eq!(std::fs::read(d.join(RAM_FILE)).unwrap(), b"ram");
    assert!(
        super::load(&dirs, &nm("s1")).is_err(),
        "assets of the fake manifest are absent"
    );
    assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_failed_save_still_resumes_and_publishes_nothing() {
    let (_t, dirs, vm_dir) = setup(true);
    let j = Journal::default();
    let vm = source(&j, &vm_dir, Some("save"));
    let e = create::create(&dirs, &vm, &vm_dir, manifest("s2"), None, &booter(&j))
        .await
        .unwrap_err();
    assert_eq!(j.entries(), ["vm: pause", "vm: save Devices", "vm: resume"]);
    let text = format!("{e}");
    assert!(
        matches!(
            e,
            SnapshotError::Vmm {
                step: "saving the state",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("save said no"), "{text}");
    assert!(!super::dir(&dirs, &nm("s2")).exists());
    assert_eq!(std::fs::read_dir(dirs.tmp()).unwrap().count(), 0);
}

#[tokio::test]
async fn a_restored_vm_is_saved_whole_then_rehydrated_by_an_inert_helper() {
    let (_t, dirs, vm_dir) = setup(false);
    let j = Journal::default();
    let vm = source(&j, &vm_dir, None);
    create::create(
        &dirs,
        &vm,
        &vm_dir,
        manifest("s3"),
        Some(&nic()),
        &booter(&j),
    )
    .await
    .unwrap();
    assert_eq!(
        j.entries(),
        [
            "vm: pause",
            "vm: save WithRam",
            "vm: resume",
            "boot helper nic=Some(\"Inert\") incoming=true",
            "helper: load WithRam",
            "helper: save Devices",
            "helper: quit",
        ]
    );
    let d = super::dir(&dirs, &nm("s3"));
    assert!(!d.join(super::rehydrate::FULL_STREAM).exists());
    assert!(!d.join("helper").exists());
}

#[tokio::test]
async fn a_restore_whose_state_does_not_load_quits_its_vm() {
    let (t, _dirs, snap_dir) = setup(true);
    std::fs::write(snap_dir.join(super::DEVSTATE), b"state").unwrap();
    let j = Journal::default();
    let failing = {
        let j = j.clone();
        move |spec: &VmSpec| {
            Ok(Arc::new(Double {
                label: "restored".into(),
                spec: spec.clone(),
                journal: j.clone(),
                fail: Some("load"),
            }) as Arc<dyn Vmm>)
        }
    };
    let vm_dir = t.path().join("new");
    std::fs::create_dir_all(&vm_dir).unwrap();
    let r = restore::restore(
        &snap_dir,
        &manifest("s4"),
        &vm_dir,
        None,
        Default::default(),
        1,
        &failing,
    )
    .await;
    let Err(e) = r else { panic!("restored") };
    assert!(format!("{e}").contains("load said no"), "{e}");
    assert_eq!(j.entries(), ["restored: load Devices", "restored: quit"]);
}

#[tokio::test]
async fn extra_disks_are_copied_into_the_snapshot_and_attached_with_their_serials() {
    let (t, dirs, vm_dir) = setup(true);
    std::fs::write(vm_dir.join("disk0.img"), b"made here").unwrap();
    let host_file = t.path().join("user.img");
    std::fs::write(&host_file, b"the user's").unwrap();
    let mut m = manifest("s5");
    m.disks = vec![
        crate::disks::DiskRecord {
            file: "disk0.img".into(),
            guest: "/mnt/disk0".into(),
            host: None,
        },
        crate::disks::DiskRecord {
            file: "disk1.img".into(),
            guest: "/data".into(),
            host: Some(host_file.clone()),
        },
    ];
    let j = Journal::default();
    let vm = source(&j, &vm_dir, None);
    let m = create::create(&dirs, &vm, &vm_dir, m, None, &booter(&j))
        .await
        .unwrap();
    let names: Vec<_> = m.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        ["devstate", "ram", "rw.ext4", "disk0.img", "disk1.img"]
    );
    let d = super::dir(&dirs, &nm("s5"));
    assert_eq!(std::fs::read(d.join("disk0.img")).unwrap(), b"made here");
    assert_eq!(std::fs::read(d.join("disk1.img")).unwrap(), b"the user's");
    // The manifest names the files, never the host path.
    let text = std::fs::read_to_string(d.join(super::MANIFEST)).unwrap();
    assert!(
        text.contains("\"/data\"") && !text.contains("user.img"),
        "{text}"
    );
    let back: Manifest = serde_json::from_str(&text).unwrap();
    assert_eq!(back.disks[1].host, None);
    let spec = back.vm_spec(
        &vm_dir,
        vm_dir.join(RW_DISK),
        crate::vmm::Memory::Anonymous,
        None,
    );
    let extra: Vec<_> = spec.disks[2..]
        .iter()
        .map(|d| (d.path.clone(), d.serial.clone().unwrap(), d.read_only))
        .collect();
    assert_eq!(
        extra,
        [
            (vm_dir.join("disk0.img"), "fcvm-disk0".into(), false),
            (vm_dir.join("disk1.img"), "fcvm-disk1".into(), false),
        ]
    );
}

/// A manifest's recorded protocol: another one is refused before anything else is read; none
/// (a snapshot from before the record) or this build's goes on to the next checks (here: the
/// kernel "/k" is gone).
#[test]
fn a_snapshot_of_another_protocol_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let dirs = Dirs::new(t.path().join("data"));
    let n = nm("old");
    let d = super::dir(&dirs, &n);
    std::fs::create_dir_all(&d).unwrap();
    let ours = fcvm_proto::PROTOCOL_VERSION;
    for (protocol, refused) in [(Some(ours - 1), true), (None, false), (Some(ours), false)] {
        let mut m = manifest("old");
        m.protocol = protocol;
        std::fs::write(d.join(super::MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        match super::load(&dirs, &n) {
            Err(SnapshotError::Protocol(_, p)) => assert!(refused && Some(p) == protocol),
            Err(SnapshotError::AssetGone(..)) => assert!(!refused, "{protocol:?} not refused"),
            other => panic!("{protocol:?}: {other:?}"),
        }
    }
}
