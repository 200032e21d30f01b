//! Progress display: bars for counted work, a delayed spinner for single long steps.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `len` items. indicatif hides it when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:32.cyan/blue}] {pos}/{len} ({elapsed}, eta {eta})",
        )
        .expect("static template is valid")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Runs `f` with a spinner that only appears if the work takes longer than a moment, so quick
/// steps stay quiet and slow ones never look stuck.
pub fn with_spinner<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let pb = ProgressBar::new_spinner();
    pb.set_style(ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("valid"));
    pb.set_message(what.to_string());
    let pb2 = pb.clone();
    let done = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let done2 = done.clone();
    let waiter = std::thread::spawn(move || {
        let (lock, cv) = &*done2;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cv
            .wait_timeout_while(guard, Duration::from_millis(700), |finished| !*finished)
            .unwrap();
        if timeout.timed_out() && !*guard {
            pb2.enable_steady_tick(Duration::from_millis(100));
        }
    });
    let out = f();
    {
        let (lock, cv) = &*done;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    let _ = waiter.join();
    pb.finish_and_clear();
    out
}
