//! `cargo xtask vm-test`: the probe's test suite on other kernels, in qemu VMs.
//!
//! Debian cloud kernels (they have BTF, kprobes, fentry, virtio and a serial console built in)
//! are downloaded with an apt configuration of our own into the cache; each boots under TCG with
//! an initramfs holding busybox, the probe test binary and its shared libraries. The VM's /init
//! runs the suite once per backend and prints markers on the serial console, parsed here into a
//! matrix kernel x backend: exact / unsupported on this kernel / FAILED.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{artifacts_dir, cache_dir, cmd, note, output, run, step};

/// A kernel of the matrix: where its package comes from, and which backends must load on it.
pub struct KernelSpec {
    pub label: &'static str,
    pub suite: &'static str,
    /// Package name prefix and suffix; the newest version between them is taken.
    pub prefix: &'static str,
    pub suffix: &'static str,
    /// Backends this kernel offers. One expected here but reported unsupported fails the run,
    /// so a regression in loading cannot pass as "unsupported".
    pub expect: &'static [&'static str],
}

pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "5.10",
        suite: "bullseye",
        prefix: "linux-image-5.10.0-",
        suffix: "-cloud-amd64-unsigned",
        // No sock_send_length tracepoint before 6.3.
        expect: &["fexit", "kprobe", "counters"],
    },
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
        expect: &["fexit", "kprobe", "counters"],
    },
    KernelSpec {
        label: "6.12",
        suite: "trixie",
        prefix: "linux-image-6.12.",
        suffix: "+deb13-cloud-amd64-unsigned",
        expect: &["fexit", "kprobe", "tracepoint", "counters"],
    },
];

/// Every backend, each run with the whole suite. `counters` needs only the lifecycle
/// tracepoints and BTF, so every kernel of the matrix and the host must load it.
pub const BACKENDS: [&str; 4] = ["fexit", "kprobe", "tracepoint", "counters"];

/// Outcome of one backend on one kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Exact,
    Unsupported(String),
    Failed(String),
}

impl Cell {
    fn short(&self) -> &str {
        match self {
            Cell::Exact => "exact",
            Cell::Unsupported(_) => "unsupported",
            Cell::Failed(_) => "FAILED",
        }
    }
}

/// Parses the markers the VM's init (or the host runner) prints into one cell per backend.
pub fn parse_markers(log: &str, expect: Option<&[&str]>) -> BTreeMap<String, Cell> {
    let mut cells = BTreeMap::new();
    let mut reasons: BTreeMap<String, String> = BTreeMap::new();
    // Markers may follow other output on the same line (the test harness prints
    // `test backend_support ... ` before the test's own output).
    let after = |line: &'_ str, marker: &str| -> Option<String> {
        line.find(marker)
            .map(|i| line[i + marker.len()..].trim().to_owned())
    };
    // What failed, per backend: the suite's failing test names and the first panic messages, so
    // the reason reaches the summary (CI shows only the tail of the output, not the VM log).
    let mut current: Option<String> = None;
    let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(b) = after(line, "TRAFFICMAP_BEGIN ") {
            current = Some(b);
        }
        if let Some(b) = &current {
            let found = failures.entry(b.clone()).or_default();
            let line = line.trim();
            if found.len() < 6 {
                if let Some(name) = line
                    .strip_prefix("test ")
                    .and_then(|l| l.strip_suffix(" ... FAILED"))
                {
                    found.push(format!("test {name} failed"));
                } else if line.starts_with("thread '") && line.contains("panicked at") {
                    // The message is on the next line(s) since Rust 1.73.
                    let msg = lines.peek().map(|l| l.trim()).unwrap_or_default();
                    found.push(format!("{line} {msg}").chars().take(300).collect());
                }
            }
        }
        if let Some(rest) = after(line, "TRAFFICMAP_SUPPORT ").as_deref()
            && let Some((b, why)) = rest.split_once(" unsupported: ")
        {
            reasons.insert(b.to_owned(), why.to_owned());
        }
        if let Some(rest) = after(line, "TRAFFICMAP_RESULT ").as_deref() {
            let mut it = rest.split_whitespace();
            let (Some(b), Some(r)) = (it.next(), it.next()) else {
                continue;
            };
            let cell = match r {
                "exact" => Cell::Exact,
                "unsupported" => Cell::Unsupported(reasons.get(b).cloned().unwrap_or_default()),
                other => {
                    let why = failures.get(b).filter(|f| !f.is_empty());
                    Cell::Failed(match why {
                        Some(f) => format!("suite {other}: {}", f.join("; ")),
                        None => format!("suite {other}"),
                    })
                }
            };
            cells.insert(b.to_owned(), cell);
        }
    }
    for b in BACKENDS {
        cells
            .entry(b.to_owned())
            .or_insert_with(|| Cell::Failed("no result (VM hung or crashed?)".into()));
    }
    if let Some(expect) = expect {
        for b in expect {
            if let Some(Cell::Unsupported(why)) = cells.get(*b) {
                let why = format!("expected to load on this kernel but did not: {why}");
                cells.insert((*b).to_owned(), Cell::Failed(why));
            }
        }
    }
    cells
}

