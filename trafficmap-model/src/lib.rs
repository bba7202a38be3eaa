//! trafficmap's data contracts, shared by the agent, the collector and the tests: the minute
//! [`report`] an agent ships, and the [`map`] the collector builds for the viewer. Pure types and
//! validation; no I/O.

pub mod bounds;
pub mod cloud;
pub mod map;
pub mod report;
pub mod services;

/// An error and its sources on one line, `outer: inner: ...`: the one formatter every crate
/// uses for log lines and error texts. A source whose text the line already holds is left out
/// (many errors repeat their source in their own message), and newlines become spaces.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    for cause in std::iter::successors(e.source(), |c| c.source()) {
        let t = cause.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
    }
    s.replace('\n', " ").trim().to_owned()
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn error_chain_is_one_line_without_repeats() {
        let e = Outer(Middle(std::io::Error::other("line one\nline two")));
        assert_eq!(super::error_chain(&e), "outer: middle: line one line two");
    }
}
