//! The pool of RTP/RTCP port pairs of one address (`[media] port_min` ..
//! `port_max`), sans-IO: the driver binds the sockets, the pool only says
//! which pair is free.
//!
//! Pairs are even/odd (RTP on the even port, RTCP on the next, RFC 3550
//! §11). A pair given back goes to the end of the queue, so a port is reused
//! as late as possible: stray packets of the call that had it land on a
//! closed port rather than in the next call.

use std::collections::{HashSet, VecDeque};

use crate::b2bua::MediaError;

/// An RTP port and its RTCP port (`rtp + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortPair {
    /// The even RTP port.
    pub rtp: u16,
}

impl PortPair {
    /// The RTCP port.
    pub fn rtcp(self) -> u16 {
        self.rtp + 1
    }
}

/// Why a port range cannot make a pool (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    /// No even/odd pair fits in the range: widen it.
    #[error("port range {min}-{max} holds no RTP/RTCP pair")]
    Empty {
        /// First port.
        min: u16,
        /// Last port.
        max: u16,
    },
}

/// Free and used port pairs.
#[derive(Debug, Clone)]
pub struct PortPool {
    free: VecDeque<PortPair>,
    used: HashSet<PortPair>,
}

impl PortPool {
    /// Every even/odd pair within `min..=max` (an odd `min` starts at the
    /// next even port; a pair needs both its ports in the range).
    pub fn new(min: u16, max: u16) -> Result<PortPool, PortRangeError> {
        let start = u32::from(min) + u32::from(min % 2);
        let free: VecDeque<PortPair> = (start..u32::from(max))
            .step_by(2)
            .filter_map(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0 && p < max)
            .map(|rtp| PortPair { rtp })
            .collect();
        if free.is_empty() {
            return Err(PortRangeError::Empty { min, max });
        }
        Ok(PortPool { used: HashSet::with_capacity(free.len()), free })
    }

    /// The least recently used free pair, or `PortsExhausted` (the call is
    /// answered 503 `media-ports-exhausted`).
    pub fn take(&mut self) -> Result<PortPair, MediaError> {
        let pair = self.free.pop_front().ok_or(MediaError::PortsExhausted)?;
        self.used.insert(pair);
        Ok(pair)
    }

    /// A pair comes back (its sockets are closed). Giving back a pair that
    /// is not in use changes nothing, so a double release cannot put a pair
    /// in the queue twice.
    pub fn give_back(&mut self, pair: PortPair) {
        if self.used.remove(&pair) {
            self.free.push_back(pair);
        }
    }

    /// Pairs free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Pairs in use now.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_within_the_range() {
        let mut p = PortPool::new(30001, 30008).unwrap();
        // 30002/3, 30004/5, 30006/7; 30008 has no 30009 in range.
        let pairs: Vec<_> = std::iter::from_fn(|| p.take().ok()).collect();
        assert_eq!(
            pairs.iter().map(|p| (p.rtp, p.rtcp())).collect::<Vec<_>>(),
            [(30002, 30003), (30004, 30005), (30006, 30007)]
        );
        assert_eq!(PortPool::new(40000, 40000).unwrap_err(), PortRangeError::Empty { min: 40000, max: 40000 });
        assert_eq!(PortPool::new(65534, 65535).unwrap().take().unwrap().rtcp(), 65535);
    }

    #[test]
    fn a_full_pool_refuses_with_ports_exhausted_and_nothing_leaks() {
        let mut p = PortPool::new(20000, 20009).unwrap();
        let taken: Vec<_> = (0..5).map(|_| p.take().unwrap()).collect();
        assert_eq!((p.available(), p.in_use()), (0, 5));
        assert_eq!(p.take(), Err(MediaError::PortsExhausted));
        for pair in &taken {
            p.give_back(*pair);
        }
        assert_eq!((p.available(), p.in_use()), (5, 0));
        // A double release does not make a pair twice available.
        p.give_back(taken[0]);
        assert_eq!(p.available(), 5);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn a_released_pair_is_reused_last() {
        let mut p = PortPool::new(20000, 20005).unwrap();
        let a = p.take().unwrap();
        p.give_back(a);
        // The other pairs come first.
        assert_ne!(p.take().unwrap(), a);
        assert_ne!(p.take().unwrap(), a);
        assert_eq!(p.take().unwrap(), a);
    }
}