/// The /init of the VM: mounts, then for each backend the support check and the suite.
fn init_script() -> String {
    let backends = BACKENDS.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# Issue 11: the probe tests compare recorded cgroup ids with cgroup2 directories.
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ip link set lo up
# The counters backend reads live connections through sock_diag; Debian builds its TCP part
# as modules (inet_diag, tcp_diag), copied here per kernel release.
for m in inet_diag tcp_diag; do
  [ -f /modules/$(uname -r)/$m.ko ] && insmod /modules/$(uname -r)/$m.ko && echo "TRAFFICMAP_MODULE $m"
done
export CI=1 RUST_BACKTRACE=1 HOME=/tmp TMPDIR=/tmp
echo "TRAFFICMAP_KERNEL $(uname -r)"
for b in {backends}; do
  echo "TRAFFICMAP_BEGIN $b"
  TRAFFICMAP_TEST_BACKEND=$b /probe-test --exact backend_support --nocapture --test-threads=1 >/tmp/support 2>&1
  cat /tmp/support
  if grep -q "TRAFFICMAP_SUPPORT $b supported" /tmp/support; then
    if TRAFFICMAP_TEST_BACKEND=$b /probe-test --test-threads=1 --skip backend_support; then
      echo "TRAFFICMAP_RESULT $b exact"
    else
      echo "TRAFFICMAP_RESULT $b FAILED"
    fi
  elif grep -q "TRAFFICMAP_SUPPORT $b unsupported" /tmp/support; then
    echo "TRAFFICMAP_RESULT $b unsupported"
  else
    echo "TRAFFICMAP_RESULT $b FAILED"
  fi
done
echo TRAFFICMAP_DONE
poweroff -f
"#
    )
}

fn apt_args(dir: &Path) -> Vec<String> {
    vec![
        format!(
            "-oDir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        "-oAPT::Get::List-Cleanup=0".into(),
        // The cache belongs to root; apt's `_apt` sandbox user could not write it.
        "-oAPT::Sandbox::User=root".into(),
        "-q".into(),
    ]
}

/// Natural sort key: runs of digits compare as numbers.
fn natural_key(s: &str) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut num = String::new();
    let mut text = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !text.is_empty() {
                out.push((0, std::mem::take(&mut text)));
            }
            num.push(c);
        } else {
            if !num.is_empty() {
                out.push((num.parse().unwrap_or(0), String::new()));
                num.clear();
            }
            text.push(c);
        }
    }
    if !num.is_empty() {
        out.push((num.parse().unwrap_or(0), String::new()));
    }
    if !text.is_empty() {
        out.push((0, text));
    }
    out
}

/// Modules the VM loads before the tests (in this order), if the kernel has them as modules.
const MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
/// Written to `modules/done` once copied; a cache with another value is extracted again.
const MODULES_LAYOUT: &str = "2";

