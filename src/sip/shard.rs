//! Which SIP core shard a Call-ID belongs to, and the B-leg Call-ID format
//! that carries it.
//!
//! Each core task owns the calls whose Call-IDs map to it, so every message
//! of a dialog must reach the same core. A PBX's Call-ID is hashed. The
//! Call-IDs trunkgate makes for its own B legs (`s<N>.<token>@trunkgate`)
//! name the core that holds the call, so the phones' answers come back to
//! it whatever the hash would say. Making and reading the format live here
//! together, with no I/O, so the call layer and the transports agree on it
//! without depending on each other.

/// The host part of every B-leg Call-ID.
const HOST: &str = "trunkgate";

/// The Call-ID of a B leg made by core `shard`: `s<shard>.<token>@trunkgate`.
///
/// `token` makes it unique (RFC 3261 §8.1.1.4); it must not contain `@`
/// (it would end the local part early) and should be URL-safe characters.
pub fn b_leg_call_id(shard: usize, token: &str) -> String {
    debug_assert!(!token.contains('@'), "a B-leg token has no `@`: {token}");
    format!("s{shard}.{token}@{HOST}")
}

/// The core index a B-leg Call-ID made by [`b_leg_call_id`] carries, or
/// `None` for any other Call-ID.
pub fn b_leg_shard(call_id: &str) -> Option<usize> {
    let local = call_id.strip_suffix(HOST)?.strip_suffix('@')?;
    let (number, token) = local.strip_prefix('s')?.split_once('.')?;
    if token.is_empty() || token.contains('@') || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse().ok()
}

/// The core shard of a Call-ID among `n`: the shard a B-leg Call-ID carries
/// (modulo `n`), else a hash (FNV-1a) of the whole Call-ID, so all requests
/// of a dialog meet in one core.
pub fn shard_for_call_id(call_id: &str, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    if let Some(k) = b_leg_shard(call_id) {
        return k % n;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % n as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_leg_call_ids_round_trip() {
        for shard in [0, 1, 7, 63, usize::MAX] {
            let id = b_leg_call_id(shard, "b4f2a91");
            assert_eq!(b_leg_shard(&id), Some(shard), "{id}");
        }
        assert_eq!(b_leg_call_id(3, "babc"), "s3.babc@trunkgate");
    }

    #[test]
    fn other_call_ids_carry_no_shard() {
        for id in [
            "3c4d5e6f@198.51.100.10",
            "s9.x@elsewhere",
            "s9.x@trunkgate.example",
            "sx.babc@trunkgate",
            "s.babc@trunkgate",
            "s1.@trunkgate",
            "s1babc@trunkgate",
            "s+1.babc@trunkgate",
            "s1.a@b@trunkgate",
            "trunkgate",
            "",
        ] {
            assert_eq!(b_leg_shard(id), None, "{id}");
        }
    }

    #[test]
    fn call_ids_shard_stably_and_our_own_carry_their_shard() {
        assert_eq!(shard_for_call_id("anything", 1), 0);
        assert_eq!(shard_for_call_id("anything", 0), 0);
        assert_eq!(shard_for_call_id(&b_leg_call_id(1, "babc"), 2), 1);
        assert_eq!(shard_for_call_id(&b_leg_call_id(0, "babc"), 2), 0);
        assert_eq!(shard_for_call_id(&b_leg_call_id(5, "babc"), 4), 1);
        // Every core's B legs come back to it.
        for n in 1..=8 {
            for shard in 0..n {
                assert_eq!(shard_for_call_id(&b_leg_call_id(shard, "b1f"), n), shard, "{shard} of {n}");
            }
        }
        // A PBX's Call-ID always lands on the same shard, and Call-IDs spread.
        let a = shard_for_call_id("3c4d5e6f@198.51.100.10", 4);
        assert_eq!(a, shard_for_call_id("3c4d5e6f@198.51.100.10", 4));
        let spread: std::collections::HashSet<usize> =
            (0..64).map(|i| shard_for_call_id(&format!("{i}-1234@192.0.2.1"), 4)).collect();
        assert_eq!(spread.len(), 4);
        // Look-alikes from outside are hashed, not trusted.
        assert!(shard_for_call_id("s9.x@elsewhere", 2) < 2);
    }
}
