//! A sorted set that is usually empty or holds one element (the processes of one side of a
//! conversation, the ports of a link): no allocation until it holds two. Maps of a large fleet
//! hold millions of them.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Few<T> {
    #[default]
    Empty,
    One(T),
    Many(Vec<T>),
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
                    list.insert(i, v);
                }
            }
        }
    }

    pub fn extend(&mut self, other: &Few<T>) {
        for v in other.iter() {
            self.insert(v);
        }
    }

    /// In ascending order.
    pub fn iter(&self) -> impl Iterator<Item = T> + '_ {
        let (one, many): (Option<T>, &[T]) = match self {
            Few::Empty => (None, &[]),
            Few::One(x) => (Some(*x), &[]),
            Few::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Few::Empty)
    }

    pub fn len(&self) -> usize {
        match self {
            Few::Empty => 0,
            Few::One(_) => 1,
            Few::Many(v) => v.len(),
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
}
