//! The report parser on arbitrary bytes: it must never panic, and whatever it accepts must be a
//! valid report that survives a round trip unchanged (what the collector stores is what was
//! sent).

#![no_main]

use trafficmap_model::report::Report;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(report) = Report::from_json(data) {
        report.validate().expect("an accepted report validates");
        let again = Report::from_json(&report.to_json()).expect("a serialised report parses");
        assert_eq!(again, report);
    }
});
