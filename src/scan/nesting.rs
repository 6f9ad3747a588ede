//! The stack of open objects and arrays inside a member's value, one bit a level.

/// Which containers are open, innermost last: a bit a level, set for an object. The first 64
/// levels, all that real Binaries use, are kept inline, so scanning `meta` allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Nesting {
    depth: usize,
    /// Levels 0 to 63.
    inline: u64,
    /// Levels from 64 on, 64 to a word.
    deeper: Vec<u64>,
}

impl Nesting {
    /// How many containers are open.
    pub(super) fn depth(&self) -> usize {
        self.depth
    }

    /// Whether no container is open.
    pub(super) fn is_empty(&self) -> bool {
        self.depth == 0
    }

    /// Opens an object (`true`) or an array.
    pub(super) fn push(&mut self, object: bool) {
        let (word, bit) = self.place(self.depth);
        let word = match word {
            None => &mut self.inline,
            Some(index) => {
                if index == self.deeper.len() {
                    self.deeper.push(0);
                }
                &mut self.deeper[index]
            }
        };
        *word = (*word & !bit) | if object { bit } else { 0 };
        self.depth += 1;
    }

    /// Closes the innermost container.
    pub(super) fn pop(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Whether the innermost container is an object; None when none is open.
    pub(super) fn innermost_is_object(&self) -> Option<bool> {
        let level = self.depth.checked_sub(1)?;
        let (word, bit) = self.place(level);
        let word = match word {
            None => self.inline,
            Some(index) => self.deeper[index],
        };
        Some(word & bit != 0)
    }

    /// The word (None: inline) and the bit of `level`.
    fn place(&self, level: usize) -> (Option<usize>, u64) {
        let bit = 1 << (level % 64);
        ((level >= 64).then(|| level / 64 - 1), bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    #[test]
    fn behaves_like_a_stack_of_flags_at_any_depth() {
        let mut rng = Rng(0x6e65_7374);
        let mut nesting = Nesting::default();
        let mut model: Vec<bool> = Vec::new();
        for _ in 0..20_000 {
            // Biased to grow, so that levels far past 64 are reached and left again.
            if rng.below(5) < 3 || model.is_empty() {
                let object = rng.below(2) == 0;
                nesting.push(object);
                model.push(object);
            } else {
                nesting.pop();
                model.pop();
            }
            assert_eq!(nesting.depth(), model.len());
            assert_eq!(nesting.is_empty(), model.is_empty());
            assert_eq!(nesting.innermost_is_object(), model.last().copied());
        }
        assert!(model.len() > 200);
        while !model.is_empty() {
            nesting.pop();
            model.pop();
            assert_eq!(nesting.innermost_is_object(), model.last().copied());
        }
        nesting.pop();
        assert!(nesting.is_empty());
    }
}
