//! `cargo xtask setup`: installs what building, running and testing need, idempotently, saying
//! what it does. Every step checks first and does nothing when the piece is already there.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::util::{cache_dir, cmd, note, output, root, run, step, succeeds};

/// What the caller is about to do; each level includes the previous ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    /// Build the workspace (nightly rust-src, bpf-linker).
    Build,
    /// Run agent + collector on this host (tracefs mounted).
    Run,
    /// Run every test (Debian packages, Python and npm test tools).
    Test,
    /// Run the benchmarks (peers: tcpdump, bpftrace, iperf3, perf).
    Bench,
}

/// Debian packages by level.
const PACKAGES_TEST: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The VM kernels' sock_diag modules (counters backend) come xz- or zstd-compressed.
    "xz-utils",
    "zstd",
    "iproute2",
    // The agent's NAT test (issue 11): a kube-proxy-like DNAT rule in a test namespace.
    "nftables",
    "util-linux",
    "libcap2-bin",
    "prometheus",
    "clickhouse-server",
    "clickhouse-client",
    "chromium",
    "fonts-dejavu-core",
    "systemd",
    "curl",
    // Images (cargo xtask image) and the `images` stage, which runs them under runc.
    "buildah",
    "umoci",
    "runc",
    "podman",
    "skopeo",
    "binutils",
    // Issue 11: the podman test's OCI runtime wrapper edits the bundle's config.json with jq.
    "jq",
];
const PACKAGES_BENCH: &[&str] = &["tcpdump", "bpftrace", "iperf3", "procps"];

/// Python test tools, installed in a venv under the cache.
const PYTHON_TOOLS: &[&str] = &[
    "moto[server]==5.2.5",
    // The SMTP server of the collector's mail tests (STARTTLS, AUTH).
    "aiosmtpd==1.4.6",
    "kubernetes-validate==1.37.0",
    "yamllint",
    // The current ClickHouse engine in-process (the `clickhouse` stage's second engine).
    "chdb-core==26.9.0",
];

pub fn setup(level: Level) -> Result<()> {
    step(format!("setup ({level:?}): checking what is missing"));
    rust_src()?;
    bpf_linker()?;
    if level >= Level::Run {
        tracefs()?;
    }
    if level >= Level::Test {
        let mut pkgs: Vec<&str> = PACKAGES_TEST.to_vec();
        if level >= Level::Bench {
            pkgs.extend(PACKAGES_BENCH);
        }
        debian_packages(&pkgs)?;
        cargo_fuzz()?;
        python_tools()?;
        npm_tools()?;
    }
    note("setup complete");
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed =
        output(cmd("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .context("the nightly toolchain is needed to build the eBPF probe")?;
    // rust-src builds the probe (-Z build-std); clippy lints it for its own target.
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            note(format!("nightly {component}: installed"));
            continue;
        }
        note(format!("nightly {component}: installing"));
        run(cmd("rustup").args(["component", "add", component, "--toolchain", "nightly"]))?;
    }
    Ok(())
}

const BPF_LINKER_VERSION: &str = "0.13.0";

fn bpf_linker() -> Result<()> {
    if let Ok(v) = output(cmd("bpf-linker").arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        note(format!("bpf-linker {BPF_LINKER_VERSION}: installed"));
        return Ok(());
    }
    note(format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against the nightly toolchain's libLLVM (about a minute)"
    ));
    // bpf-linker links LLVM dynamically; the nightly ships its own libLLVM. A shim prefix with
    // both the plain and the versioned name makes the binary's RUNPATH find it when run bare.
    let sysroot = output(cmd("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib_dir = PathBuf::from(sysroot.trim()).join("lib");
    let lib = std::fs::read_dir(&lib_dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let llvm_major = lib
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or("22")
        .to_owned();
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    let shim = home.join(".cargo/llvm-for-bpf-linker/lib");
    std::fs::create_dir_all(&shim)?;
    for name in ["libLLVM.so", lib.as_str()] {
        let link = shim.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib_dir.join(&lib), &link)?;
    }
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", shim.parent().unwrap()))
}

/// The probe reads tracepoint formats from tracefs.
pub fn tracefs() -> Result<()> {
    if PathBuf::from("/sys/kernel/tracing/events").is_dir()
        || PathBuf::from("/sys/kernel/debug/tracing/events").is_dir()
    {
        note("tracefs: mounted");
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "tracefs is not mounted and mounting it needs root: mount -t tracefs nodev /sys/kernel/tracing"
        );
    }
    note("tracefs: mounting on /sys/kernel/tracing");
    run(cmd("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn is_installed(pkg: &str) -> bool {
    output(cmd("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

pub fn debian_packages(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !is_installed(p)).collect();
    if missing.is_empty() {
        note(format!("Debian packages: all {} installed", pkgs.len()));
        return Ok(());
    }
    if !crate::util::is_root() {
        bail!(
            "Debian packages missing ({}); install them as root: apt-get install {}",
            missing.join(", "),
            missing.join(" ")
        );
    }
    note(format!("Debian packages: installing {}", missing.join(" ")));
    run(cmd("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(cmd("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// cargo-fuzz for the fuzzing stage (built once, kept in ~/.cargo/bin).
fn cargo_fuzz() -> Result<()> {
    if succeeds(cmd("cargo").args(["fuzz", "--version"])) {
        note("cargo-fuzz: installed");
        return Ok(());
    }
    note("cargo-fuzz: installing (cargo install cargo-fuzz --locked, about two minutes)");
    run(cmd("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The Python virtualenv with the test tools (moto, aiosmtpd, kubernetes-validate, chdb-core).
pub fn venv() -> PathBuf {
    cache_dir().join("venv")
}

fn python_tools() -> Result<()> {
    let venv = venv();
    let stamp = venv.join(".trafficmap-tools");
    let wanted = PYTHON_TOOLS.join("\n");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        note(format!(
            "Python test tools: installed in {}",
            venv.display()
        ));
        return Ok(());
    }
    note(format!(
        "Python test tools: installing {} into {}",
        PYTHON_TOOLS.join(", "),
        venv.display()
    ));
    if !venv.join("bin/python").exists() {
        run(cmd("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    run(cmd(venv.join("bin/pip"))
        .args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "--cache-dir",
        ])
        .arg(cache_dir().join("pip"))
        .args(PYTHON_TOOLS))?;
    std::fs::write(stamp, wanted)?;
    Ok(())
}

/// npm packages of the viewer (bundler, playwright-core for the browser tests).
pub fn npm_tools() -> Result<()> {
    let viewer = root().join("viewer");
    let lock = viewer.join("package-lock.json");
    if !lock.exists() {
        note("npm: viewer has no package-lock.json yet, nothing to install");
        return Ok(());
    }
    let stamp = viewer.join("node_modules/.trafficmap-lock");
    let lock_text = std::fs::read_to_string(&lock)?;
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == lock_text) {
        note("npm: viewer packages installed");
        return Ok(());
    }
    if !succeeds(cmd("npm").arg("--version")) {
        bail!("npm is missing: install Node.js and npm (Debian: apt-get install nodejs npm)");
    }
    note("npm: installing the viewer's packages from package-lock.json");
    run(cmd("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
            "--cache",
        ])
        .arg(cache_dir().join("npm"))
        .current_dir(&viewer))?;
    std::fs::write(stamp, lock_text)?;
    Ok(())
}
