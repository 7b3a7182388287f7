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

/// Largest `--env-file` read (a bound, not a format rule).
const MAX_ENV_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// No #[source]: clap shows a value parser's error by its message alone.
    #[error("Cannot read --env-file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("--env-file {0} is larger than 1 MiB")]
    TooLarge(String),
    #[error("--env-file {0}, line {1}: invalid entry {2:?}: expected KEY=VALUE")]
    Line(String, usize, String),
}

/// One `--env-file FILE`, read and resolved once, at the edge (clap's value parser), in
/// podman's format: `KEY=VALUE` lines (leading blanks dropped, the rest of the line is the
/// value), blank lines and `#` comments skipped, `KEY` alone takes fcvm's own value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile(pub Vec<EnvArg>);

impl EnvFile {
    pub fn parse(path: &str) -> Result<EnvFile, EnvFileError> {
        use std::io::Read;
        let read = |e| EnvFileError::Read(path.into(), e);
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_ENV_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_ENV_FILE {
            return Err(EnvFileError::TooLarge(path.into()));
        }
        let mut args = vec![];
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let arg = EnvArg::parse(line)
                .map_err(|_| EnvFileError::Line(path.into(), i + 1, line.into()))?;
            args.push(arg);
        }
        Ok(EnvFile(args))
    }

    /// The `KEY=VALUE` entries of `files` in order, then those of `-e` (podman's order: `-e`
    /// wins).
    pub fn then_env(files: Vec<EnvFile>, env: Vec<EnvArg>) -> Vec<EnvArg> {
        files.into_iter().flat_map(|f| f.0).chain(env).collect()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Invalid --label {0:?}: expected KEY=VALUE or KEY")]
pub struct LabelError(String);

/// `--label KEY=VALUE` (or `KEY`, an empty value, as podman); clap's value parser.
pub fn parse_label(s: &str) -> Result<(String, String), LabelError> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(LabelError(s.into()));
    }
    Ok((k.into(), v.into()))
}

/// `-e` values given as text, parsed and resolved like [`EnvArg`]s (the tests' shorthand).
#[cfg(test)]
fn parse_env(items: &[String]) -> Result<Vec<String>, EnvError> {
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
        detach: false,
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
    fn env_files() {
        let p = std::env::temp_dir().join(format!("fcvm-envfile-{}", std::process::id()));
        std::fs::write(
            &p,
            "# comment\n\n  A=1 2 \nB==x\nFCVM_TEST_ENV_F\nFCVM_TEST_UNSET_G\n",
        )
        .unwrap();
        std::env::set_var("FCVM_TEST_ENV_F", "f");
        let f = EnvFile::parse(p.to_str().unwrap()).unwrap();
        let all = EnvFile::then_env(vec![f], vec![EnvArg::parse("A=3").unwrap()]);
        assert_eq!(
            EnvArg::resolved(&all),
            ["A=1 2 ", "B==x", "FCVM_TEST_ENV_F=f", "A=3"]
        );
        std::fs::write(&p, "OK=1\nBAD KEY=1\n").unwrap();
        let err = EnvFile::parse(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        std::fs::remove_file(&p).unwrap();
        assert!(EnvFile::parse("/nonexistent/env").is_err());
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
