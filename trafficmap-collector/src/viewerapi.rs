//! What the collector offers the viewer beyond maps (issue 12, item 6): the suppression presets
//! of `[viewer]` (served by `GET /api/v1/viewer-config`), and the subset of a map an export is
//! limited to (`POST /api/v1/maps/export`: the nodes and links on the viewer's screen).
//!
//! Preset patterns run in the viewer's JavaScript engine, which backtracks: they are checked
//! here by the viewer's own rules (`viewer/src/model.js::regexHazard`), so that a preset the
//! collector serves is one the viewer accepts.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use trafficmap_model::map::{Map, Totals};

/// Most presets in `[viewer]`: a select, not a database.
pub const MAX_PRESETS: usize = 64;
/// Longest preset name, characters.
pub const MAX_NAME_CHARS: usize = 80;
/// Longest suppression pattern (UTF-16 units, as the viewer counts): `MAX_REGEX_LENGTH` in
/// viewer/src/model.js.
pub const MAX_REGEX_LENGTH: usize = 200;

/// One named suppression preset: envs and/or archdomains to suppress (regular expressions, the
/// viewer's syntax, case-insensitive), and whether the suppressed nodes are hidden too.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuppressionPreset {
    pub name: String,
    /// Suppress nodes whose env matches (`external` for external addresses, `unknown` for
    /// nodes without an env).
    pub env: String,
    /// Suppress nodes whose archdomain matches (same pseudo-values as `env`).
    pub archdomain: String,
    /// Hide the suppressed nodes too, not only their links.
    pub hide_nodes: bool,
}

