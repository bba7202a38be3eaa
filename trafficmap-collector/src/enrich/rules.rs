//! Clean-up of the `archdomain` and `env` tags, which people type by hand on thousands of
//! instances: stray spaces, capitals, leading slashes and renamed prefixes would otherwise split
//! one cluster into several.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A prefix rewrite: `online/mid-tier/` -> `online/midtier/`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Applied to the cleaned value; the longest matching prefix wins.
    pub prefix: String,
    pub replace: String,
}

/// How to clean one tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagRules {
    /// Trim white space (around the value and around each `/`-separated part).
    pub trim: bool,
    /// Lower-case the value.
    pub lowercase: bool,
    /// Prefix rewrites, applied after trimming and lower-casing.
    pub rewrites: Vec<Rewrite>,
    /// Whole-value replacements applied last (`production` -> `prod`).
    pub aliases: BTreeMap<String, String>,
}

impl Default for TagRules {
    fn default() -> Self {
        TagRules {
            trim: true,
            lowercase: true,
            rewrites: Vec::new(),
            aliases: BTreeMap::new(),
        }
    }
}

impl TagRules {
    /// Cleans a hierarchical archdomain: parts separated by `/`, no empty parts, no leading or
    /// trailing slash. `None` when nothing is left.
    pub fn archdomain(&self, raw: &str) -> Option<String> {
        let mut v = raw.replace('\\', "/");
        if self.lowercase {
            v = v.to_lowercase();
        }
        let parts: Vec<&str> = v
            .split('/')
            .map(|p| if self.trim { p.trim() } else { p })
            .filter(|p| !p.is_empty())
            .collect();
        let joined = parts.join("/");
        self.finish(joined)
    }

    /// Cleans a flat value such as env.
    pub fn flat(&self, raw: &str) -> Option<String> {
        let mut v = if self.trim {
            raw.trim().to_owned()
        } else {
            raw.to_owned()
        };
        if self.lowercase {
            v = v.to_lowercase();
        }
        self.finish(v)
    }

    fn finish(&self, mut v: String) -> Option<String> {
        if let Some(rw) = self
            .rewrites
            .iter()
            .filter(|rw| v.starts_with(&rw.prefix))
            .max_by_key(|rw| rw.prefix.len())
        {
            v = format!("{}{}", rw.replace, &v[rw.prefix.len()..]);
        }
        if let Some(a) = self.aliases.get(&v) {
            v = a.clone();
        }
        (!v.is_empty()).then_some(v)
    }
}

/// Most entries an allowed-archdomains list may have (a fleet's tags number in the hundreds).
pub const MAX_ALLOWED_ENTRIES: usize = 100_000;
/// Longest entry, in bytes.
const MAX_ALLOWED_ENTRY: usize = 1024;

/// The allowed-archdomains list of `query archdomains` and the daily compliance report, in its
/// current spelling: one entry per line; `x/` allows `x` and its subtree, `x` allows `x` only;
/// `{name}` stands for one path part or a piece of one (`offline/{pipeline}/worker`).
///
/// The old tool's `archdomain.csv` (`MASTER_ARCHDOMAIN_TAGS` in config.sh, read by
/// `utils/compare-archdomain-to-master.py`) is read as it is, recognised by a `.csv` name or a
/// comma in its first line: the first row is a header and is skipped, the tag is the first
/// column, the other columns are ignored, and its entries keep their old meaning, rewritten
/// into the current spelling: there `x` allowed `x` and its subtree (`matches_subtag`: `^x$`
/// or `^x/.*$`) and `x/` allowed only the tag written `x/` (which is `x` once cleaned). Each
/// construct whose meaning changed gives one warning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedList {
    /// The entries in the current spelling, in file order.
    pub entries: Vec<String>,
    /// One line per construct that changed meaning since the old tool.
    pub warnings: Vec<String>,
}

impl AllowedList {
    pub fn parse(text: &str, origin: &str) -> Result<AllowedList, String> {
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or_default();
        let old = origin.to_ascii_lowercase().ends_with(".csv") || first.contains(',');
        let list = if old {
            Self::parse_old_csv(text, origin)?
        } else {
            Self::parse_current(text)
        };
        if list.entries.len() > MAX_ALLOWED_ENTRIES {
            return Err(format!(
                "{origin}: {} entries, more than the {MAX_ALLOWED_ENTRIES} allowed",
                list.entries.len()
            ));
        }
        if let Some(e) = list.entries.iter().find(|e| e.len() > MAX_ALLOWED_ENTRY) {
            return Err(format!(
                "{origin}: an entry of {} bytes, more than {MAX_ALLOWED_ENTRY}: `{}...`",
                e.len(),
                e.chars().take(40).collect::<String>()
            ));
        }
        Ok(list)
    }

