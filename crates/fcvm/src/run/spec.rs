//! Podman's rules for turning an image config plus run flags into the process to run:
//! entrypoint/cmd merging, environment (image env, then `-e`), workdir and user defaults.

use anyhow::{bail, Result};
use fcvm_proto::ProcessSpec;

use super::RunOptions;
use crate::image::ImageConfig;

#[derive(Debug, thiserror::Error)]
#[error("Invalid --env {0:?}: expected KEY=VALUE")]
pub struct EnvError(String);

/// One `-e` value, checked and resolved once, at the edge (clap's value parser):
/// `KEY=VALUE`, or `KEY` alone, which takes fcvm's own value of KEY and is dropped when fcvm
/// has none (podman).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArg(Option<String>);

impl EnvArg {
    pub fn parse(e: &str) -> Result<EnvArg, EnvError> {
        let (k, v) = match e.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (e, None),
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            return Err(EnvError(e.into()));
        }
        Ok(EnvArg(match v {
            Some(v) => Some(format!("{k}={v}")),
            None => std::env::var(k).ok().map(|v| format!("{k}={v}")),
        }))
    }

    /// The `KEY=VALUE` entries of `args`, in order.
    pub fn resolved(args: &[EnvArg]) -> Vec<String> {
        args.iter().filter_map(|a| a.0.clone()).collect()
    }
}

/// `-e` values given as text (`fcvm exec`'s): parsed and resolved like [`EnvArg`]s.
pub fn parse_env(items: &[String]) -> Result<Vec<String>, EnvError> {
    let args = items
        .iter()
        .map(|e| EnvArg::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EnvArg::resolved(&args))
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
        merged.insert(0, format!("PATH={}", fcvm_proto::DEFAULT_PATH));
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
        privileged: opts.shape.privileged,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

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
        assert_eq!(EnvArg::parse("A=1").unwrap(), EnvArg(Some("A=1".into())));
        assert!(parse_env(&["=x".into()]).is_err());
        assert!(parse_env(&["A B=1".into()]).is_err());
        std::env::set_var("FCVM_TEST_ENV_X", "v");
        assert_eq!(
            parse_env(&["FCVM_TEST_ENV_X".into(), "FCVM_TEST_UNSET_Y".into()]).unwrap(),
            ["FCVM_TEST_ENV_X=v"]
        );
    }
}