/// Why a pattern could take exponential time in a backtracking engine, or `None`: the port of
/// the viewer's `regexHazard` (same rules, same messages). Backreferences, and a quantified
/// group that itself holds a quantifier or an alternation, are refused.
pub fn regex_hazard(src: &str) -> Option<String> {
    if src.encode_utf16().count() > MAX_REGEX_LENGTH {
        return Some(format!("longer than {MAX_REGEX_LENGTH} characters"));
    }
    let chars: Vec<char> = src.chars().collect();
    // Per open group: whether it holds a quantifier or `|` so far.
    let mut stack: Vec<bool> = Vec::new();
    let mut in_class = false;
    let quant = |c: Option<&char>| matches!(c, Some('*' | '+' | '{'));
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let next = chars.get(i + 1);
            if !in_class && matches!(next, Some('1'..='9' | 'k')) {
                return Some("backreferences are not supported".into());
            }
            i += 2;
            continue;
        }
        if in_class {
            if c == ']' {
                in_class = false;
            }
            i += 1;
            continue;
        }
        match c {
            '[' => in_class = true,
            '(' => stack.push(false),
            '|' => {
                if let Some(top) = stack.last_mut() {
                    *top = true;
                }
            }
            ')' => {
                let risky = stack.pop().unwrap_or(false);
                let q = chars.get(i + 1);
                if risky && quant(q) {
                    return Some(
                        "a repeated group may not contain a repetition or an alternation".into(),
                    );
                }
                // A quantified group is a repetition inside its enclosing group.
                if (risky || quant(q))
                    && let Some(top) = stack.last_mut()
                {
                    *top = true;
                }
            }
            '*' | '+' | '{' => {
                if let Some(top) = stack.last_mut() {
                    *top = true;
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// A pattern the viewer will accept: no hazard, and valid syntax (checked with the `regex`
/// crate, whose syntax is the common subset of what both engines read for these patterns:
/// anchors, classes, alternation, groups, quantifiers).
pub fn check_pattern(src: &str) -> Result<(), String> {
    if let Some(h) = regex_hazard(src) {
        return Err(h);
    }
    regex::RegexBuilder::new(src)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
        .map(|_| ())
        .map_err(|e| {
            // The crate's message spans lines with a caret; the first line says what is wrong.
            let msg = e.to_string();
            msg.lines()
                .rev()
                .find(|l| l.starts_with("error:"))
                .map_or(msg.clone(), |l| l.trim_start_matches("error: ").to_owned())
        })
}

/// Checks `[viewer] suppression_presets`; the first problem, in one line.
pub fn validate_presets(presets: &[SuppressionPreset]) -> Result<(), String> {
    if presets.len() > MAX_PRESETS {
        return Err(format!(
            "viewer.suppression_presets: {} presets, at most {MAX_PRESETS}",
            presets.len()
        ));
    }
    let mut names = HashSet::new();
    for (i, p) in presets.iter().enumerate() {
        let at = format!("viewer.suppression_presets[{i}]");
        let name = p.name.trim();
        if name.is_empty() {
            return Err(format!("{at}.name: required"));
        }
        if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(format!(
                "{at}.name: at most {MAX_NAME_CHARS} characters, no control characters"
            ));
        }
        if !names.insert(name) {
            return Err(format!("{at}.name `{name}`: used twice"));
        }
        if p.env.is_empty() && p.archdomain.is_empty() {
            return Err(format!("{at} `{name}`: give env, archdomain or both"));
        }
        for (key, pat) in [("env", &p.env), ("archdomain", &p.archdomain)] {
            if !pat.is_empty() {
                check_pattern(pat).map_err(|e| format!("{at}.{key} `{pat}`: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The answer of `GET /api/v1/viewer-config`.
pub fn viewer_config_json(presets: &[SuppressionPreset]) -> serde_json::Value {
    serde_json::json!({ "suppression_presets": presets })
}

/// Most node ids and links one subset request may name.
pub const MAX_SUBSET_NODES: usize = 1_000_000;
pub const MAX_SUBSET_LINKS: usize = 4_000_000;
/// Largest subset request body, bytes (about 40 bytes per id or link).
pub const MAX_SUBSET_BODY: u64 = 64 << 20;

/// The part of a map an export covers: the nodes shown, and the links shown as
/// `[source, target]` pairs. A pair covers every link of the map with those ends (there is one
/// per direction); links between two shown nodes that are not listed are left out, and so are
/// ids the map does not hold (a diff's `gone` nodes, say).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    pub nodes: Vec<String>,
    pub links: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubsetError {
    #[error("not a subset: {0}")]
    Json(String),
    #[error("{0} nodes listed, at most {MAX_SUBSET_NODES}")]
    TooManyNodes(usize),
    #[error("{0} links listed, at most {MAX_SUBSET_LINKS}")]
    TooManyLinks(usize),
}

impl Subset {
    /// Parses a request body (`{"nodes": [...], "links": [[source, target], ...]}`).
    pub fn from_json(body: &[u8]) -> Result<Subset, SubsetError> {
        let s: Subset =
            serde_json::from_slice(body).map_err(|e| SubsetError::Json(e.to_string()))?;
        if s.nodes.len() > MAX_SUBSET_NODES {
            return Err(SubsetError::TooManyNodes(s.nodes.len()));
        }
        if s.links.len() > MAX_SUBSET_LINKS {
            return Err(SubsetError::TooManyLinks(s.links.len()));
        }
        Ok(s)
    }

    /// The map limited to this subset: its nodes in the map's order, the listed links between
    /// them, totals recomputed (saturating) so the result is a valid map.
    pub fn apply(&self, map: &Map) -> Map {
        let nodes: HashSet<&str> = self.nodes.iter().map(String::as_str).collect();
        let links: HashSet<(&str, &str)> = self
            .links
            .iter()
            .map(|(s, t)| (s.as_str(), t.as_str()))
            .collect();
        let kept_nodes: Vec<_> = map
            .nodes
            .iter()
            .filter(|n| nodes.contains(n.id.as_str()))
            .cloned()
            .collect();
        let kept_links: Vec<_> = map
            .links
            .iter()
            .filter(|l| {
                nodes.contains(l.source.as_str())
                    && nodes.contains(l.target.as_str())
                    && links.contains(&(l.source.as_str(), l.target.as_str()))
            })
            .cloned()
            .collect();
        let mut totals = Totals {
            nodes: kept_nodes.len() as u64,
            links: kept_links.len() as u64,
            ..map.totals.clone()
        };
        totals.bytes = 0;
        totals.connections = 0;
        totals.cost_usd = 0.0;
        totals.disagreement_bytes = 0;
        for l in &kept_links {
            totals.bytes = totals
                .bytes
                .saturating_add(l.bytes_to_target.saturating_add(l.bytes_to_source));
            totals.connections = totals.connections.saturating_add(l.connections);
            totals.cost_usd += l.cost_usd;
            totals.disagreement_bytes = totals
                .disagreement_bytes
                .saturating_add(l.disagreement_bytes);
        }
        Map {
            schema: map.schema.clone(),
            view: map.view,
            from: map.from,
            to: map.to,
            generated_at: map.generated_at,
            nodes: kept_nodes,
            links: kept_links,
            totals,
            warnings: map.warnings.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Map {
        Map::from_json(include_bytes!("../../golden/maps/instances-20261123.json")).unwrap()
    }

    #[test]
    fn hazards_match_the_viewer() {
        // The cases of viewer/test/unit/model.test.mjs ("suppression patterns from a shared URL
        // cannot hang the tab"), same verdicts.
        for ok in [
            "^prod",
            "^infra/monitoring",
            "(prod|stage)",
            "^(prod|stage)?$",
            "(ab)+",
            "[(+]+",
            "a+b*c",
            "\\(a+\\)+",
            "(?:dev)+",
            "^x{2,3}$",
            "^external$",
        ] {
            assert_eq!(regex_hazard(ok), None, "{ok}");
        }
        let nested = "a repeated group may not contain a repetition or an alternation";
        let backref = "backreferences are not supported";
        for (bad, why) in [
            ("(a+)+$", nested),
            ("(a*)*b", nested),
            ("(x+x+)+y", nested),
            ("(a|aa)+$", nested),
            ("(a|a)*", nested),
            ("((ab)*)+", nested),
            ("(.*){2,}", nested),
            ("(\\w+\\s?)+$", nested),
            ("(a)\\1", backref),
            ("(?<x>a)\\k<x>", backref),
        ] {
            assert_eq!(regex_hazard(bad).as_deref(), Some(why), "{bad}");
        }
        let long = "a".repeat(201);
        assert_eq!(
            regex_hazard(&long).as_deref(),
            Some("longer than 200 characters")
        );
        assert_eq!(regex_hazard(&"a".repeat(200)), None);
    }

    #[test]
    fn the_old_tools_patterns_pass() {
        // static/index.html of the old D3 tool, verbatim.
        for p in [
            "^offline\\/ingestion\\/proxy",
            "^infrastructure\\/core\\/zookeeper",
            "^infrastructure\\/core\\/kafka$",
            "^external$",
            "^aws\\/elb$",
            "^corp/",
            "^unknown",
            "^usw1-prod$",
            "^aws-external$",
        ] {
            assert_eq!(check_pattern(p), Ok(()), "{p}");
        }
        assert_eq!(
            check_pattern("(?=a)b"),
            Err("look-around, including look-ahead and look-behind, is not supported".into())
        );
    }

    #[test]
    fn presets_are_checked() {
        let p = |name: &str, env: &str, arch: &str| SuppressionPreset {
            name: name.into(),
            env: env.into(),
            archdomain: arch.into(),
            hide_nodes: false,
        };
        assert_eq!(
            validate_presets(&[
                p("monitoring", "", "^infra/monitoring"),
                p("outside", "^(external|unknown)$", "")
            ]),
            Ok(())
        );
        assert_eq!(
            validate_presets(&[p("", "^a", "")]),
            Err("viewer.suppression_presets[0].name: required".into())
        );
        assert_eq!(
            validate_presets(&[p("a", "^a", ""), p("a", "^b", "")]),
            Err("viewer.suppression_presets[1].name `a`: used twice".into())
        );
        assert_eq!(
            validate_presets(&[p("a", "", "")]),
            Err("viewer.suppression_presets[0] `a`: give env, archdomain or both".into())
        );
        assert_eq!(
            validate_presets(&[p("a", "", "(a+)+$")]),
            Err("viewer.suppression_presets[0].archdomain `(a+)+$`: a repeated group may not contain a repetition or an alternation".into())
        );
        assert_eq!(
            validate_presets(&[p("a", "([", "")]),
            Err("viewer.suppression_presets[0].env `([`: unclosed character class".into())
        );
        assert_eq!(
            validate_presets(&[p("a\nb", "x", "")]),
            Err(
                "viewer.suppression_presets[0].name: at most 80 characters, no control characters"
                    .into()
            )
        );
        let many: Vec<_> = (0..65).map(|i| p(&format!("p{i}"), "x", "")).collect();
        assert_eq!(
            validate_presets(&many),
            Err("viewer.suppression_presets: 65 presets, at most 64".into())
        );
        assert_eq!(
            viewer_config_json(&[p("a", "^x$", "")]).to_string(),
            r#"{"suppression_presets":[{"archdomain":"","env":"^x$","hide_nodes":false,"name":"a"}]}"#
        );
    }

    #[test]
    fn presets_come_from_the_config_file_and_a_bad_one_stops_the_start() {
        let toml = "[[viewer.suppression_presets]]\nname = \"Internal only\"\nenv = \"^(external|unknown)$\"\nhide_nodes = true\n";
        let c = crate::config::Config::from_toml(toml, "c.toml").unwrap();
        assert_eq!(
            c.viewer.suppression_presets,
            vec![SuppressionPreset {
                name: "Internal only".into(),
                env: "^(external|unknown)$".into(),
                archdomain: String::new(),
                hide_nodes: true,
            }]
        );
        assert_eq!(c.validate(), Ok(()));
        let bad = crate::config::Config::from_toml(
            "[[viewer.suppression_presets]]\nname = \"x\"\narchdomain = \"(a|aa)*\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(
            bad.validate(),
            Err("viewer.suppression_presets[0].archdomain `(a|aa)*`: a repeated group may not contain a repetition or an alternation".into())
        );
        let err = crate::config::Config::from_toml(
            "[[viewer.suppression_presets]]\nname = \"x\"\nenvs = \"a\"\n",
            "c.toml",
        )
        .unwrap_err();
        assert!(err.starts_with("c.toml:3: unknown field `envs`"), "{err}");
    }

    #[test]
    fn a_subset_keeps_the_listed_nodes_and_links_between_them() {
        let m = map();
        let api = "i-0a1b2c3d4e5f60718";
        let db = "i-0d1b2c3d4e5f60721";
        let s = Subset {
            nodes: vec![db.into(), api.into(), "no-such-node".into()],
            // The second pair is not in the map; the third names a node left out.
            links: vec![
                (api.into(), db.into()),
                (db.into(), api.into()),
                ("ip:203.0.113.50".into(), api.into()),
            ],
        };
        let sub = s.apply(&m);
        sub.validate().unwrap();
        assert_eq!(
            sub.nodes.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
            vec![api, db]
        );
        assert_eq!(sub.links.len(), 1);
        assert_eq!(
            (sub.links[0].source.as_str(), sub.links[0].target.as_str()),
            (api, db)
        );
        assert_eq!(
            (sub.totals.nodes, sub.totals.links, sub.totals.bytes),
            (2, 1, 1_000_003 + 4_200_512)
        );
        // Everything listed: the map itself.
        let all = Subset {
            nodes: m.nodes.iter().map(|n| n.id.clone()).collect(),
            links: m
                .links
                .iter()
                .map(|l| (l.source.clone(), l.target.clone()))
                .collect(),
        };
        let whole = all.apply(&m);
        assert_eq!((&whole.nodes, &whole.links), (&m.nodes, &m.links));
        assert_eq!(
            (
                whole.totals.nodes,
                whole.totals.links,
                whole.totals.bytes,
                whole.totals.connections
            ),
            (
                m.totals.nodes,
                m.totals.links,
                m.totals.bytes,
                m.totals.connections
            )
        );
        assert!((whole.totals.cost_usd - m.totals.cost_usd).abs() < 1e-9);
    }

    #[test]
    fn subset_requests_are_bounded() {
        assert_eq!(
            Subset::from_json(br#"{"nodes":["a"],"links":[["a","a"]]}"#),
            Ok(Subset {
                nodes: vec!["a".into()],
                links: vec![("a".into(), "a".into())]
            })
        );
        assert!(matches!(
            Subset::from_json(br#"{"nodes":["a"],"links":[],"x":1}"#),
            Err(SubsetError::Json(_))
        ));
        assert!(matches!(
            Subset::from_json(br#"{"nodes":[1],"links":[]}"#),
            Err(SubsetError::Json(_))
        ));
        let many = format!(
            "{{\"nodes\":[{}],\"links\":[]}}",
            vec!["\"\""; MAX_SUBSET_NODES + 1].join(",")
        );
        assert_eq!(
            Subset::from_json(many.as_bytes()),
            Err(SubsetError::TooManyNodes(MAX_SUBSET_NODES + 1))
        );
    }
}
