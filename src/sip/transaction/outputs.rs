//! A machine's queue of outputs (transmits, events), drained by the layer
//! after every input.
//!
//! Not a bare `VecDeque`: an input almost always yields at most one of each,
//! and a `VecDeque` keeps the buffer its first push allocated for as long
//! as the machine lives — 32 s after an answer (Timers J, L, M), so a busy
//! node held some 700 bytes per call in empty queues (a heap profile of the
//! bench's calls). The first output sits inline; only a second one waiting
//! beside it spills to the heap.

use std::collections::VecDeque;

/// First in, first out; the oldest output inline.
#[derive(Debug)]
pub(super) struct Outputs<T> {
    /// The oldest output, when any waits. Set only while `rest` is empty,
    /// so it is always older than everything in `rest`.
    first: Option<T>,
    rest: VecDeque<T>,
}

impl<T> Default for Outputs<T> {
    fn default() -> Self {
        Outputs { first: None, rest: VecDeque::new() }
    }
}

impl<T> Outputs<T> {
    /// A queue holding `item`.
    pub(super) fn one(item: T) -> Self {
        Outputs { first: Some(item), rest: VecDeque::new() }
    }

    /// Queues `item` after every waiting one.
    pub(super) fn push_back(&mut self, item: T) {
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(item);
        } else {
            self.rest.push_back(item);
        }
    }

    /// The oldest waiting item.
    pub(super) fn pop_front(&mut self) -> Option<T> {
        self.first.take().or_else(|| self.rest.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::Outputs;

    #[test]
    fn items_come_out_in_the_order_they_went_in_however_pushes_and_pops_interleave() {
        let mut q = Outputs::one(1);
        q.push_back(2);
        q.push_back(3);
        assert_eq!(q.pop_front(), Some(1));
        // The inline slot is free but 2 and 3 wait: 4 goes behind them.
        q.push_back(4);
        assert_eq!(q.pop_front(), Some(2));
        q.push_back(5);
        let rest: Vec<i32> = std::iter::from_fn(|| q.pop_front()).collect();
        assert_eq!(rest, [3, 4, 5]);
        assert_eq!(q.pop_front(), None);
        q.push_back(6);
        assert_eq!(q.pop_front(), Some(6));
        assert_eq!(q.pop_front(), None);
    }

    #[test]
    fn one_output_at_a_time_never_allocates() {
        let mut q = Outputs::default();
        for i in 0..100 {
            q.push_back(i);
            assert_eq!(q.pop_front(), Some(i));
        }
        assert_eq!(q.rest.capacity(), 0);
    }
}
