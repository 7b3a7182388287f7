//! `fcvm podman run`: one container in one fresh VM.
//!
//! 1. Check every input before anything is created (name, env, memory, VMM binary).
//! 2. Guest assets and the image rootfs (both cached; built with progress on first use).
//! 3. VM directory + state.json (`starting`), a writable disk, the VMM.
//! 4. Session: Hello → HelloAck, Prepare → Prepared, Start{Container}.
//! 5. Stream output until `Exit`; Ctrl-C/SIGTERM stop the container, then the VM.
//! 6. `--rm` semantics: the VM and its directory are removed; the container's code is returned.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fcvm_proto::{ContainerPlan, Msg, ProcessSpec, Target};

use crate::attach::{attach, AttachOptions};
use crate::image::{ImageConfig, PullOptions};
use crate::paths::Dirs;
use crate::session::Session;
use crate::vm::{names, VmDir, VmState, VmStatus};
use crate::vmm::{self, Accel, Disk, VmSpec, VmmKind};

/// Smallest guest memory the kernel + initramfs + crun boot in (measured; see docs/run.md).
pub const MIN_MEM_MIB: u32 = 128;
/// Failure bound for a cold boot to the agent's HelloAck (TCG on 2 cores is the slow case).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub name: Option<String>,
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cpus: u32,
    pub mem_mib: u32,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub entrypoint: Option<String>,
    pub hostname: Option<String>,
    pub hypervisor: Option<VmmKind>,
    pub interactive: bool,
    pub tty: bool,
    pub pull: PullOptions,
    pub network: crate::network::NetworkOptions,
    pub health: crate::health::HealthFlags,
}