    fn parse_current(text: &str) -> AllowedList {
        let entries: Vec<String> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default().trim())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        // Its own format: nothing changed meaning (`.` was never a pattern here).
        AllowedList {
            entries,
            warnings: Vec::new(),
        }
    }

    fn parse_old_csv(text: &str, origin: &str) -> Result<AllowedList, String> {
        let mut originals = Vec::new();
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let mut list = AllowedList::default();
        let mut header = None;
        let mut extra_columns = false;
        let (mut subtree, mut exact) = (Vec::new(), Vec::new());
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| format!("{origin}: {e}"))?;
            if i == 0 {
                header = Some(record.iter().collect::<Vec<_>>().join(","));
                continue;
            }
            extra_columns |= record.iter().skip(1).any(|c| !c.trim().is_empty());
            let tag = record.get(0).unwrap_or_default().trim();
            if tag.is_empty() {
                continue;
            }
            originals.push(tag.to_owned());
            // Same meaning, new spelling: toggle the trailing slash.
            if let Some(x) = tag.strip_suffix('/') {
                exact.push(tag.to_owned());
                list.entries.push(x.to_owned());
            } else {
                subtree.push(tag.to_owned());
                list.entries.push(format!("{tag}/"));
            }
            if list.entries.len() > MAX_ALLOWED_ENTRIES {
                break;
            }
        }
        let mut w = Vec::new();
        if let Some(h) = header {
            w.push(format!(
                "{origin}: old archdomain.csv: the first row is a header and is skipped, as \
                 the old tool did: `{}`",
                h.chars().take(200).collect::<String>()
            ));
        }
        if extra_columns {
            w.push(format!(
                "{origin}: only the first column is read (the archdomain); the other columns \
                 are ignored"
            ));
        }
        if !subtree.is_empty() {
            w.push(format!(
                "{origin}: {} also allow their subtree, as in the old tool; in the current \
                 one-per-line format that is written with a trailing `/`",
                quoted(&subtree)
            ));
        }
        if !exact.is_empty() {
            w.push(format!(
                "{origin}: {} allow only that archdomain, as in the old tool; in the current \
                 one-per-line format a trailing `/` allows the subtree too",
                quoted(&exact)
            ));
        }
        w.extend(regex_warning(origin, &originals));
        list.warnings = w;
        Ok(list)
    }

    /// Logs the warnings (once per load) and returns the entries.
    pub fn logged(self) -> Vec<String> {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        self.entries
    }
}

/// The old tool made each entry a regular expression (only `{...}` was replaced), so `.`
/// matched any character; now the entry is literal.
fn regex_warning(origin: &str, entries: &[String]) -> Option<String> {
    let regexy: Vec<&str> = entries
        .iter()
        .filter(|e| {
            TEMPLATE
                .replace_all(e, "")
                .contains(['.', '^', '$', '*', '+', '?', '(', ')', '[', ']', '|', '\\'])
        })
        .map(String::as_str)
        .collect();
    (!regexy.is_empty()).then(|| {
        format!(
            "{origin}: {} read as literal text; the old tool read each entry as a regular \
             expression (`.` matched any character)",
            quoted(&regexy)
        )
    })
}

/// `` `a`, `b` and 3 more `` for a warning.
fn quoted(items: &[impl AsRef<str>]) -> String {
    const QUOTED: usize = 5;
    let mut s = items
        .iter()
        .take(QUOTED)
        .map(|i| format!("`{}`", i.as_ref()))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > QUOTED {
        s.push_str(&format!(" and {} more", items.len() - QUOTED));
    }
    s
}

/// `{name}` in an allowed entry (as the old tool's `re.sub("{[^}]+}", ...)`).
static TEMPLATE: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"\{[^}]+\}").expect("a valid pattern"));

/// One cleaned allowed entry, ready to match cleaned archdomains.
#[derive(Clone, Debug)]
pub struct AllowedPattern {
    /// The cleaned entry without the trailing `/` (what reports name).
    pub name: String,
    /// Whether the entry allows its subtree (written with a trailing `/`).
    pub subtree: bool,
    /// For entries with `{...}`: the anchored expression (a part is `[^/]+`).
    template: Option<regex::Regex>,
}

