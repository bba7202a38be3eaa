//! `cargo xtask services-update`: regenerates the table of TCP service names that
//! trafficmap-model ships (`trafficmap-model/src/services/iana_tcp.rs`) from IANA's "Service
//! Name and Transport Protocol Port Number Registry" XML, whose gzipped copy is committed beside
//! it (`trafficmap-model/data/iana/`, origin and licence in its README).
//!
//! The rule, documented in docs/collector.md ("Service names"): of the registry's records, only
//! those with protocol `tcp`, a port number (or range) and a non-empty service name count;
//! "Reserved" and "Unassigned" records have no name and give none. When several records name
//! the same port, the first one in the registry's order wins (IANA lists the primary name first:
//! 80 is `http`, not its aliases `www` and `www-http`).

use std::{collections::BTreeMap, io::Read as _, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The committed copy of IANA's XML, gzipped (`gzip -9n` output: no name, no time stamp).
pub const SOURCE: &str = "trafficmap-model/data/iana/service-names-port-numbers.xml.gz";
/// The generated table.
pub const TABLE: &str = "trafficmap-model/src/services/iana_tcp.rs";

/// The XML namespace of IANA's registries.
const NS: &str = "http://www.iana.org/assignments";

/// Longest name the generator accepts: RFC 6335 allows 15 characters; a few legacy names are
/// longer, none near this.
const MAX_NAME: usize = 63;

/// With `xml` (plain or gzipped), first replaces the committed copy with it; then regenerates
/// the table from the committed copy.
pub fn update(xml: Option<&Path>) -> Result<()> {
    let root = util::root();
    if let Some(path) = xml {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        let text = decompress(&bytes).with_context(|| path.display().to_string())?;
        // Refuse a file that does not parse before replacing anything.
        let (updated, entries) = tcp_names(&text).with_context(|| path.display().to_string())?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut gz, text.as_bytes())?;
        std::fs::write(root.join(SOURCE), gz.finish()?)?;
        eprintln!(
            "copied {} (updated {updated}, {} TCP names) to {SOURCE}",
            path.display(),
            entries.len()
        );
    }
    let text = read_source(&root.join(SOURCE))?;
    let table = render(&text)?;
    std::fs::write(root.join(TABLE), table)?;
    eprintln!("wrote {TABLE}; update the date in trafficmap-model/data/iana/README.md");
    Ok(())
}

/// The committed XML, decompressed.
pub fn read_source(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    decompress(&bytes).with_context(|| path.display().to_string())
}

/// Gzipped (by its magic number) or plain UTF-8.
fn decompress(bytes: &[u8]) -> Result<String> {
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes).read_to_string(&mut text)?;
    } else {
        text = String::from_utf8(bytes.to_vec())?;
    }
    Ok(text)
}

/// The registry's `<updated>` date and its TCP names by port (see the module doc for the rule).
pub fn tcp_names(xml: &str) -> Result<(String, BTreeMap<u16, String>)> {
    let doc = roxmltree::Document::parse(xml).context("not XML")?;
    let registry = doc.root_element();
    if !registry.has_tag_name((NS, "registry"))
        || registry.attribute("id") != Some("service-names-port-numbers")
    {
        bail!("not IANA's service-names-port-numbers registry");
    }
    let updated = child_text(registry, "updated").context("no <updated> date")?;
    let mut names = BTreeMap::new();
    for rec in registry
        .children()
        .filter(|c| c.has_tag_name((NS, "record")))
    {
        if child_text(rec, "protocol").as_deref() != Some("tcp") {
            continue;
        }
        let (Some(name), Some(number)) = (child_text(rec, "name"), child_text(rec, "number"))
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        // Printable ASCII without quotes or backslashes: the table writes it as a Rust string.
        if name.len() > MAX_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            bail!("unexpected service name {name:?} for port {number}");
        }
        let (lo, hi) = match number.split_once('-') {
            Some((a, b)) => (a.parse::<u16>(), b.parse::<u16>()),
            None => (number.parse::<u16>(), number.parse::<u16>()),
        };
        let (Ok(lo), Ok(hi)) = (lo, hi) else {
            bail!("unexpected port number {number:?} for {name}");
        };
        if lo > hi {
            bail!("empty port range {number:?} for {name}");
        }
        for port in lo..=hi {
            names.entry(port).or_insert_with(|| name.clone());
        }
    }
    if names.is_empty() {
        bail!("no TCP service names in the registry");
    }
    Ok((updated, names))
}