pub async fn run(dirs: &Dirs, opts: RunOptions) -> Result<i32> {
    // 1. Inputs first: a bad flag changes nothing.
    let env = parse_env(&opts.env)?;
    if opts.mem_mib < MIN_MEM_MIB {
        bail!(
            "--mem {} MiB is below the {MIN_MEM_MIB} MiB the guest needs",
            opts.mem_mib
        );
    }
    if opts.cpus == 0 {
        bail!("--cpu must be at least 1");
    }
    let kind = opts.hypervisor.unwrap_or(VmmKind::Qemu);
    let accel = Accel::detect();
    if kind == VmmKind::Firecracker && accel != Accel::Kvm {
        bail!(vmm::VmmError::NoKvm(kind));
    }
    vmm::qemu::find_binary()?;
    crate::network::check(&opts.network)?;
    let id = crate::vm::new_id();
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("fcvm-{}", &id[..8]));
    let _name_lock = names::claim(dirs, &name)?;

    // 2. Assets and image (cached).
    let d2 = dirs.clone();
    let assets = tokio::task::spawn_blocking(move || {
        crate::assets::ensure(&d2, &crate::assets::find_agent()?)
    })
    .await??;
    let image = crate::image::prepare(dirs, &opts.image, &opts.pull)
        .await
        .with_context(|| format!("Image {}", opts.image))?;
    let spec = process_spec(&opts, &image.config, env)?;

    // 3. The VM.
    let vmdir = VmDir::new(dirs, &id);
    let guard = DirGuard(vmdir.clone());
    std::fs::create_dir_all(&vmdir.path).context("Cannot create the VM directory")?;
    let rw = vmdir.path.join("rw.ext4");
    make_rw_disk(&rw, 1024)?;
    let net = crate::network::setup(&opts.network, &vmdir.path, &id)?;
    let vspec = VmSpec {
        dir: vmdir.path.clone(),
        kernel: assets.kernel.clone(),
        initramfs: assets.initramfs.clone(),
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        disks: vec![
            Disk {
                path: image.rootfs.clone(),
                read_only: true,
            },
            Disk {
                path: rw,
                read_only: false,
            },
        ],
        accel,
        extra_args: net.qemu_args.clone(),
    };
    let me = std::process::id();
    let mut state = VmState {
        id: id.clone(),
        name: name.clone(),
        status: VmStatus::Starting,
        pid: me,
        pid_start: crate::vm::process_start(me).unwrap_or(0),
        vmm_pid: None,
        vmm_start: None,
        backend: kind,
        accel,
        image: opts.image.clone(),
        image_digest: image.digest.clone(),
        cpus: opts.cpus,
        mem_mib: opts.mem_mib,
        started_at: chrono::Utc::now(),
        health: None,
        exit_code: None,
        network: Some(net.info.clone()),
    };
    let t0 = Instant::now();
    let mut vm = vmm::start(kind, &vspec)?;
    state.vmm_pid = Some(vm.pid());
    state.vmm_start = crate::vm::process_start(vm.pid());
    vmdir.write_state(&state)?;

    // 4. Session.
    let session = Session::connect(
        &vm.agent_socket(),
        rand::random::<u64>() | 1,
        vm.as_mut(),
        BOOT_TIMEOUT,
        Some(vmdir.path.join("agent.log")),
    )
    .await
    .with_context(|| format!("VM {name} did not boot{}", console_tail(&vmdir.path)))?;
    let t_hello = t0.elapsed();
    let plan = ContainerPlan {
        image_fstype: image.fstype.clone(),
        hostname: opts.hostname.clone().unwrap_or_else(|| name.clone()),
        network: net.guest.clone(),
    };
    session
        .request(Msg::Prepare(plan), BOOT_TIMEOUT, |m| match m {
            Msg::Prepared => Some(Ok(())),
            Msg::PrepareFailed { error } => Some(Err(error)),
            _ => None,
        })
        .await
        .with_context(|| format!("VM {name}: preparing the container failed"))?;
    let t_prepared = t0.elapsed();
    state.status = VmStatus::Running;
    vmdir.write_state(&state)?;

    // 5. The container, and the exec server for `fcvm exec`.
    let session = std::sync::Arc::new(session);
    let _exec = crate::exec::serve(
        &vmdir.path.join(crate::exec::EXEC_SOCK),
        session.clone(),
        spec.env.clone(),
    )
    .context("Cannot open the exec socket")?;
    let proc = session.start(spec, Target::Container);
    let shared = std::sync::Arc::new(std::sync::Mutex::new(state.clone()));
    let _health = {
        let (shared, vmdir) = (shared.clone(), vmdir.clone());
        crate::health::spawn(
            session.clone(),
            &opts.health,
            &image.config,
            Box::new(move |h| {
                let mut st = shared.lock().expect("state");
                st.health = Some(h);
                let _ = vmdir.write_state(&st);
            }),
        )
    };
    let outcome = attach(
        proc,
        AttachOptions {
            stdin: opts.interactive,
            tty: opts.tty,
            stop_on_signal: true,
        },
    )
    .await;
    if std::env::var_os("FCVM_TIMINGS").is_some() {
        eprintln!(
            "fcvm timings: accel={accel:?} agent_hello_ms={} guest_uptime_ms={} prepared_ms={} first_output_ms={} total_ms={}",
            t_hello.as_millis(),
            session.info.uptime_ms,
            t_prepared.as_millis(),
            outcome.first_output.map(|t| (t - t0).as_millis() as i64).unwrap_or(-1),
            t0.elapsed().as_millis()
        );
    }

    // 6. Tear down.
    drop(_health);
    let mut state = shared.lock().expect("state").clone();
    state.status = VmStatus::Stopping;
    let _ = vmdir.write_state(&state);
    vm.kill();
    drop(net);
    drop(guard);
    match outcome.result {
        Ok(code) => Ok(code),
        Err(e) => {
            let why = vm.try_exited().unwrap_or_default();
            Err(e).with_context(|| format!("VM {name} ({why})"))
        }
    }
}

/// Removes the VM directory on every exit path that runs destructors.
struct DirGuard(VmDir);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

fn console_tail(dir: &Path) -> String {
    let Ok(s) = std::fs::read_to_string(dir.join("console.log")) else {
        return String::new();
    };
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
    if tail.is_empty() {
        String::new()
    } else {
        format!("; console:\n  {tail}")
    }
}

/// `-e K=V` and `-e K` (take K from fcvm's own environment, as podman does).
pub fn parse_env(items: &[String]) -> Result<Vec<String>> {
    items
        .iter()
        .filter_map(|e| {
            let (k, v) = match e.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (e.as_str(), None),
            };
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Some(Err(anyhow::anyhow!(
                    "Invalid --env {e:?}: expected KEY=VALUE"
                )));
            }
            match v {
                Some(v) => Some(Ok(format!("{k}={v}"))),
                None => std::env::var(k).ok().map(|v| Ok(format!("{k}={v}"))),
            }
        })
        .collect()
}

