//! A template: an image made ready once (pulled or built, cached), with the idle process its
//! sandboxes' containers run and the command a pooled VM runs before its hand-over.

use anyhow::Result;
use fcvm_proto::ProcessSpec;

use crate::paths::Dirs;
use crate::run::Facts;

/// What `templateID` names: an image made ready once, at server start.
#[derive(Clone)]
pub struct Template {
    pub id: String,
    pub image: String,
    pub facts: Facts,
    /// The container's idle main process (the image's environment, `sleep infinity`).
    pub idle: ProcessSpec,
    /// What a pooled VM runs before its hand-over: the SDK's first command, doing nothing.
    pub warm: ProcessSpec,
}

impl Template {
    /// Makes image `image` ready (pulled or built, cached) as template `id`.
    pub async fn prepare(
        dirs: &Dirs,
        id: &str,
        image: &str,
        assets: &crate::assets::Assets,
        accel: crate::vmm::Accel,
        (cpus, mem_mib, maps): (u32, u32, &[crate::map::Map]),
    ) -> Result<Template> {
        let img = crate::image::prepare(dirs, image, &Default::default()).await?;
        let opts = crate::run::RunOptions {
            image: image.into(),
            command: vec!["sleep".into(), "infinity".into()],
            cpus,
            mem_mib,
            ..Default::default()
        };
        // The image's environment, directory and user, podman's way; its entrypoint and
        // command are replaced: the container only has to stay up.
        let mut idle = crate::run::process_spec(&opts, &img.config, vec![])?;
        idle.args = opts.command.clone();
        let facts = Facts {
            backend: crate::vmm::VmmKind::Qemu,
            accel,
            cpus,
            mem_mib,
            assets: assets.clone(),
            image: image.into(),
            image_digest: img.digest.clone(),
            rootfs: img.rootfs.clone(),
            fstype: img.fstype.clone(),
            net_devices: true,
            nic: None,
            container_env: idle.env.clone(),
            // The idle process and the SDK's shell: what a restored sandbox runs first.
            prefetch: vec!["sleep".into(), "/bin/bash".into()],
            shape: crate::run::Shape {
                maps: maps.to_vec(),
                ..Default::default()
            },
        };
        let warm = ProcessSpec {
            args: ["/bin/bash", "-l", "-c", "true"].map(String::from).to_vec(),
            stdin: false,
            tty: false,
            ..idle.clone()
        };
        Ok(Template {
            id: id.into(),
            image: image.into(),
            facts,
            idle,
            warm,
        })
    }
}
