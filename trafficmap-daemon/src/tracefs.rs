//! tracefs: where it is mounted, and the layout of tracepoint records (`events/*/*/format`).

use std::path::{Path, PathBuf};

/// One `field:` line of a tracepoint `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// Parses the fields of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?;
            let mut parts = decl.split(';').map(str::trim);
            // `unsigned char saddr[4]` -> `saddr`
            let name = parts
                .next()?
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_owned();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            Some(Field {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

/// Compares the fields the probe reads with the kernel's record layout. Returns one line per
/// mismatch; empty means the probe's compiled layout is right for this kernel.
pub fn check_fields(
    event: &str,
    fields: &[Field],
    expected: &[(&str, usize, usize)],
) -> Vec<String> {
    expected
        .iter()
        .filter_map(|&(name, offset, size)| match fields.iter().find(|f| f.name == name) {
            None => Some(format!("{event}: no field `{name}`")),
            Some(f) if f.offset != offset || f.size != size => Some(format!(
                "{event}: field `{name}` at offset {} size {}, the probe expects offset {offset} size {size}",
                f.offset, f.size
            )),
            Some(_) => None,
        })
        .collect()
}

/// Why tracefs cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum Unavailable {
    NotMounted,
    /// Mounted, but this process may not read it (tracefs is root-only).
    PermissionDenied(PathBuf),
}

/// The tracefs mount point.
pub fn mount_point() -> Result<PathBuf, Unavailable> {
    let mut denied = None;
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let events = PathBuf::from(p).join("events");
        match std::fs::metadata(&events) {
            Ok(m) if m.is_dir() => return Ok(PathBuf::from(p)),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                denied.get_or_insert(PathBuf::from(p));
            }
            _ => {}
        }
    }
    Err(denied.map_or(Unavailable::NotMounted, Unavailable::PermissionDenied))
}

/// Reads `events/<category>/<name>/format`; `None` if the event does not exist on this kernel.
pub fn read_format(tracefs: &Path, event: &str) -> Option<Vec<Field>> {
    std::fs::read_to_string(tracefs.join("events").join(event).join("format"))
        .ok()
        .map(|t| parse_format(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: sock_send_length
ID: 1700
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * sk;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 protocol;\toffset:18;\tsize:2;\tsigned:0;
\tfield:int ret;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"sk address = %p\", REC->sk
";

    #[test]
    fn parses_fields() {
        let f = parse_format(FORMAT);
        assert_eq!(f.len(), 6);
        assert_eq!(
            f[2],
            Field {
                name: "sk".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!(f[5].name, "saddr_v6");
        assert_eq!(f[5].offset, 40);
    }

    #[test]
    fn reports_mismatches() {
        let f = parse_format(FORMAT);
        assert!(check_fields("e", &f, &[("sk", 8, 8), ("ret", 20, 4)]).is_empty());
        assert_eq!(
            check_fields("e", &f, &[("ret", 24, 4), ("flags", 24, 4)]),
            vec![
                "e: field `ret` at offset 20 size 4, the probe expects offset 24 size 4".to_owned(),
                "e: no field `flags`".to_owned()
            ]
        );
    }
}