/// Merges the image config with the run flags, the way podman does.
pub fn process_spec(opts: &RunOptions, img: &ImageConfig, env: Vec<String>) -> Result<ProcessSpec> {
    let (entry, cmd_default) = match &opts.entrypoint {
        // --entrypoint replaces the image's, and drops the image's CMD (podman and docker).
        Some(e) => (parse_entrypoint(e), vec![]),
        None => (img.entrypoint.clone(), img.cmd.clone()),
    };
    let mut args = entry;
    if opts.command.is_empty() {
        args.extend(cmd_default);
    } else {
        args.extend(opts.command.iter().cloned());
    }
    if args.is_empty() {
        bail!("No command specified: the image has no CMD or ENTRYPOINT and none was given");
    }
    let mut merged: Vec<String> = img.env.clone();
    if !merged.iter().any(|e| e.starts_with("PATH=")) {
        merged.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    if opts.tty {
        env_set(&mut merged, "TERM=xterm".into());
    }
    env_set(&mut merged, "container=fcvm".into());
    for e in env {
        env_set(&mut merged, e);
    }
    let cwd = opts
        .workdir
        .clone()
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| img.workdir.clone());
    let (rows, cols) = crate::attach::terminal_size().unwrap_or((24, 80));
    Ok(ProcessSpec {
        args,
        env: merged,
        cwd: if cwd.is_empty() { "/".into() } else { cwd },
        user: opts.user.clone().unwrap_or_else(|| img.user.clone()),
        tty: opts.tty,
        stdin: opts.interactive,
        rows,
        cols,
    })
}

fn env_set(env: &mut Vec<String>, kv: String) {
    let key = kv.split('=').next().unwrap_or("").to_string();
    env.retain(|e| e.split('=').next() != Some(key.as_str()));
    env.push(kv);
}

/// `--entrypoint` takes a JSON array or a plain command string (podman).
fn parse_entrypoint(e: &str) -> Vec<String> {
    if e.trim_start().starts_with('[') {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(e) {
            return v;
        }
    }
    vec![e.to_string()]
}

/// A sparse ext4 disk for the container's writable layer.
pub fn make_rw_disk(path: &Path, size_mib: u64) -> Result<()> {
    let f = std::fs::File::create(path).context("Cannot create the writable disk")?;
    f.set_len(size_mib << 20)?;
    drop(f);
    crate::util::run_tool(
        std::process::Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(path),
        "e2fsprogs",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> ImageConfig {
        ImageConfig {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            workdir: "/srv".into(),
            user: "nobody".into(),
            ..Default::default()
        }
    }

    #[test]
    fn command_replaces_cmd_and_env_overrides() {
        let o = RunOptions {
            command: vec!["echo".into(), "hi".into()],
            ..Default::default()
        };
        let s = process_spec(&o, &img(), vec!["A=2".into()]).unwrap();
        assert_eq!(s.args, ["echo", "hi"]);
        assert!(s.env.contains(&"A=2".to_string()) && !s.env.contains(&"A=1".to_string()));
        assert_eq!(s.cwd, "/srv");
        assert_eq!(s.user, "nobody");
    }

    #[test]
    fn entrypoint_drops_image_cmd() {
        let o = RunOptions {
            entrypoint: Some("/bin/echo".into()),
            ..Default::default()
        };
        assert_eq!(
            process_spec(&o, &img(), vec![]).unwrap().args,
            ["/bin/echo"]
        );
        let o = RunOptions {
            entrypoint: Some(r#"["/bin/sh","-c"]"#.into()),
            command: vec!["echo x".into()],
            workdir: Some("/tmp".into()),
            user: Some("0".into()),
            ..Default::default()
        };
        let s = process_spec(&o, &img(), vec![]).unwrap();
        assert_eq!(s.args, ["/bin/sh", "-c", "echo x"]);
        assert_eq!((s.cwd.as_str(), s.user.as_str()), ("/tmp", "0"));
    }

    #[test]
    fn env_parsing() {
        assert_eq!(parse_env(&["A=b=c".into()]).unwrap(), ["A=b=c"]);
        assert!(parse_env(&["=x".into()]).is_err());
        assert!(parse_env(&["A B=1".into()]).is_err());
        std::env::set_var("FCVM_TEST_ENV_X", "v");
        assert_eq!(
            parse_env(&["FCVM_TEST_ENV_X".into(), "FCVM_TEST_UNSET_Y".into()]).unwrap(),
            ["FCVM_TEST_ENV_X=v"]
        );
    }
}
