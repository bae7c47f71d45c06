//! Why a call is being dropped: cut off by a deadline of this crate, or cancelled.
//!
//! A circuit-breaker [`Permit`](crate::circuit_breaker::Permit) dropped unsettled means the
//! call was cancelled (the caller went away), which counts for nothing. A call that one of this
//! crate's own deadlines cut off (the timeout layer's deadline, retry's per-try timeout) is
//! different: the backend hung, which is precisely what a breaker is for. Those layers drop the
//! inner future inside [`by_deadline`], and a permit dropped there records a failure (and a slow
//! call), whatever layers stand in between and in whichever order.
//!
//! A thread-local is enough because dropping is synchronous: everything dropped inside the
//! closure belongs to the call that timed out. Nothing is read or written on the path of a call
//! that completes.

// Parts of this module serve layers a build without `full` may leave out.
#![cfg_attr(not(feature = "full"), allow(dead_code))]

use std::cell::Cell;

thread_local! {
    // `const` initialiser: a plain load, no lazy init, no destructor.
    static CUTTING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `drop_call` (which drops a call's future) marking it as cut off by a deadline.
pub(crate) fn by_deadline<R>(drop_call: impl FnOnce() -> R) -> R {
    let _guard = Marked(CUTTING.replace(true));
    drop_call()
}

/// Whether the drop running now happens inside [`by_deadline`].
#[inline]
pub(crate) fn is_deadline_cut() -> bool {
    CUTTING.get()
}

/// Restores the previous mark when dropped, also when `drop_call` unwinds.
struct Marked(bool);

impl Drop for Marked {
    fn drop(&mut self) {
        CUTTING.set(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_only_inside_and_restored_after_nesting_and_panics() {
        assert!(!is_deadline_cut());
        by_deadline(|| {
            assert!(is_deadline_cut());
            by_deadline(|| assert!(is_deadline_cut()));
            assert!(is_deadline_cut(), "the inner scope keeps the outer mark");
        });
        assert!(!is_deadline_cut());
        let unwound = std::panic::catch_unwind(|| by_deadline(|| panic!("drop panicked")));
        assert!(unwound.is_err());
        assert!(!is_deadline_cut());
    }
}