/// The trimmed text of `n`'s first child element named `tag`.
fn child_text(n: roxmltree::Node<'_, '_>, tag: &str) -> Option<String> {
    n.children()
        .find(|c| c.has_tag_name((NS, tag)))
        .and_then(|c| c.text())
        .map(|t| t.trim().to_owned())
}

/// The table's Rust source.
pub fn render(xml: &str) -> Result<String> {
    use std::fmt::Write as _;
    let (updated, names) = tcp_names(xml)?;
    let mut out = String::new();
    out.push_str(
        "// @generated by `cargo xtask services-update` from IANA's Service Name and Transport\n\
         // Protocol Port Number Registry (trafficmap-model/data/iana/README.md). Do not edit.\n\n",
    );
    let _ = writeln!(
        out,
        "/// The `<updated>` date of the registry this table was made from.\npub const UPDATED: &str = \"{updated}\";\n"
    );
    out.push_str(
        "/// TCP ports with an IANA service name, sorted by port: the first name the registry\n\
         /// gives each port.\npub static TCP: &[(u16, &str)] = &[\n",
    );
    for (port, name) in &names {
        let _ = writeln!(out, "    ({port}, \"{name}\"),");
    }
    out.push_str("];\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table in the tree is exactly what the committed registry copy generates.
    #[test]
    fn shipped_table_is_generated_from_the_shipped_registry() {
        let root = util::root();
        let text = read_source(&root.join(SOURCE)).unwrap();
        let want = render(&text).unwrap();
        let got = std::fs::read_to_string(root.join(TABLE)).unwrap();
        assert!(
            got == want,
            "{TABLE} is not what {SOURCE} generates: run `cargo xtask services-update`"
        );
    }

    fn registry(records: &str) -> String {
        format!(
            "<?xml version='1.0' encoding='UTF-8'?>\n<registry xmlns=\"{NS}\" id=\"service-names-port-numbers\">\
             <updated>2025-02-25</updated>{records}</registry>"
        )
    }

    fn rec(name: Option<&str>, proto: &str, number: &str) -> String {
        let name = name
            .map(|n| format!("<name>{n}</name>"))
            .unwrap_or_default();
        format!(
            "<record>{name}<protocol>{proto}</protocol><description>x</description><number>{number}</number></record>"
        )
    }

    #[test]
    fn first_tcp_name_wins_ranges_expand_unnamed_and_udp_give_nothing() {
        let xml = registry(
            &[
                rec(None, "tcp", "0"),
                rec(Some("http"), "tcp", "80"),
                rec(Some("www"), "tcp", "80"),
                rec(Some("udponly"), "udp", "81"),
                rec(Some("x11"), "tcp", "6000-6002"),
                rec(Some("svc-no-port"), "tcp", ""),
                rec(Some("x-other"), "tcp", "6001"),
            ]
            .concat(),
        );
        let (updated, names) = tcp_names(&xml).unwrap();
        assert_eq!(updated, "2025-02-25");
        let got: Vec<(u16, &str)> = names.iter().map(|(p, n)| (*p, n.as_str())).collect();
        assert_eq!(
            got,
            [(80, "http"), (6000, "x11"), (6001, "x11"), (6002, "x11")]
        );
        assert!(render(&xml).unwrap().contains("    (6001, \"x11\"),\n"));
    }

    #[test]
    fn surprises_stop_the_generator() {
        for (records, want) in [
            (rec(Some("a b"), "tcp", "5"), "unexpected service name"),
            (rec(Some("a\"b"), "tcp", "5"), "unexpected service name"),
            (rec(Some("ok"), "tcp", "70000"), "unexpected port number"),
            (rec(Some("ok"), "tcp", "9-3"), "empty port range"),
            (rec(None, "tcp", "5"), "no TCP service names"),
        ] {
            let e = tcp_names(&registry(&records)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
        let e = tcp_names("<registry id=\"other\"/>")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "not IANA's service-names-port-numbers registry");
    }
}
