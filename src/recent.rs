//! A bounded map that forgets what was not used for a while.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A bounded map that forgets what was not used for a while: when full, it
/// starts a new generation and keeps the last one, from which a lookup
/// brings an entry back. (Clearing it all at once made every session or
/// user that the per-user index memory held pay an index write at its next
/// save, and past its bound of active ones, most saves.)
pub(crate) struct Recent<K, V> {
    /// Entries per generation.
    bound: usize,
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq, V> Recent<K, V> {
    /// At most `bound` entries per generation (twice that in all).
    pub(crate) fn new(bound: usize) -> Self {
        Recent { bound, current: HashMap::new(), previous: HashMap::new() }
    }

    /// What `read` makes of the value for `key`, which is brought into the
    /// current generation. (A closure, not a reference: that way a value
    /// in the current generation costs one lookup, on every save.)
    pub(crate) fn get<Q, R>(&mut self, key: &Q, read: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.current.get(key) {
            return Some(read(value));
        }
        let (key, value) = self.previous.remove_entry(key)?;
        let found = read(&value);
        self.insert(key, value);
        Some(found)
    }

    /// Sets `key` to `value`, starting a new generation when full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.current.len() >= self.bound && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }

    /// Forgets `key`.
    pub(crate) fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.remove(key);
        self.previous.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_full_it_keeps_what_was_used_lately() {
        let mut recent = Recent::new(3);
        for n in 0..3 {
            recent.insert(n, n);
        }
        // Full: 3 starts a new generation; the last one still answers, and
        // hands 0 over to the new one, now {3, 0}.
        recent.insert(3, 3);
        assert_eq!(recent.get(&0, |v| *v), Some(0));
        // {3, 0, 4} is full: 5 starts another, and 1 and 2, not used
        // since, are gone; 0 is not.
        recent.insert(4, 4);
        recent.insert(5, 5);
        assert_eq!(recent.get(&0, |v| *v), Some(0));
        assert_eq!(recent.get(&1, |v| *v), None);
        assert_eq!(recent.get(&2, |v| *v), None);
        recent.remove(&0);
        assert_eq!(recent.get(&0, |v| *v), None);
    }
}
