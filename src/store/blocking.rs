//! Store calls that are blocking work (a local filesystem's): run off the async threads,
//! or, inside [`inline`] work (a chunk between two such stores, on one blocking thread), right
//! where they are asked for.

use super::{StoreError, StoreResult};

thread_local! {
    /// Set while a blocking thread runs work whose every store call may block.
    static INLINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `work` (on a blocking thread) with every blocking store call it makes done right
/// there instead of handed to another blocking thread.
pub fn inline<T>(work: impl FnOnce() -> T) -> T {
    /// Gives the thread back as it was, even when `work` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            INLINE.set(self.0);
        }
    }
    let _restore = Restore(INLINE.replace(true));
    work()
}

/// Whether this thread runs [`inline`] work (and may block).
pub fn inline_here() -> bool {
    INLINE.get()
}

/// Runs blocking store work off the async threads (or right here, in [`inline`] work).
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    if inline_here() {
        return work();
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::transient(format!("filesystem task failed: {e}")))?
}
