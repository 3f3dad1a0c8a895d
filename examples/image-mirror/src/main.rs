//! The image-mirror webhook binary.
//!
//! `cargo run -p image-mirror -- --mirror mirror.example.com --allow-registry registry.k8s.io`
//! serves it; `… -- webhook-config --url https://127.0.0.1:8443` prints its
//! `MutatingWebhookConfiguration`. Its own flags sit next to admission-kit's standard ones
//! (`cli::run_with`).

use image_mirror::{ImageMirror, MirrorPrefix, Registry};

/// Pull every container image through a mirror registry.
#[derive(Debug, clap::Args)]
struct Flags {
    /// Mirror that images are pulled through: a registry host and an optional path
    /// (`mirror.example.com`, `registry.corp:5000/mirrors`).
    #[arg(long, global = true, env = "IMAGE_MIRROR_MIRROR", default_value = "localhost:5000")]
    mirror: MirrorPrefix,
    /// Registries whose images stay as they are (repeat the flag or separate with commas).
    #[arg(long = "allow-registry", global = true, env = "IMAGE_MIRROR_ALLOW_REGISTRIES", value_delimiter = ',')]
    allow_registries: Vec<Registry>,
    /// Namespaces whose pods are never mirrored (rendered into the webhook's namespaceSelector).
    #[arg(
        long = "skip-namespace",
        global = true,
        env = "IMAGE_MIRROR_SKIP_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    skip_namespaces: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run_with(|flags: Flags| {
        let mirror = ImageMirror::new(flags.mirror, flags.allow_registries);
        Ok(vec![image_mirror::pipeline(mirror, flags.skip_namespaces)])
    })
    .await
}
