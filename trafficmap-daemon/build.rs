//! Builds the eBPF probe (`trafficmap-ebpf`) for the BPF target with the nightly toolchain and
//! leaves it in OUT_DIR, where `probe.rs` embeds it. `AYA_BUILD_SKIP=1` skips this (for
//! clippy/doc runs without the eBPF toolchain).
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "trafficmap-ebpf")
        .ok_or_else(|| anyhow!("trafficmap-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
