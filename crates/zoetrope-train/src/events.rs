//! What a training loop reports to its caller (the CLI draws a progress bar and prints lines).

/// One report from a training loop.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Training (re)starts at `step` of `total`.
    Start { step: usize, total: usize },
    /// A step finished; `metrics` are running means since the last log line.
    Step {
        step: usize,
        total: usize,
        metrics: Vec<(&'static str, f64)>,
        /// True when this step's metrics were written to the log.
        logged: bool,
    },
    /// An evaluation at `step`.
    Eval {
        step: usize,
        metrics: Vec<(&'static str, f64)>,
    },
    /// A checkpoint was written after `step` steps.
    Checkpoint { step: usize },
    /// Something slow is happening (building a cache, …): `done` of `total`.
    Prepare {
        what: &'static str,
        done: usize,
        total: usize,
    },
}

/// Running means of named metrics between two log lines.
#[derive(Debug, Default)]
pub struct Meter {
    sums: Vec<(&'static str, f64, usize)>,
}

impl Meter {
    pub fn add(&mut self, name: &'static str, value: f64) {
        match self.sums.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, s, c)) => {
                *s += value;
                *c += 1;
            }
            None => self.sums.push((name, value, 1)),
        }
    }

    pub fn means(&self) -> Vec<(&'static str, f64)> {
        self.sums
            .iter()
            .map(|&(n, s, c)| (n, s / c.max(1) as f64))
            .collect()
    }

    pub fn reset(&mut self) {
        self.sums.clear();
    }
}
