//! `fcvm serve [--listen ADDR] [--api-key-file F] [--template NAME=IMAGE]... [--pool N]
//! [--map HOST:GUEST[:ro]]...`: the E2B sandbox API for the E2B SDKs (docs/serve.md). Prints
//! `Listening on http://ADDR` once it accepts requests; SIGTERM or Ctrl-C stops every sandbox,
//! then the server.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use fcvm::paths::Dirs;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; anything but loopback needs --api-key-file.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// File holding the API key clients must send (`X-API-Key`, the SDK's E2B_API_KEY).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// A template: its templateID and the image it runs (repeatable; `base` defaults to
    /// builtin:base).
    #[arg(long = "template", value_parser = parse_template)]
    templates: Vec<(String, String)>,
    /// vCPUs per sandbox.
    #[arg(long = "cpu", default_value_t = 1)]
    cpus: u32,
    /// Guest memory per sandbox in MiB.
    #[arg(long = "mem", default_value_t = 512)]
    mem: u32,
    /// Sandboxes alive at a time.
    #[arg(long, default_value_t = 64)]
    max_sandboxes: usize,
    /// VMs kept launched and warmed per template, so that a create is a hand-over.
    #[arg(long, default_value_t = 0)]
    pool: usize,
    /// A host directory every sandbox sees at GUEST (repeatable; `:ro` read-only;
    /// docs/volumes.md).
    #[arg(long = "map", value_name = "HOST:GUEST[:ro]",
          value_parser = fcvm::map::Map::parse)]
    maps: Vec<fcvm::map::Map>,
}

fn parse_template(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, image)) if !name.is_empty() && !image.is_empty() => {
            Ok((name.to_string(), image.to_string()))
        }
        _ => Err(format!("expected NAME=IMAGE, got {s:?}")),
    }
}

pub async fn run(dirs: &Dirs, a: ServeArgs) -> Result<i32> {
    let api_key = match &a.api_key_file {
        Some(f) => {
            let key = std::fs::read_to_string(f)
                .with_context(|| format!("Cannot read the API key file {}", f.display()))?;
            let key = key.trim().to_string();
            if key.is_empty() {
                bail!("The API key file {} is empty", f.display());
            }
            Some(key)
        }
        None => None,
    };
    let mut templates = BTreeMap::new();
    for (name, image) in a.templates {
        if templates.insert(name.clone(), image).is_some() {
            bail!("--template {name} is given twice");
        }
    }
    let opts = fcvm::serve::ServeOptions {
        listen: a.listen,
        api_key,
        templates,
        cpus: a.cpus,
        mem_mib: a.mem,
        max_sandboxes: a.max_sandboxes.max(1),
        pool: a.pool,
        maps: a.maps,
    };
    fcvm::serve::serve(dirs, opts, |addr| {
        println!("Listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(0)
}
