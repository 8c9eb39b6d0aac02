//! Running a scenario: waiting for an effect to show, and named steps whose failures say
//! which step failed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            match last_err {
                Some(e) => bail!("{what}: not within {timeout:?} (last error: {e:#})"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs one named step of a scenario; a failure, an error or a failed assertion alike, names
/// the step.
pub fn step<T>(name: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    println!("step: {name}");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(result) => result.with_context(|| format!("step `{name}` failed")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(a panic without a message)");
            panic!("step `{name}` failed: {message}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_names_itself_in_the_error() {
        let err = step("the beacon reaches the origin", || -> Result<()> {
            bail!("connection refused")
        })
        .unwrap_err();
        let message = format!("{err:#}");
        assert_eq!(
            message,
            "step `the beacon reaches the origin` failed: connection refused"
        );
        assert_eq!(step("passes", || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_failed_assertion_names_its_step() {
        let panic = std::panic::catch_unwind(|| {
            step("bots get the page untouched", || -> Result<()> {
                assert_eq!(1 + 1, 3, "arithmetic");
                Ok(())
            })
        })
        .unwrap_err();
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            message.starts_with("step `bots get the page untouched` failed: assertion"),
            "{message}"
        );
        assert!(message.contains("arithmetic"), "{message}");
    }
}