/// Downloads (once) the newest kernel of `spec` and returns its vmlinuz; the modules of
/// [`MODULES`] go, uncompressed, to `modules/<release>/` beside it.
pub fn kernel(spec: &KernelSpec) -> Result<PathBuf> {
    let dir = cache_dir().join("kernels").join(spec.label);
    let vmlinuz = dir.join("vmlinuz");
    // `modules/done` holds the layout version: kernels cached before the counters backend have
    // no modules, and version 1 missed merged-/usr packages' modules (trixie's 6.12).
    if vmlinuz.exists()
        && std::fs::read_to_string(dir.join("modules/done")).is_ok_and(|v| v == MODULES_LAYOUT)
    {
        note(format!(
            "kernel {}: cached ({})",
            spec.label,
            std::fs::read_to_string(dir.join("package"))
                .unwrap_or_default()
                .trim()
        ));
        return Ok(vmlinuz);
    }
    let apt = cache_dir().join("apt").join(spec.suite);
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    std::fs::write(
        apt.join("sources.list"),
        format!(
            "deb [signed-by={keyring}] http://deb.debian.org/debian {s} main\n\
             deb [signed-by={keyring}] http://deb.debian.org/debian-security {s}-security main\n",
            s = spec.suite
        ),
    )?;
    note(format!(
        "kernel {}: updating the {} package index",
        spec.label, spec.suite
    ));
    run(cmd("apt-get").args(apt_args(&apt)).arg("update"))?;
    let list = output(cmd("apt-cache").args(apt_args(&apt)).args([
        "search",
        "--names-only",
        &format!("^{}", regex::escape(spec.prefix)),
    ]))?;
    let mut names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split(" - ").next())
        .filter(|n| n.starts_with(spec.prefix) && n.ends_with(spec.suffix))
        .collect();
    names.sort_by_key(|n| natural_key(n));
    if names.is_empty() {
        bail!(
            "no package {}*{} in {}",
            spec.prefix,
            spec.suffix,
            spec.suite
        );
    }
    let work = dir.join("download");
    // The index can list a version the mirror no longer serves: fall back to older ones.
    let mut pkg = None;
    for name in names.iter().rev().take(6) {
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        note(format!("kernel {}: downloading {name}", spec.label));
        match run(cmd("apt-get")
            .args(apt_args(&apt))
            .args(["download", name])
            .current_dir(&work))
        {
            Ok(()) => {
                pkg = Some(name.to_string());
                break;
            }
            Err(e) => note(format!(
                "kernel {}: {name} unavailable ({e:#}), trying an older one",
                spec.label
            )),
        }
    }
    let pkg =
        pkg.with_context(|| format!("no {} kernel package could be downloaded", spec.label))?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    let extracted = work.join("x");
    run(cmd("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let boot = std::fs::read_dir(extracted.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no boot/vmlinuz-* in the package")?;
    std::fs::copy(&boot, &vmlinuz)?;
    copy_modules(&extracted, &dir.join("modules"))?;
    std::fs::write(dir.join("package"), &pkg)?;
    std::fs::remove_dir_all(&work)?;
    Ok(vmlinuz)
}

/// Copies [`MODULES`] from an extracted kernel package to `to/<release>/<name>.ko`,
/// decompressing `.ko.xz`, `.ko.zst`, `.ko.gz` (busybox's insmod may not). A module built into
/// the kernel has no file: nothing to copy.
fn copy_modules(extracted: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to)?;
    // Merged-/usr packages (Debian 13's kernels) ship usr/lib/modules, older ones lib/modules.
    for rel in ["lib/modules", "usr/lib/modules"]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(extracted.join(d)).into_iter().flatten())
        .filter_map(Result::ok)
    {
        let release = rel.file_name();
        let src_dir = rel.path().join("kernel/net/ipv4");
        let dst_dir = to.join(&release);
        std::fs::create_dir_all(&dst_dir)?;
        let builtin =
            std::fs::read_to_string(rel.path().join("modules.builtin")).unwrap_or_default();
        for m in MODULES {
            if builtin.lines().any(|l| l.ends_with(&format!("/{m}.ko"))) {
                continue;
            }
            let dst = dst_dir.join(format!("{m}.ko"));
            let plain = src_dir.join(format!("{m}.ko"));
            if plain.exists() {
                std::fs::copy(&plain, &dst)?;
                continue;
            }
            for (ext, tool) in [("xz", "xz"), ("zst", "zstd"), ("gz", "gzip")] {
                let packed = src_dir.join(format!("{m}.ko.{ext}"));
                if packed.exists() {
                    let out = Command::new(tool)
                        .arg("-dc")
                        .arg(&packed)
                        .output()
                        .with_context(|| format!("{tool} -dc {}", packed.display()))?;
                    if !out.status.success() {
                        bail!("{tool} -dc {} failed", packed.display());
                    }
                    std::fs::write(&dst, out.stdout)?;
                }
            }
            // Neither built in nor a module file: the counters backend could not run there.
            if !dst.exists() {
                bail!(
                    "kernel {}: {m} is neither built in nor a module in {}",
                    release.to_string_lossy(),
                    src_dir.display()
                );
            }
        }
    }
    std::fs::write(to.join("done"), MODULES_LAYOUT)?;
    Ok(())
}

