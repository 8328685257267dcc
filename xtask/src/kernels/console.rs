//! Reading a guest's serial console: the markers `/init` prints around each suite and libtest's
//! own `test result:` lines, into one report per kernel.

use crate::shell::TestTally;

/// Prefix of every line `/init` prints for the host to parse.
pub const MARKER: &str = "GKMATRIX";

/// One suite as the guest ran it.
#[derive(Debug, Default, PartialEq)]
pub struct SuiteRun {
    pub name: String,
    /// The binary's exit status; `None` if the guest stopped before it ended.
    pub exit: Option<i32>,
    pub seconds: Option<f64>,
    /// Whether libtest printed a `test result:` line (it does not when the binary crashes).
    pub reported: bool,
}

/// What a guest printed on its console.
#[derive(Debug, Default)]
pub struct Report {
    /// `uname -r`, e.g. `6.1.0-44-amd64`.
    pub release: Option<String>,
    /// `uname -v`, which holds Debian's package version, e.g. `#1 SMP … Debian 6.1.176-1 (…)`.
    pub build: Option<String>,
    pub cpus: Option<String>,
    /// `insmod` failures: module and exit status.
    pub failed_modules: Vec<(String, String)>,
    pub suites: Vec<SuiteRun>,
    pub tally: TestTally,
    /// `/init` reached its last line.
    pub finished: bool,
}

impl Report {
    pub fn parse(console: &str) -> Report {
        let mut report = Report::default();
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(at) = line.find("test result: ") {
                report.tally.observe(&line[at..]);
                if let Some(suite) = report.suites.last_mut() {
                    suite.reported = true;
                }
            }
            let Some(at) = line.find(MARKER) else {
                continue;
            };
            let rest = line[at + MARKER.len()..].trim();
            let (word, value) = rest.split_once(' ').unwrap_or((rest, ""));
            match word {
                "release" => report.release = Some(value.to_string()),
                "build" => report.build = Some(value.to_string()),
                "cpus" => report.cpus = Some(value.to_string()),
                "module" => {
                    let (module, status) = value.split_once(" rc=").unwrap_or((value, "?"));
                    if status != "0" {
                        report
                            .failed_modules
                            .push((module.to_string(), status.to_string()));
                    }
                }
                "suite-start" => report.suites.push(SuiteRun {
                    name: value.to_string(),
                    ..SuiteRun::default()
                }),
                "suite-end" => {
                    if let Some(suite) = report.suites.last_mut() {
                        suite.exit = field(value, "rc").and_then(|v| v.parse().ok());
                        let start = field(value, "start").and_then(|v| v.parse::<f64>().ok());
                        let end = field(value, "end").and_then(|v| v.parse::<f64>().ok());
                        suite.seconds = start.zip(end).map(|(s, e)| e - s);
                    }
                }
                "end" => report.finished = true,
                _ => {}
            }
        }
        report
    }

    /// Debian's version of the kernel, from `uname -v` (`… Debian 6.1.176-1 (2025-…)`).
    pub fn debian_version(&self) -> Option<&str> {
        let build = self.build.as_deref()?;
        let (_, after) = build.split_once("Debian ")?;
        after.split_whitespace().next()
    }

    /// The version booted, as precise as the guest said it: release and Debian version.
    pub fn version(&self) -> String {
        match (self.release.as_deref(), self.debian_version()) {
            (Some(release), Some(debian)) => format!("{release} (Debian {debian})"),
            (Some(release), None) => release.to_string(),
            _ => "unknown (no release line on the console)".to_string(),
        }
    }

    /// Why this kernel fails the run, if it does: every reason, one per line.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.release.is_none() {
            problems.push("the guest never reached /init".to_string());
        }
        for (module, status) in &self.failed_modules {
            problems.push(format!("insmod {module} failed (exit status {status})"));
        }
        for suite in &self.suites {
            match suite.exit {
                None => problems.push(format!("suite {} never finished", suite.name)),
                Some(0) => {}
                Some(code) if suite.reported => {
                    problems.push(format!("suite {} failed (exit status {code})", suite.name));
                }
                Some(code) => problems.push(format!(
                    "suite {} exited with status {code} before libtest reported a result",
                    suite.name
                )),
            }
        }
        if self.release.is_some() && !self.finished {
            problems.push("/init stopped before its end marker".to_string());
        }
        problems
    }
}

/// `key=value` in a space-separated marker line.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.split_whitespace()
        .find_map(|part| part.strip_prefix(key)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
[    1.2] some kernel line\r
GKMATRIX module veth.ko rc=0\r
GKMATRIX release 6.1.0-44-amd64\r
GKMATRIX build #1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2025-11-01)\r
GKMATRIX suite-start program\r
test result: ok. 13 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 2.1s\r
GKMATRIX suite-end program rc=0 start=3.50 end=6.25\r
GKMATRIX suite-start differential\r
test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\r
GKMATRIX suite-end differential rc=101 start=6.30 end=9.00\r
GKMATRIX suite-start filter_e2e\r
GKMATRIX suite-end filter_e2e rc=127 start=9.10 end=9.20\r
GKMATRIX end\r
";

    #[test]
    fn versions_tallies_and_timings_are_read() {
        let report = Report::parse(CONSOLE);
        assert_eq!(report.version(), "6.1.0-44-amd64 (Debian 6.1.176-1)");
        assert_eq!(
            (
                report.tally.passed,
                report.tally.failed,
                report.tally.ignored
            ),
            (14, 2, 1)
        );
        assert_eq!(report.suites.len(), 3);
        assert_eq!(report.suites[0].exit, Some(0));
        assert!(
            report.suites[0]
                .seconds
                .is_some_and(|s| (s - 2.75).abs() < 1e-9)
        );
        assert!(report.finished);
    }

    #[test]
    fn failed_suites_and_crashes_are_problems() {
        let problems = Report::parse(CONSOLE).problems();
        assert_eq!(
            problems,
            [
                "suite differential failed (exit status 101)",
                "suite filter_e2e exited with status 127 before libtest reported a result"
            ]
        );
    }

    #[test]
    fn a_guest_that_stops_early_is_a_problem() {
        let problems =
            Report::parse("GKMATRIX release 5.10.0-30-amd64\nGKMATRIX suite-start program\n")
                .problems();
        assert_eq!(
            problems,
            [
                "suite program never finished",
                "/init stopped before its end marker"
            ]
        );
        assert_eq!(
            Report::parse("Kernel panic").problems(),
            ["the guest never reached /init"]
        );
    }
}
