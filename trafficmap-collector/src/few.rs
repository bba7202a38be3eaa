//! A sorted set that is usually empty or holds one element (the processes of one side of a
//! conversation, the ports of a link): no allocation until it holds two. Maps of a large fleet
//! hold millions of them. A set beyond [`SPILL`] elements moves to a `BTreeSet`: sorted-`Vec`
//! inserts are O(n), and hostile reports can name any number of processes, ports or containers
//! on one side (each a new pair), which would make a render quadratic.

use std::collections::BTreeSet;

/// The largest set kept as a sorted `Vec`: small sets stay compact, large ones insert in
/// O(log n). The variant follows from the length alone (sets only grow), so equal sets are
/// equal values.
const SPILL: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Few<T> {
    #[default]
    Empty,
    One(T),
    /// 2 to [`SPILL`] elements, ascending.
    Many(Vec<T>),
    /// More than [`SPILL`].
    Lots(BTreeSet<T>),
}

impl<T: Copy + Ord> Few<T> {
    pub fn insert(&mut self, v: T) {
        match self {
            Few::Empty => *self = Few::One(v),
            Few::One(x) if *x == v => {}
            Few::One(x) => {
                let x = *x;
                *self = Few::Many(if x < v { vec![x, v] } else { vec![v, x] });
            }
            Few::Many(list) => {
                if let Err(i) = list.binary_search(&v) {
                    if list.len() < SPILL {
                        list.insert(i, v);
                    } else {
                        let mut set: BTreeSet<T> = list.iter().copied().collect();
                        set.insert(v);
                        *self = Few::Lots(set);
                    }
                }
            }
            Few::Lots(set) => {
                set.insert(v);
            }
        }
    }

    /// Inserts `v` into a set that keeps at most `cap` (at least 2) elements, the smallest:
    /// sets filled from hostile reports (a side's containers, a link's service addresses) must
    /// not grow without bound, each insert stays O(cap), and which are kept does not depend on
    /// the order of the inserts. Returns whether an element was left out (`v` or one evicted).
    pub fn insert_capped(&mut self, v: T, cap: usize) -> bool {
        match self {
            Few::Lots(set) if set.len() >= cap => {
                if set.contains(&v) {
                    return false;
                }
                if set.last().is_some_and(|&max| v < max) {
                    set.pop_last();
                    set.insert(v);
                }
                true
            }
            Few::Many(list) if list.len() >= cap => match list.binary_search(&v) {
                Ok(_) => false,
                Err(i) if i < list.len() => {
                    list.truncate(cap - 1);
                    list.insert(i.min(cap - 1), v);
                    true
                }
                Err(_) => true,
            },
            _ => {
                self.insert(v);
                false
            }
        }
    }

    /// [`Few::insert_capped`] of every element of `other`.
    pub fn extend_capped(&mut self, other: &Few<T>, cap: usize) {
        for v in other.iter() {
            self.insert_capped(v, cap);
        }
    }

    pub fn extend(&mut self, other: &Few<T>) {
        for v in other.iter() {
            self.insert(v);
        }
    }

    /// In ascending order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        let (one, many, lots): (Option<T>, &[T], Option<&BTreeSet<T>>) = match self {
            Few::Empty => (None, &[], None),
            Few::One(x) => (Some(*x), &[], None),
            Few::Many(v) => (None, v.as_slice(), None),
            Few::Lots(s) => (None, &[], Some(s)),
        };
        one.into_iter()
            .chain(many.iter().copied())
            .chain(lots.into_iter().flatten().copied())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Few::Empty)
    }

    pub fn len(&self) -> usize {
        match self {
            Few::Empty => 0,
            Few::One(_) => 1,
            Few::Many(v) => v.len(),
            Few::Lots(s) => s.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_without_duplicates() {
        let mut f = Few::default();
        assert!(f.is_empty());
        f.insert(5u16);
        f.insert(5);
        assert_eq!(f, Few::One(5));
        f.insert(3);
        f.insert(9);
        f.insert(3);
        assert_eq!(f.iter().collect::<Vec<_>>(), [3, 5, 9]);
        let mut g = Few::One(4u16);
        g.extend(&f);
        assert_eq!(
            (g.iter().collect::<Vec<_>>(), g.len()),
            (vec![3, 4, 5, 9], 4)
        );
    }

    /// Beyond `SPILL` elements the set moves to a `BTreeSet`, still sorted, still a set, and
    /// equal to one filled in another order.
    #[test]
    fn large_sets_spill_and_stay_sorted() {
        let n = SPILL as u32 * 3;
        let mut up = Few::default();
        let mut down = Few::default();
        for v in 0..n {
            up.insert(v);
            up.insert(v);
            down.insert(n - 1 - v);
        }
        assert!(matches!(up, Few::Lots(_)));
        assert_eq!(up, down);
        assert_eq!(up.len(), n as usize);
        assert_eq!(up.iter().collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
        let mut small = Few::default();
        for v in 0..SPILL as u32 {
            small.insert(v);
        }
        assert!(matches!(small, Few::Many(_)));
        // Capped sets that spilled keep the smallest too.
        let mut capped = up.clone();
        assert!(capped.insert_capped(n + 5, n as usize));
        assert!(!capped.insert_capped(3, n as usize));
        assert_eq!(capped, up);
    }

    /// A capped set keeps the smallest `cap` whatever the order of the inserts.
    #[test]
    fn capped_keeps_the_smallest() {
        for order in [[7u16, 1, 9, 3, 5, 3], [5, 3, 9, 7, 1, 1]] {
            let mut f = Few::default();
            let dropped: Vec<bool> = order.iter().map(|&v| f.insert_capped(v, 3)).collect();
            assert_eq!(f.iter().collect::<Vec<_>>(), [1, 3, 5], "{order:?}");
            assert_eq!(dropped.iter().filter(|&&d| d).count(), 2, "{order:?}");
        }
        let mut g = Few::One(0u16);
        g.extend_capped(&Few::Many(vec![2, 4, 6, 8]), 3);
        assert_eq!(g.iter().collect::<Vec<_>>(), [0, 2, 4]);
    }
}