/// Builds the initramfs: busybox, the test binary, its shared libraries, the kernels' modules
/// (`modules/<release>/*.ko` of each directory in `modules`), /init.
pub fn initramfs(test_bin: &Path, modules: &[PathBuf], out: &Path) -> Result<()> {
    let root = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("bin"))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("busybox not found: run `cargo xtask setup --level test`")?;
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    std::fs::copy(test_bin, root.join("probe-test"))?;
    for dir in modules {
        for rel in std::fs::read_dir(dir)?.filter_map(Result::ok) {
            if !rel.path().is_dir() {
                continue;
            }
            let dst = root.join("modules").join(rel.file_name());
            std::fs::create_dir_all(&dst)?;
            for m in std::fs::read_dir(rel.path())?.filter_map(Result::ok) {
                std::fs::copy(m.path(), dst.join(m.file_name()))?;
            }
        }
    }
    // Shared libraries at the paths the dynamic linker looks for them.
    let ldd = output(cmd("ldd").arg(test_bin))?;
    for line in ldd.lines() {
        let path = line
            .split_whitespace()
            .find(|w| w.starts_with('/'))
            .map(PathBuf::from);
        if let Some(p) = path {
            let dst = root.join(p.strip_prefix("/")?);
            std::fs::create_dir_all(dst.parent().unwrap())?;
            std::fs::copy(&p, &dst).with_context(|| format!("copying {}", p.display()))?;
        }
    }
    let init = root.join("init");
    std::fs::write(&init, init_script())?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let files = output(cmd("find").arg(".").current_dir(&root))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&root)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out.with_extension("cpio"))?)
        .spawn()
        .context("cpio")?;
    cpio.stdin.take().unwrap().write_all(files.as_bytes())?;
    if !cpio.wait()?.success() {
        bail!("cpio failed");
    }
    run(cmd("gzip")
        .args(["-1", "-f"])
        .arg(out.with_extension("cpio")))?;
    std::fs::rename(out.with_extension("cpio.gz"), out)?;
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Boots one kernel and returns its serial console output.
pub fn boot(vmlinuz: &Path, initrd: &Path, log_path: &Path, limit: Duration) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "1536",
            "-smp",
            "2",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 oops=panic",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup --level test`)")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    let mut file = std::fs::File::create(log_path)?;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                writeln!(file, "{line}")?;
                if line.contains("TRAFFICMAP_RESULT") || line.contains("TRAFFICMAP_SUPPORT") {
                    note(format!(
                        "  [{:>5.1}s] {}",
                        start.elapsed().as_secs_f64(),
                        line.trim()
                    ));
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if start.elapsed() >= limit {
            note(format!("VM did not finish within {limit:?}: killing it"));
            let _ = child.kill();
            break;
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    Ok(log)
}

/// Runs the whole matrix; returns (kernel label, release, cells).
/// One row of the matrix: kernel label, release, cell per backend.
pub type Row = (String, String, BTreeMap<String, Cell>);

pub fn vm_test(kernels: &[String]) -> Result<Vec<Row>> {
    step("vm-test: building the probe test binary");
    let bins = crate::util::build_test_binaries(&["-p", "trafficmap-daemon", "--test", "probe"])?;
    let test_bin = bins
        .iter()
        .find(|(n, _)| n == "probe")
        .map(|(_, p)| p.clone())
        .context("probe test binary not built")?;
    let work = cache_dir().join("vm");
    std::fs::create_dir_all(&work)?;
    let initrd = work.join("initrd.gz");
    let specs: Vec<&KernelSpec> = KERNELS
        .iter()
        .filter(|k| kernels.is_empty() || kernels.iter().any(|l| l == k.label))
        .collect();
    let mut images = Vec::new();
    for spec in &specs {
        let vmlinuz = kernel(spec)?;
        let modules = vmlinuz.with_file_name("modules");
        images.push((vmlinuz, modules));
    }
    let module_dirs: Vec<PathBuf> = images.iter().map(|(_, m)| m.clone()).collect();
    initramfs(&test_bin, &module_dirs, &initrd)?;
    let mut results = Vec::new();
    for (spec, (vmlinuz, _)) in specs.iter().zip(&images) {
        step(format!("vm-test: Linux {} ({})", spec.label, spec.suite));
        let log_path = artifacts_dir().join(format!("vm-{}.log", spec.label));
        let start = Instant::now();
        let log = boot(vmlinuz, &initrd, &log_path, Duration::from_secs(900))?;
        let release = log
            .lines()
            .find_map(|l| {
                l.find("TRAFFICMAP_KERNEL ")
                    .map(|i| l[i + 18..].trim().to_owned())
            })
            .unwrap_or_else(|| "did not boot".into());
        let cells = parse_markers(&log, Some(spec.expect));
        note(format!(
            "Linux {release}: {} in {:.0}s (log: {})",
            cells
                .iter()
                .map(|(b, c)| format!("{b} {}", c.short()))
                .collect::<Vec<_>>()
                .join(", "),
            start.elapsed().as_secs_f64(),
            log_path.display()
        ));
        results.push((spec.label.to_owned(), release, cells));
    }
    Ok(results)
}

/// The matrix as a Markdown table, with the reasons below it.
pub fn render_matrix(rows: &[Row]) -> String {
    let mut s = format!(
        "| kernel | {} |\n| --- |{}\n",
        BACKENDS.join(" | "),
        " --- |".repeat(BACKENDS.len())
    );
    let mut notes = Vec::new();
    for (label, release, cells) in rows {
        let get = |b: &str| cells.get(b).map_or("?", Cell::short);
        let row: Vec<&str> = BACKENDS.iter().map(|b| get(b)).collect();
        s.push_str(&format!("| {label} ({release}) | {} |\n", row.join(" | ")));
        for (b, c) in cells {
            match c {
                Cell::Unsupported(why) => notes.push(format!("- {label} {b}: unsupported: {why}")),
                Cell::Failed(why) => notes.push(format!("- {label} {b}: FAILED: {why}")),
                Cell::Exact => {}
            }
        }
    }
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}

pub fn any_failed(rows: &[Row]) -> bool {
    rows.iter()
        .any(|(_, _, c)| c.values().any(|c| matches!(c, Cell::Failed(_))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_tests_and_panics_become_the_reason() {
        let log = "TRAFFICMAP_BEGIN fexit\nTRAFFICMAP_SUPPORT fexit supported\n\
            test sendfile_is_exact ... ok\nTRAFFICMAP_RESULT fexit exact\n\
            TRAFFICMAP_BEGIN kprobe\nTRAFFICMAP_SUPPORT kprobe supported\n\
            test ipv6_is_exact ... FAILED\n\
            thread 'ipv6_is_exact' panicked at trafficmap-daemon/tests/probe.rs:10:5:\n\
            assertion `left == right` failed\nTRAFFICMAP_RESULT kprobe FAILED\n";
        let cells = parse_markers(log, None);
        assert_eq!(cells["fexit"], Cell::Exact);
        assert_eq!(
            cells["kprobe"],
            Cell::Failed(
                "suite FAILED: test ipv6_is_exact failed; thread 'ipv6_is_exact' panicked at \
                 trafficmap-daemon/tests/probe.rs:10:5: assertion `left == right` failed"
                    .into()
            )
        );
    }

    #[test]
    fn markers_become_cells() {
        let log = "\x1b[0mTRAFFICMAP_KERNEL 6.1.0-27\n\
            TRAFFICMAP_SUPPORT fexit supported\nTRAFFICMAP_RESULT fexit exact\n\
            TRAFFICMAP_SUPPORT kprobe supported\nTRAFFICMAP_RESULT kprobe FAILED\n\
            TRAFFICMAP_SUPPORT tracepoint unsupported: tracepoint sock/sock_send_length does not exist\n\
            TRAFFICMAP_RESULT tracepoint unsupported\n";
        let cells = parse_markers(log, Some(&["fexit", "kprobe"]));
        assert_eq!(cells["fexit"], Cell::Exact);
        assert_eq!(cells["kprobe"], Cell::Failed("suite FAILED".into()));
        assert_eq!(
            cells["tracepoint"],
            Cell::Unsupported("tracepoint sock/sock_send_length does not exist".into())
        );
    }

    #[test]
    fn expected_but_unsupported_fails_and_missing_fails() {
        let log =
            "TRAFFICMAP_SUPPORT fexit unsupported: EPERM\nTRAFFICMAP_RESULT fexit unsupported\n";
        let cells = parse_markers(log, Some(&["fexit"]));
        assert!(matches!(&cells["fexit"], Cell::Failed(w) if w.contains("EPERM")));
        assert!(matches!(&cells["kprobe"], Cell::Failed(w) if w.contains("no result")));
    }

    #[test]
    fn natural_sort_picks_newest() {
        let mut v = [
            "linux-image-5.10.0-9-cloud",
            "linux-image-5.10.0-46-cloud",
            "linux-image-5.10.0-10-cloud",
        ];
        v.sort_by_key(|n| natural_key(n));
        assert_eq!(v.last(), Some(&"linux-image-5.10.0-46-cloud"));
    }
}
