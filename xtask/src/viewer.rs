//! The web viewer (`viewer/`): building its bundle, the test stages (the bundle is current and
//! self-contained, unit tests, the browser test against the collector) and its benchmark.
//!
//! Node.js runs the viewer's own scripts (`viewer/build.mjs`, `viewer/test/`, `viewer/bench/`);
//! this module finds what they need (npm packages, the collector binary, the golden maps) and
//! says clearly what is missing.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{artifacts_dir, cmd, note, root, run, step},
};

/// `cargo xtask viewer ...`
#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Rebuild viewer/dist/ from viewer/src/ (commit the result).
    Build,
    /// Check that viewer/dist/ is a fresh build and references nothing outside itself.
    Check,
    /// Run the browser test: against the collector seeded with golden/maps, or with `--mock`
    /// against the viewer's mock API and its own fixtures.
    E2e {
        #[arg(long)]
        mock: bool,
    },
}

pub fn command(cmd: Cmd) -> Result<()> {
    setup::npm_tools()?;
    match cmd {
        Cmd::Build => run(node().arg("build.mjs")),
        Cmd::Check => check().map(|_| ()),
        Cmd::E2e { mock: true } => run(node()
            .args([
                "test/e2e.mjs",
                "--mock",
                "--maps",
                "test/fixtures/maps",
                "--artifacts",
            ])
            .arg(artifacts())),
        Cmd::E2e { mock: false } => browser().map(|_| ()),
    }
}

fn viewer_dir() -> PathBuf {
    root().join("viewer")
}

/// `node` in viewer/, where its scripts resolve their packages.
fn node() -> std::process::Command {
    let mut c = cmd("node");
    c.current_dir(viewer_dir());
    c
}

fn artifacts() -> PathBuf {
    artifacts_dir().join("viewer")
}

/// Test stage `viewer-bundle`: rebuilds into a temporary directory and compares byte for byte
/// with the committed viewer/dist/, and checks dist/ references nothing outside itself.
pub fn check() -> Result<String> {
    run(node().args(["build.mjs", "--check"]))?;
    Ok("dist/ is current and self-contained".into())
}

/// Test stage `viewer-unit`: the viewer's logic under node's test runner.
pub fn unit() -> Result<String> {
    run(node().args(["--test", "test/unit/"]))?;
    Ok(String::new())
}

/// Test stage `viewer-browser`: Debian's Chromium, driven by playwright-core, against the real
/// collector serving the golden map files (copied into a fresh `--output-dir` by the test), then
/// the scale test (test/scale.mjs) against the collector serving synthetic fleets.
pub fn browser() -> Result<String> {
    let maps = root().join("golden/maps");
    if !maps.is_dir() {
        bail!(
            "{} is missing: the browser test serves the collector's golden map files",
            maps.display()
        );
    }
    let collector = crate::util::workspace_bin("trafficmap-collector")?;
    run(node()
        .arg("test/e2e.mjs")
        .arg("--collector")
        .arg(&collector)
        .arg("--maps")
        .arg(&maps)
        .arg("--artifacts")
        .arg(artifacts()))?;
    // Issue 14: the synthetic fleets (600 and 5,000 nodes), laid out once per grouping, checked
    // for intersecting outlines and overlapping labels.
    let scale = artifacts_dir().join("viewer-scale");
    run(node()
        .arg("test/scale.mjs")
        .arg("--collector")
        .arg(&collector)
        .arg("--artifacts")
        .arg(&scale))?;
    Ok(format!(
        "screenshots in {} and {}",
        artifacts().display(),
        scale.display()
    ))
}

/// `cargo xtask bench viewer`: the viewer's group-first layout beside the old one (`layout=old`)
/// on the 600- and 5,000-node synthetic fleets in headless Chromium; the results replace the
/// `## Viewer` section of BENCHMARKS.md and are returned.
pub fn bench() -> Result<String> {
    setup::npm_tools()?;
    let dir = artifacts_dir().join("viewer-bench");
    std::fs::create_dir_all(&dir)?;
    let md = dir.join("viewer-bench.md");
    step(
        "bench viewer: 600 / 3,000 and 5,000 / 50,000, group-first layout vs the old one, headless Chromium",
    );
    // `nice`: the machine is shared, and the bench should not starve others (nor they it less).
    let mut c = cmd("nice");
    c.current_dir(viewer_dir());
    run(c
        .args(["node", "bench/bench.mjs", "--artifacts"])
        .arg(&dir)
        .arg("--out-md")
        .arg(&md))?;
    let section =
        std::fs::read_to_string(&md).with_context(|| format!("reading {}", md.display()))?;
    let path = root().join("BENCHMARKS.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    std::fs::write(&path, splice_section(&doc, "## Viewer", &section))
        .with_context(|| format!("writing {}", path.display()))?;
    note(format!(
        "results written to {} (section `## Viewer`)",
        path.display()
    ));
    Ok(section)
}

/// Replaces the section that starts with the line `heading` (up to the next `## ` heading) with
/// `section`, or appends `section` when there is none.
fn splice_section(doc: &str, heading: &str, section: &str) -> String {
    let section = format!("{}\n", section.trim_end());
    let lines: Vec<&str> = doc.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_end() == heading) else {
        return format!("{}\n\n{section}", doc.trim_end());
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with("## "))
        .map_or(lines.len(), |i| start + 1 + i);
    let mut out = lines[..start].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(&section);
    if end < lines.len() {
        out.push('\n');
        out.push_str(&lines[end..].join("\n"));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn splice_replaces_only_its_section() {
        let doc = "# Benchmarks\n\n## Probe\nfast\n\n## Viewer\nold\nrows\n\n## Collector\nok\n";
        let out = splice_section(doc, "## Viewer", "## Viewer\nnew\n");
        assert_eq!(
            out,
            "# Benchmarks\n\n## Probe\nfast\n\n## Viewer\nnew\n\n## Collector\nok\n"
        );
    }

    #[test]
    fn splice_appends_when_missing_and_replaces_at_the_end() {
        let out = splice_section(
            "# Benchmarks\n\n## Probe\nfast\n",
            "## Viewer",
            "## Viewer\nnew",
        );
        assert_eq!(out, "# Benchmarks\n\n## Probe\nfast\n\n## Viewer\nnew\n");
        let again = splice_section(&out, "## Viewer", "## Viewer\nnewer\n");
        assert_eq!(
            again,
            "# Benchmarks\n\n## Probe\nfast\n\n## Viewer\nnewer\n"
        );
    }

    #[test]
    fn executable_is_found_in_cargo_messages() {
        use crate::util::executable_of;
        let msgs = r#"{"reason":"compiler-artifact","target":{"name":"other"},"executable":"/t/other"}
{"reason":"compiler-artifact","target":{"name":"trafficmap-collector"},"executable":"/t/debug/trafficmap-collector"}
{"reason":"compiler-artifact","target":{"name":"trafficmap-collector"},"profile":{"test":true},"executable":"/t/debug/deps/trafficmap_collector-0123"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_of(msgs, "trafficmap-collector"),
            Some(Path::new("/t/debug/trafficmap-collector").to_owned())
        );
        assert_eq!(executable_of(msgs, "missing"), None);
    }
}
