//! One clock read per request, shared by the layers of this crate stacked on one service.

// Parts of this module serve layers a build without `full` may leave out.
#![cfg_attr(not(feature = "full"), allow(dead_code))]

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    // The time of the request whose `call` chain is running on this thread, set by the
    // outermost layer of this crate that read the clock and cleared when its `call` returns.
    // A `Cell` of a `Copy` value with a `const` initialiser: reading it is a plain load, with no
    // lazy initialisation and no destructor to register.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The request time: the instant the outermost layer of this crate read when the request
/// entered it, or the clock read now when there is no such layer.
///
/// `Service::call` of a stack is one synchronous chain, so the layers inside see the instant the
/// outermost one read just before, in the same chain (and exactly the same one on a paused
/// tokio clock, which cannot move during a synchronous call). Only `call` chains may use this:
/// futures read the clock themselves, as they run later.
pub(crate) fn now() -> Instant {
    published().unwrap_or_else(Instant::now)
}

/// The instant the outermost layer of this crate published for the `call` chain running here,
/// if any.
#[inline]
pub(crate) fn published() -> Option<Instant> {
    NOW.get()
}

/// Reads the request time for a layer's `call` and publishes it to the layers that `call`
/// reaches, until the returned guard is dropped.
///
/// The outermost layer of a stack reads the clock and publishes the instant (the guard clears
/// it again when `call` returns or unwinds); a layer inside reads the published instant. Keep
/// the guard alive (`let time = request_time::read();`) until the inner service was called.
#[inline]
pub(crate) fn read() -> RequestTime {
    match NOW.get() {
        Some(now) => RequestTime { now, owner: false },
        None => {
            let now = Instant::now();
            NOW.set(Some(now));
            RequestTime { now, owner: true }
        }
    }
}

/// The request time of one `call`, from [`read`]; clears the published instant when dropped if
/// it was the one to publish it.
pub(crate) struct RequestTime {
    now: Instant,
    owner: bool,
}

impl RequestTime {
    /// The request time.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.now
    }
}

impl Drop for RequestTime {
    #[inline]
    fn drop(&mut self) {
        if self.owner {
            NOW.set(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn inner_layers_see_the_outer_instant() {
        let outer = {
            let time = read();
            assert_eq!(now(), time.now());
            assert_eq!(
                read().now(),
                time.now(),
                "an inner layer reads the same instant"
            );
            assert_eq!(NOW.get(), Some(time.now()), "and does not clear it");
            time.now()
        };
        assert_eq!(NOW.get(), None, "cleared when the outer call returns");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            now(),
            outer + Duration::from_secs(1),
            "a fresh read outside"
        );
    }

    #[test]
    fn cleared_when_the_call_panics() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let result = std::panic::catch_unwind(|| {
            let _time = read();
            panic!("inner call panicked")
        });
        assert!(result.is_err());
        assert_eq!(NOW.get(), None);
    }
}
