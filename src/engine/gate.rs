//! The one gate every unit of work passes — chunk transfers, whole small objects and commits
//! alike: at most `limit` in flight, and at most `budget` bytes of chunk buffers in flight.
//! The limit can change at any time (operator or controller); lowering it never interrupts
//! work already admitted, it only holds back new work until the count falls below.
//!
//! The gate is plain counters owned by the scheduler task: work that does not fit simply is
//! not started (backpressure), so nothing waits in an unbounded buffer.

/// Concurrency and memory admission.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gate {
    limit: u32,
    in_flight: u32,
    budget: u64,
    bytes: u64,
}

impl Gate {
    /// A gate admitting `limit` units and `budget` bytes at once.
    pub fn new(limit: u32, budget: u64) -> Self {
        Self {
            limit: limit.max(1),
            in_flight: 0,
            budget,
            bytes: 0,
        }
    }

    /// Admits one unit holding `bytes` of buffer, if both the count and the budget allow.
    pub fn try_admit(&mut self, bytes: u64) -> bool {
        if self.in_flight >= self.limit || self.bytes + bytes > self.budget {
            return false;
        }
        self.in_flight += 1;
        self.bytes += bytes;
        true
    }

    /// Returns a unit admitted with `bytes`.
    pub fn release(&mut self, bytes: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Changes the concurrency limit (at least 1).
    pub fn set_limit(&mut self, limit: u32) {
        self.limit = limit.max(1);
    }

    /// The concurrency limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Units in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Buffer bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The memory budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_within_count_and_budget_only() {
        let mut gate = Gate::new(3, 100);
        assert!(gate.try_admit(40));
        assert!(gate.try_admit(40));
        assert!(!gate.try_admit(40), "budget would be exceeded");
        assert!(gate.try_admit(0), "commits hold no buffer");
        assert!(!gate.try_admit(0), "count limit reached");
        gate.release(40);
        assert!(gate.try_admit(20));
        assert_eq!((gate.in_flight(), gate.bytes()), (3, 60));
    }

    #[test]
    fn lowering_the_limit_holds_back_new_work_only() {
        let mut gate = Gate::new(4, u64::MAX);
        for _ in 0..4 {
            assert!(gate.try_admit(1));
        }
        gate.set_limit(2);
        assert_eq!(gate.in_flight(), 4, "admitted work keeps running");
        gate.release(1);
        gate.release(1);
        assert!(!gate.try_admit(1), "still at the new limit");
        gate.release(1);
        assert!(gate.try_admit(1));
        gate.set_limit(0);
        assert_eq!(gate.limit(), 1, "never below one");
    }
}
