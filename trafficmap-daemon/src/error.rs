//! The crate's error-chain formatter (the workspace's one, plus aya's trailer removed): the loader's skip reasons, the shipper's retry details
//! and log lines all render an error and its sources the same way.

use std::error::Error as StdError;

/// An error and its sources on one line ([`trafficmap_model::error_chain`]), without the empty
/// "Verifier output:" trailer aya appends to every load error.
pub fn chain(e: &dyn StdError) -> String {
    trafficmap_model::error_chain(e)
        .trim_end_matches("Verifier output:")
        .trim()
        .to_owned()
}

/// Whether `e` or one of its sources is an OS error with this errno.
pub fn has_errno(e: &(dyn StdError + 'static), errno: i32) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("attaching x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn one_line_with_sources_and_errno() {
        let e = Outer(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            chain(&e),
            "attaching x: Operation not permitted (os error 1)"
        );
        assert!(has_errno(&e, libc::EPERM));
        assert!(!has_errno(&e, libc::ENOENT));
    }
}
