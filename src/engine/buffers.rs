//! Chunk buffers, reused. A fresh 64 MiB buffer costs sixteen thousand page faults (and the
//! kernel zeroing every page) the first time it is filled; a buffer handed back after its
//! upload costs nothing the second time. Buffers in flight and buffers kept share the memory
//! budget: a new buffer that would take the pool over it first frees kept ones, buffers
//! handed back beyond it are freed, and a buffer still shared when its chunk finishes (the HTTP
//! stack had not let go) is simply dropped.

use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Free chunk buffers, bounded by the memory budget.
#[derive(Debug)]
pub struct BufferPool {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    free: Vec<BytesMut>,
    /// Capacity of every buffer handed out and not yet given back, plus the free ones.
    owned: u64,
}

impl BufferPool {
    /// A pool for at most `budget` bytes of buffers.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// An empty buffer with room for `len` bytes: a free one when one is big enough.
    pub fn take(&self, len: usize) -> BytesMut {
        let mut inner = self.lock();
        let best = inner
            .free
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        match best {
            Some(i) => inner.free.swap_remove(i),
            None => {
                // Kept buffers too small for this chunk make room for it: buffers in flight
                // (which the gate keeps within the budget) and kept ones share one budget.
                inner.free.sort_unstable_by_key(BytesMut::capacity);
                while inner.owned + len as u64 > self.budget {
                    let Some(dropped) = inner.free.pop() else {
                        break;
                    };
                    inner.owned = inner.owned.saturating_sub(dropped.capacity() as u64);
                }
                inner.owned += len as u64;
                BytesMut::with_capacity(len)
            }
        }
    }

    /// Hands a chunk's bytes back once nobody else holds them; `taken` is the length it was
    /// taken for.
    pub fn give_back(&self, bytes: Bytes, taken: usize) {
        let mut inner = self.lock();
        match bytes.try_into_mut() {
            Ok(mut buffer) if inner.owned <= self.budget => {
                buffer.clear();
                inner.free.push(buffer);
            }
            Ok(buffer) => inner.owned = inner.owned.saturating_sub(buffer.capacity() as u64),
            Err(_) => inner.owned = inner.owned.saturating_sub(taken as u64),
        }
    }

    /// Bytes of buffers that exist (free or in use), as far as the pool knows.
    pub fn owned(&self) -> u64 {
        self.lock().owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_without_allocating() {
        let pool = BufferPool::new(1 << 20);
        let mut first = pool.take(1000);
        let address = first.as_ptr();
        first.extend_from_slice(&[7; 1000]);
        pool.give_back(first.freeze(), 1000);
        let second = pool.take(800);
        assert_eq!(second.as_ptr(), address, "the same memory");
        assert!(second.is_empty());
        assert_eq!(pool.owned(), 1000);
    }

    #[test]
    fn a_buffer_still_shared_is_dropped_and_the_budget_holds() {
        let pool = BufferPool::new(2000);
        let mut buffer = pool.take(1000);
        buffer.extend_from_slice(&[1; 1000]);
        let bytes = buffer.freeze();
        let held_elsewhere = bytes.clone();
        pool.give_back(bytes, 1000);
        assert_eq!(pool.owned(), 0, "not reclaimable, so forgotten");
        drop(held_elsewhere);

        let buffers: Vec<BytesMut> = (0..3).map(|_| pool.take(1000)).collect();
        assert_eq!(pool.owned(), 3000);
        for buffer in buffers {
            pool.give_back(buffer.freeze(), 1000);
        }
        assert!(
            pool.owned() <= 2000,
            "beyond the budget, buffers are freed: {}",
            pool.owned()
        );
    }
    #[test]
    fn kept_buffers_and_buffers_in_flight_together_stay_within_the_budget() {
        // 16 chunks of 15 units finish and are kept; then 16 chunks of 16 units are in flight
        // at once (what the gate admits under a budget of 256). Buffers kept for reuse that fit
        // nothing must make room, not add to what is in flight.
        let pool = BufferPool::new(256);
        let small: Vec<BytesMut> = (0..16).map(|_| pool.take(15)).collect();
        for buffer in small {
            pool.give_back(buffer.freeze(), 15);
        }
        let big: Vec<BytesMut> = (0..16).map(|_| pool.take(16)).collect();
        assert!(big.iter().all(|b| b.capacity() >= 16));
        assert!(
            pool.owned() <= 256,
            "{} bytes of buffers under a budget of 256",
            pool.owned()
        );
    }
}
