//! [`Runner`]: named scenarios in sequence on one fixture. Each is timed and printed; a failure
//! (an error or a panic) is recorded with the scenario's name and the rest still run.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;

/// Picks scenarios by name: `TANDEM_SCENARIO=reflect,transactions`.
pub const SCENARIO_VAR: &str = "TANDEM_SCENARIO";

/// A scenario's outcome; any error type converts with `?`.
pub type ScenarioResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Where the latest panic happened (a scenario's assertion), for the summary.
static LAST_PANIC_AT: Mutex<Option<String>> = Mutex::new(None);

/// Wraps the panic hook once so that a failed assertion's location reaches the summary.
fn record_panic_locations() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                *LAST_PANIC_AT.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("{}:{}", at.file(), at.line()));
            }
            previous(info);
        }));
    });
}

/// One scenario's record.
#[derive(Debug, Clone)]
struct Outcome {
    name: String,
    took: Duration,
    failure: Option<String>,
}

/// Runs scenarios and keeps their outcomes.
#[derive(Debug)]
pub struct Runner {
    label: String,
    filter: Option<Vec<String>>,
    limit: Duration,
    outcomes: Vec<Outcome>,
}

impl Runner {
    /// A runner whose filter comes from [`SCENARIO_VAR`]; `limit` bounds each scenario.
    #[must_use]
    pub fn from_env(label: &str, limit: Duration) -> Self {
        let filter = std::env::var(SCENARIO_VAR).ok().map(|names| {
            names
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect()
        });
        Self {
            label: label.to_owned(),
            filter,
            limit,
            outcomes: Vec::new(),
        }
    }

    /// Whether the filter lets `name` run.
    #[must_use]
    pub fn selected(&self, name: &str) -> bool {
        self.filter
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == name))
    }

    /// Runs `scenario` unless filtered out, printing its name, duration and outcome.
    pub async fn run(&mut self, name: &str, scenario: impl Future<Output = ScenarioResult>) {
        if !self.selected(name) {
            return;
        }
        eprintln!("[{}] scenario {name} ...", self.label);
        record_panic_locations();
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(self.limit, AssertUnwindSafe(scenario).catch_unwind()).await;
        let took = started.elapsed();
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(err))) => Some(err.to_string()),
            Ok(Err(panic)) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                let at = LAST_PANIC_AT
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                    .unwrap_or_else(|| "unknown location".to_owned());
                Some(format!("panicked at {at}: {message}"))
            }
            Err(_) => Some(format!("did not finish within {:?}", self.limit)),
        };
        match &failure {
            None => eprintln!("[{}] scenario {name}: ok in {took:.2?}", self.label),
            Some(why) => eprintln!(
                "[{}] scenario {name}: FAILED in {took:.2?}: {why}",
                self.label
            ),
        }
        self.outcomes.push(Outcome {
            name: name.to_owned(),
            took,
            failure,
        });
    }

    /// Whether any scenario failed, or the filter matched none.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.outcomes.is_empty() || self.outcomes.iter().any(|o| o.failure.is_some())
    }

    /// One line per scenario, then every failure with its reason.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut out = format!("[{}] scenarios:\n", self.label);
        if self.outcomes.is_empty() {
            out.push_str("  none ran (check TANDEM_SCENARIO)\n");
        }
        for o in &self.outcomes {
            let status = if o.failure.is_some() { "FAILED" } else { "ok" };
            out.push_str(&format!("  {:<28} {status:<6} {:>9.2?}\n", o.name, o.took));
        }
        for o in self.outcomes.iter().filter(|o| o.failure.is_some()) {
            out.push_str(&format!(
                "\nscenario {} failed: {}\n",
                o.name,
                o.failure.as_deref().unwrap_or_default()
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(filter: Option<&[&str]>, limit: Duration) -> Runner {
        Runner {
            label: "unit".into(),
            filter: filter.map(|names| names.iter().map(|n| (*n).to_owned()).collect()),
            limit,
            outcomes: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_failure_is_recorded_with_its_name_and_the_rest_still_run() {
        let mut r = runner(None, Duration::from_secs(5));
        r.run("fine", async { Ok(()) }).await;
        r.run("errs", async { Err("the reason".into()) }).await;
        r.run("panics", async { panic!("assertion text") }).await;
        r.run("after", async { Ok(()) }).await;
        assert!(r.failed());
        let names: Vec<_> = r.outcomes.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["fine", "errs", "panics", "after"]);
        let summary = r.summary();
        assert!(
            summary.contains("scenario errs failed: the reason"),
            "{summary}"
        );
        assert!(
            summary.contains("scenario panics failed: panicked at"),
            "{summary}"
        );
        assert!(
            summary.contains("runner.rs"),
            "the panic's location: {summary}"
        );
        assert!(summary.contains("assertion text"), "{summary}");
        assert!(!summary.contains("scenario fine failed"), "{summary}");
    }

    #[tokio::test]
    async fn all_passing_is_not_a_failure() {
        let mut r = runner(None, Duration::from_secs(5));
        r.run("one", async { Ok(()) }).await;
        assert!(!r.failed(), "{}", r.summary());
    }

    #[tokio::test]
    async fn the_filter_runs_only_named_scenarios_and_matching_none_fails() {
        let mut r = runner(Some(&["b"]), Duration::from_secs(5));
        r.run("a", async { Err("must not run".into()) }).await;
        r.run("b", async { Ok(()) }).await;
        assert_eq!(r.outcomes.len(), 1);
        assert!(!r.failed());

        let mut r = runner(Some(&["typo"]), Duration::from_secs(5));
        r.run("a", async { Ok(()) }).await;
        assert!(r.failed(), "nothing ran");
        assert!(r.summary().contains("none ran"));
    }

    #[tokio::test]
    async fn a_scenario_over_its_limit_fails() {
        let mut r = runner(None, Duration::from_millis(50));
        r.run("slow", async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
        assert!(
            r.summary().contains("did not finish within 50ms"),
            "{}",
            r.summary()
        );
    }
}
