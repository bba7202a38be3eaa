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
}
