//! Values kept in a vector in insertion order and found by key through a table of 4-byte
//! positions. A day of a large fleet accumulates a million conversations and links; a hash map
//! holding the accumulators themselves needs their full size in every slot of a table kept
//! partly empty, and that fresh memory (page faults, zeroing) was the largest cost of a
//! 10,000-host map (BENCHMARKS.md § Collector).

use std::hash::{BuildHasher as _, Hash};

use rustc_hash::FxBuildHasher;

/// An item that carries its own key.
pub trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

pub struct Slots<T> {
    table: hashbrown::HashTable<u32>,
    items: Vec<T>,
}

impl<T: Keyed> Slots<T> {
    pub fn with_capacity(n: usize) -> Slots<T> {
        Slots {
            table: hashbrown::HashTable::with_capacity(n),
            items: Vec::with_capacity(n),
        }
    }

    pub fn get(&self, key: &T::Key) -> Option<&T> {
        let items = &self.items;
        self.table
            .find(FxBuildHasher.hash_one(key), |&i| {
                items[i as usize].key() == key
            })
            .map(|&i| &items[i as usize])
    }

    /// The item of `key`, made by `make` if there is none yet.
    pub fn get_or_insert_with(&mut self, key: T::Key, make: impl FnOnce(T::Key) -> T) -> &mut T {
        let hash = FxBuildHasher.hash_one(&key);
        let items = &mut self.items;
        let at = match self.table.find(hash, |&i| *items[i as usize].key() == key) {
            Some(&i) => i as usize,
            None => {
                items.push(make(key));
                let i = items.len() - 1;
                let i32 = u32::try_from(i).expect("fewer than 2^32 items");
                self.table.insert_unique(hash, i32, |&j| {
                    FxBuildHasher.hash_one(items[j as usize].key())
                });
                i
            }
        };
        &mut items[at]
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    /// The items in insertion order (the table is dropped, nothing is copied).
    pub fn into_vec(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Keyed for (u32, &'static str) {
        type Key = u32;
        fn key(&self) -> &u32 {
            &self.0
        }
    }

    #[test]
    fn finds_what_it_made_and_keeps_insertion_order() {
        let mut s: Slots<(u32, &'static str)> = Slots::with_capacity(1);
        for (k, v) in [(7, "a"), (3, "b"), (7, "c"), (9, "d")] {
            let item = s.get_or_insert_with(k, |k| (k, v));
            assert_eq!(item.0, k);
        }
        assert_eq!(s.get(&7), Some(&(7, "a")));
        assert_eq!(s.get(&4), None);
        assert_eq!(s.into_vec(), vec![(7, "a"), (3, "b"), (9, "d")]);
    }
}
