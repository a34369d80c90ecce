//! A bounded map of aggregate states: two generations of at most half the capacity each.
//!
//! New and updated entries go to the young generation; when it is full it becomes the old one
//! and the previous old generation is dropped whole. A hit in the old generation moves the
//! entry back to the young one, so what is in use stays. Every operation is O(1): evicting an
//! arbitrary entry from one map (`keys().next()`) scanned ever more empty buckets at its front
//! and was 5-6% of all CPU at 300,000 streams, where every command missed.

use std::collections::HashMap;

pub(crate) struct Generations<V> {
    young: HashMap<String, V>,
    old: HashMap<String, V>,
    half: usize,
}

/// A generation that was dropped from the cache: for the caller to free outside its lock.
pub(crate) type Retired<V> = Option<HashMap<String, V>>;

impl<V: Clone> Generations<V> {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
            half: (capacity / 2).max(1),
        }
    }

    pub(crate) fn get(&mut self, key: &str) -> (Option<V>, Retired<V>) {
        if let Some(v) = self.young.get(key) {
            return (Some(v.clone()), None);
        }
        match self.old.remove_entry(key) {
            Some((key, v)) => {
                let out = v.clone();
                (Some(out), self.insert_young(key, v))
            }
            None => (None, None),
        }
    }

    pub(crate) fn put(&mut self, key: &str, value: V) -> Retired<V> {
        // The usual case, a known aggregate moving on: no new key.
        if let Some(slot) = self.young.get_mut(key) {
            *slot = value;
            return None;
        }
        let key = match self.old.remove_entry(key) {
            Some((key, _)) => key,
            None => key.to_owned(),
        };
        self.insert_young(key, value)
    }

    pub(crate) fn remove(&mut self, key: &str) {
        self.young.remove(key);
        self.old.remove(key);
    }

    fn insert_young(&mut self, key: String, value: V) -> Retired<V> {
        let retired = if self.young.len() >= self.half {
            let young = std::mem::replace(&mut self.young, HashMap::with_capacity(self.half));
            Some(std::mem::replace(&mut self.old, young))
        } else {
            None
        };
        self.young.insert(key, value);
        retired
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_keeps_what_is_used() {
        let mut c = Generations::new(10);
        for i in 0..100 {
            let _ = c.put(&format!("k{i}"), i);
            // k0 is read all along: it must never be evicted.
            if i == 0 || i % 3 == 0 {
                assert_eq!(c.get("k0").0, Some(0), "after {i}");
            }
            assert!(c.len() <= 10, "{} entries after {i}", c.len());
        }
        assert_eq!(c.get("k99").0, Some(99));
        assert_eq!(c.get("k1").0, None, "an old, unused entry is gone");
        let _ = c.put("k99", 7);
        assert_eq!(c.get("k99").0, Some(7), "updated in place");
        c.remove("k99");
        assert_eq!(c.get("k99").0, None);
    }
}
