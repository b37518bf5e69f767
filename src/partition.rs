//! Weighted rendezvous (highest random weight) hashing: which member of a
//! partitioned backend holds a session.
//!
//! For session id `id` and member `m` (label `l`, weight `w`):
//!
//! ```text
//! h     = splitmix64(fnv1a64(l) ^ fnv1a64(id))        // fixed, documented, no RandomState
//! u     = ((h >> 11) + 0.5) / 2^53                    // uniform in (0, 1)
//! score = w / -ln(u)
//! ```
//!
//! The member with the highest score wins (ties: the lower index). Each member
//! gets a share of ids proportional to its weight, and adding a member moves
//! only the ids it wins (about its share), from every other member evenly. The
//! mapping depends only on labels, weights and the id: it is the same in
//! every process and every release (a golden test pins it).
//!
//! Tests see it as `testing::Partition` (feature `test-util`), to check that a
//! session lands on the member it hashes to.

/// The members of a partitioned backend: labels and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    /// (hash of the label, weight)
    members: Vec<(u64, f64)>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Partition {
    /// Members given as (label, weight); a weight of 0 receives nothing.
    pub fn new<L: AsRef<str>>(members: impl IntoIterator<Item = (L, u32)>) -> Partition {
        Partition {
            members: members.into_iter().map(|(label, w)| (fnv1a64(label.as_ref().as_bytes()), f64::from(w))).collect(),
        }
    }

    /// The index of the member that holds session `id` (0 when there is one
    /// member or none).
    pub fn member_of(&self, id: &str) -> usize {
        if self.members.len() < 2 {
            return 0;
        }
        let id_hash = fnv1a64(id.as_bytes());
        let mut best = (0, f64::NEG_INFINITY);
        for (i, &(label, weight)) in self.members.iter().enumerate() {
            if weight <= 0.0 {
                continue;
            }
            let h = splitmix64(label ^ id_hash);
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = weight / -u.ln();
            if score > best.1 {
                best = (i, score);
            }
        }
        best.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_documented_one() {
        // FNV-1a 64 of "a" and the splitmix64 finalizer of 0.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn zero_weight_members_get_nothing() {
        let p = Partition::new([("a", 0), ("b", 1)]);
        assert!((0..1000).all(|i| p.member_of(&i.to_string()) == 1));
    }
}
