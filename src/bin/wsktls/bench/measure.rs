//! Repetition and statistics. These machines are noisy: every figure is a median over
//! repetitions, and contenders that are compared run interleaved (A, B, A, B, ...) so
//! that a slow spell of the machine falls on both.

use std::time::Duration;

use crate::words::Failure;

/// The median of `xs` (0 for none).
pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// The `p`th percentile of `xs`, nearest rank (0 for none).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// Bytes per second for `bytes` moved in `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// MiB/s from bytes per second.
pub fn mib_s(bytes_per_second: f64) -> f64 {
    bytes_per_second / (1024.0 * 1024.0)
}

/// One contender: a run returns its rate (higher is better).
pub type Run<'a> = Box<dyn FnMut() -> Result<f64, Failure> + 'a>;

/// Runs every contender `reps` times, interleaved, after one warm-up run each; returns each
/// one's median.
pub fn interleaved(reps: usize, contenders: &mut [Run<'_>]) -> Result<Vec<f64>, Failure> {
    let mut results = vec![Vec::with_capacity(reps); contenders.len()];
    for run in contenders.iter_mut() {
        run()?;
    }
    for _ in 0..reps {
        for (run, out) in contenders.iter_mut().zip(results.iter_mut()) {
            out.push(run()?);
        }
    }
    Ok(results.iter().map(|r| median(r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles_by_nearest_rank() {
        let xs = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&xs), 3.0);
        assert_eq!(percentile(&xs, 99.0), 5.0);
        assert_eq!(percentile(&xs, 20.0), 1.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn contenders_run_interleaved_after_a_warm_up() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut runs: Vec<Run<'_>> = vec![
            Box::new(|| {
                order.borrow_mut().push('a');
                Ok(1.0)
            }),
            Box::new(|| {
                order.borrow_mut().push('b');
                Ok(2.0)
            }),
        ];
        let medians = interleaved(2, &mut runs).unwrap_or_default();
        drop(runs);
        assert_eq!(medians, vec![1.0, 2.0]);
        assert_eq!(order.into_inner(), vec!['a', 'b', 'a', 'b', 'a', 'b']);
    }
}