impl AllowedPattern {
    /// `entry` in the current spelling, cleaned by `rules` like the archdomains it is compared
    /// with. `None` when nothing is left after cleaning.
    pub fn new(entry: &str, rules: &TagRules) -> Option<AllowedPattern> {
        let name = rules.archdomain(entry)?;
        let subtree = entry.trim_end().ends_with('/');
        let template = if TEMPLATE.is_match(&name) {
            let mut re = String::from("^(?:");
            let mut last = 0;
            for m in TEMPLATE.find_iter(&name) {
                re.push_str(&regex::escape(&name[last..m.start()]));
                re.push_str("[^/]+");
                last = m.end();
            }
            re.push_str(&regex::escape(&name[last..]));
            re.push_str(if subtree { ")(?:/.*)?$" } else { ")$" });
            // Entries are bounded (MAX_ALLOWED_ENTRY), so the expression is small; a refusal
            // by the size limit leaves the entry matching only itself, literally.
            regex::RegexBuilder::new(&re)
                .size_limit(1 << 20)
                .build()
                .ok()
        } else {
            None
        };
        Some(AllowedPattern {
            name,
            subtree,
            template,
        })
    }

    /// Whether a cleaned archdomain is allowed by this entry.
    pub fn matches(&self, archdomain: &str) -> bool {
        match &self.template {
            Some(re) => re.is_match(archdomain),
            None => {
                archdomain == self.name
                    || (self.subtree
                        && archdomain.len() > self.name.len()
                        && archdomain.starts_with(&self.name)
                        && archdomain.as_bytes()[self.name.len()] == b'/')
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archdomain_is_normalised_then_rewritten() {
        let rules = TagRules {
            rewrites: vec![
                Rewrite {
                    prefix: "online/mid-tier/".into(),
                    replace: "online/midtier/".into(),
                },
                Rewrite {
                    prefix: "online/".into(),
                    replace: "on/".into(),
                },
            ],
            aliases: [("legacy".to_owned(), "offline/legacy".to_owned())].into(),
            ..TagRules::default()
        };
        assert_eq!(
            rules
                .archdomain("  /Online/ Mid-Tier //Search/ ")
                .as_deref(),
            Some("online/midtier/search")
        );
        assert_eq!(rules.archdomain("online/api").as_deref(), Some("on/api"));
        assert_eq!(
            rules.archdomain("Legacy").as_deref(),
            Some("offline/legacy")
        );
        assert_eq!(rules.archdomain(" / ").as_deref(), None);
        assert_eq!(rules.archdomain("a\\b").as_deref(), Some("a/b"));
    }

    #[test]
    fn flat_values_keep_slashes_and_can_keep_case() {
        let rules = TagRules {
            lowercase: false,
            aliases: [("Production".to_owned(), "prod".to_owned())].into(),
            ..TagRules::default()
        };
        assert_eq!(rules.flat(" Production ").as_deref(), Some("prod"));
        assert_eq!(rules.flat("Stage/2").as_deref(), Some("Stage/2"));
        assert_eq!(rules.flat("   ").as_deref(), None);
    }

    fn patterns(entries: &[String]) -> Vec<AllowedPattern> {
        entries
            .iter()
            .filter_map(|e| AllowedPattern::new(e, &TagRules::default()))
            .collect()
    }

    fn allowed_by<'a>(ps: &'a [AllowedPattern], arch: &str) -> Vec<&'a str> {
        ps.iter()
            .filter(|p| p.matches(arch))
            .map(|p| p.name.as_str())
            .collect()
    }

    /// The old archdomain.csv (fixture written from config.sh's "CSV of Archdomain Tag,
    /// Component Owner, and Component UID" and compare-archdomain-to-master.py).
    #[test]
    fn old_archdomain_csv_keeps_its_meaning_with_one_warning_per_construct() {
        let list = AllowedList::parse(
            include_str!("../../tests/fixtures/old/archdomain.csv"),
            "archdomain.csv",
        )
        .unwrap();
        assert_eq!(
            list.entries,
            [
                "online/api/",
                "online/storage/",
                "online/cache",
                "offline/{pipeline}/worker/",
                "online/search.v2/",
                "legacy/"
            ]
        );
        assert_eq!(
            list.warnings,
            [
                "archdomain.csv: old archdomain.csv: the first row is a header and is skipped, \
                 as the old tool did: `Archdomain Tag,Component Owner,Component UID`",
                "archdomain.csv: only the first column is read (the archdomain); the other \
                 columns are ignored",
                "archdomain.csv: `online/api`, `online/storage`, `offline/{pipeline}/worker`, \
                 `online/search.v2`, `legacy` also allow their subtree, as in the old tool; in \
                 the current one-per-line format that is written with a trailing `/`",
                "archdomain.csv: `online/cache/` allow only that archdomain, as in the old tool; \
                 in the current one-per-line format a trailing `/` allows the subtree too",
                "archdomain.csv: `online/search.v2` read as literal text; the old tool read \
                 each entry as a regular expression (`.` matched any character)",
            ]
        );
        let ps = patterns(&list.entries);
        // The old `matches_subtag`: the entry itself or below it, at a `/`.
        assert_eq!(allowed_by(&ps, "online/api"), ["online/api"]);
        assert_eq!(allowed_by(&ps, "online/api/v1"), ["online/api"]);
        assert_eq!(allowed_by(&ps, "online/apis"), [] as [&str; 0]);
        assert_eq!(allowed_by(&ps, "legacy/x/y"), ["legacy"]);
        // `x/` in the old file allowed only the tag `x/`, which is `x` once cleaned.
        assert_eq!(allowed_by(&ps, "online/cache"), ["online/cache"]);
        assert_eq!(allowed_by(&ps, "online/cache/redis"), [] as [&str; 0]);
        // `{x}`: one part (`[^/]+`), subtree too.
        assert_eq!(
            allowed_by(&ps, "offline/etl/worker"),
            ["offline/{pipeline}/worker"]
        );
        assert_eq!(
            allowed_by(&ps, "offline/etl/worker/gpu"),
            ["offline/{pipeline}/worker"]
        );
        assert_eq!(allowed_by(&ps, "offline/etl/x/worker"), [] as [&str; 0]);
        assert_eq!(allowed_by(&ps, "offline/worker"), [] as [&str; 0]);
        // Literal now: `.` is a dot.
        assert_eq!(allowed_by(&ps, "online/search.v2"), ["online/search.v2"]);
        assert_eq!(allowed_by(&ps, "online/searchxv2"), [] as [&str; 0]);
    }

    #[test]
    fn current_allowed_list_has_no_warnings_and_templates_work_there_too() {
        let list = AllowedList::parse(
            "# master\nonline/api\n\noffline/ # subtree\nonline/{team}-web\n",
            "allowed.txt",
        )
        .unwrap();
        assert_eq!(
            list.entries,
            ["online/api", "offline/", "online/{team}-web"]
        );
        assert_eq!(list.warnings, [] as [String; 0]);
        let ps = patterns(&list.entries);
        assert_eq!(allowed_by(&ps, "online/api"), ["online/api"]);
        assert_eq!(allowed_by(&ps, "online/api/v1"), [] as [&str; 0]);
        assert_eq!(allowed_by(&ps, "offline"), ["offline"]);
        assert_eq!(allowed_by(&ps, "offline/batch"), ["offline"]);
        assert_eq!(allowed_by(&ps, "online/shop-web"), ["online/{team}-web"]);
        assert_eq!(allowed_by(&ps, "online/shop-web/x"), [] as [&str; 0]);
        assert_eq!(allowed_by(&ps, "online/-web"), [] as [&str; 0]);
        // Entries are cleaned like the tags they are compared with.
        let ps = patterns(&[" /Online/API/ ".to_owned()]);
        assert_eq!(allowed_by(&ps, "online/api/v1"), ["online/api"]);
    }

    #[test]
    fn old_format_is_recognised_by_a_comma_or_the_csv_name() {
        // A comma in the first line, whatever the name.
        let list = AllowedList::parse("tag,owner\nonline/api,web\n", "master.txt").unwrap();
        assert_eq!(list.entries, ["online/api/"]);
        // A one-column archdomain.csv: the header is still skipped.
        let list =
            AllowedList::parse("Archdomain Tag\nonline/api\n", "/etc/ARCHDOMAIN.CSV").unwrap();
        assert_eq!(list.entries, ["online/api/"]);
        assert_eq!(
            list.warnings,
            [
                "/etc/ARCHDOMAIN.CSV: old archdomain.csv: the first row is a header and is \
                 skipped, as the old tool did: `Archdomain Tag`",
                "/etc/ARCHDOMAIN.CSV: `online/api` also allow their subtree, as in the old \
                 tool; in the current one-per-line format that is written with a trailing `/`",
            ]
        );
        let big = "x\n".repeat(MAX_ALLOWED_ENTRIES + 1);
        assert_eq!(
            AllowedList::parse(&big, "a.txt").unwrap_err(),
            "a.txt: 100001 entries, more than the 100000 allowed"
        );
        let long = format!("{}\n", "a".repeat(MAX_ALLOWED_ENTRY + 1));
        assert_eq!(
            AllowedList::parse(&long, "a.txt").unwrap_err(),
            format!(
                "a.txt: an entry of 1025 bytes, more than 1024: `{}...`",
                "a".repeat(40)
            )
        );
    }
}
