//! The element lookups of one conversion, remembered by type and JSON name: a key met before
//! in an object of the same type is resolved by one probe of a small table, without hashing
//! its name again in the model's index or comparing it byte by byte.

use crate::model::{ElementMatch, ElementRef, TypeKind, TypeRef};

/// Entries of the table at first and at most: powers of two. It grows as misses show that a
/// document uses more names than it holds (the R4 examples use some 5,000 pairs of a type and
/// a name); a small document keeps a small table.
const FIRST_ENTRIES: usize = 256;
const MOST_ENTRIES: usize = 4096;

/// The longest name remembered: its bytes fit in [`Words`].
const LONGEST: usize = 24;

/// A name of at most [`LONGEST`] bytes, with its length: equal words, equal names.
type Words = [u64; 4];

#[derive(Clone, Copy)]
struct Entry {
    ty: TypeRef,
    words: Words,
    found: ElementMatch,
    traits: Traits,
}

/// What the converter asks of an element and its type at every step, read from the model's
/// tables once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Traits {
    bits: u8,
    /// The kind of the element's type (for a choice, of the chosen one).
    pub(crate) kind: TypeKind,
}

const ARRAY: u8 = 1;
const ATTRIBUTE: u8 = 2;
const XHTML: u8 = 4;
const CHOICE: u8 = 8;
const RESOURCE_TYPED: u8 = 16;

impl Traits {
    pub(crate) fn of(found: ElementMatch) -> Traits {
        let e = found.element;
        let bit = |yes: bool, bit: u8| if yes { bit } else { 0 };
        Traits {
            bits: bit(e.is_array(), ARRAY)
                | bit(e.is_attribute(), ATTRIBUTE)
                | bit(e.is_xhtml(), XHTML)
                | bit(e.is_choice(), CHOICE)
                | bit(e.is_resource_typed(), RESOURCE_TYPED),
            kind: found.ty.kind(),
        }
    }

    /// [`ElementRef::is_array`].
    pub(crate) fn is_array(self) -> bool {
        self.bits & ARRAY != 0
    }

    /// [`ElementRef::is_attribute`].
    pub(crate) fn is_attribute(self) -> bool {
        self.bits & ATTRIBUTE != 0
    }

    /// [`ElementRef::is_xhtml`].
    pub(crate) fn is_xhtml(self) -> bool {
        self.bits & XHTML != 0
    }

    /// [`ElementRef::is_choice`].
    pub(crate) fn is_choice(self) -> bool {
        self.bits & CHOICE != 0
    }

    /// [`ElementRef::is_resource_typed`].
    pub(crate) fn is_resource_typed(self) -> bool {
        self.bits & RESOURCE_TYPED != 0
    }
}

/// Element lookups, made on first use.
pub(crate) struct Lookups {
    entries: Vec<Option<Entry>>,
    /// Misses since the table last grew: more than half its size, and it doubles.
    misses: usize,
}

impl Lookups {
    pub(crate) fn new() -> Lookups {
        Lookups {
            entries: Vec::new(),
            misses: 0,
        }
    }

    /// The element that `json_name` names in `ty`, by [`TypeRef::element_after`].
    #[inline]
    pub(crate) fn element(
        &mut self,
        ty: TypeRef,
        previous: Option<ElementRef>,
        json_name: &str,
    ) -> Option<(ElementMatch, Traits)> {
        let Some(words) = words(json_name.as_bytes()) else {
            let found = ty.element_after(previous, json_name)?;
            return Some((found, Traits::of(found)));
        };
        let hash = hash_of(ty, &words);
        if let Some(Some(entry)) = self.entries.get(slot_of(hash, self.entries.len())) {
            if entry.words == words && entry.ty == ty {
                return Some((entry.found, entry.traits));
            }
        }
        let found = ty.element_after(previous, json_name)?;
        let traits = Traits::of(found);
        self.misses += 1;
        let len = self.entries.len();
        if len == 0 || (self.misses * 2 > len && len < MOST_ENTRIES) {
            self.grow();
        }
        let slot = slot_of(hash, self.entries.len());
        self.entries[slot] = Some(Entry {
            ty,
            words,
            found,
            traits,
        });
        Some((found, traits))
    }

    /// Doubles the table, keeping what it holds.
    #[cold]
    fn grow(&mut self) {
        let len = (self.entries.len() * 2).max(FIRST_ENTRIES);
        let old = std::mem::replace(&mut self.entries, vec![None; len]);
        for entry in old.into_iter().flatten() {
            let slot = slot_of(hash_of(entry.ty, &entry.words), len);
            self.entries[slot] = Some(entry);
        }
        self.misses = 0;
    }
}

#[inline(always)]
fn hash_of(ty: TypeRef, words: &Words) -> u64 {
    // The type's name is a static string: its address tells the types apart.
    let salt = ty.name().as_ptr() as u64;
    (words[0] ^ words[1].rotate_left(21) ^ words[2].rotate_left(42) ^ words[3])
        .wrapping_add(salt)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The slot of a hash in a table of `len` entries (a power of two; an empty table has none,
/// and any slot is out of it).
#[inline(always)]
fn slot_of(hash: u64, len: usize) -> usize {
    (hash >> (64 - len.max(2).trailing_zeros())) as usize
}

/// The bytes of a name of at most [`LONGEST`] bytes as words (overlapping loads), with its
/// length: two names of the same length are the same when their words are.
#[inline(always)]
fn words(b: &[u8]) -> Option<Words> {
    let n = b.len();
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let half = |at: usize| {
        u64::from(u32::from_le_bytes(
            b[at..at + 4].try_into().unwrap_or_default(),
        ))
    };
    Some(match n {
        0 => [0, 0, 0, 0],
        1..=3 => {
            let (a, m, z) = (b[0], b[n / 2], b[n - 1]);
            [
                u64::from(a) | u64::from(m) << 8 | u64::from(z) << 16,
                0,
                0,
                n as u64,
            ]
        }
        4..=7 => [half(0) | half(n - 4) << 32, 0, 0, n as u64],
        8..=16 => [word(0), word(n - 8), 0, n as u64],
        17..=LONGEST => [word(0), word(8), word(n - 8), n as u64],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::FhirVersion;

    /// Different names of up to [`LONGEST`] bytes have different words.
    #[test]
    fn words_tell_names_apart() {
        let mut rng = crate::test_rng::Rng(3);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..50_000 {
            let len = rng.below(LONGEST + 1);
            let name: Vec<u8> = (0..len).map(|_| b"abc"[rng.below(3)]).collect();
            let w = words(&name).unwrap();
            if let Some(other) = seen.insert(w, name.clone()) {
                assert_eq!(other, name);
            }
        }
        assert!(words(&[b'a'; LONGEST + 1]).is_none());
    }

    /// What the table gives is what the model gives, for every element name of every type,
    /// and names that are no element's, looked up in any order, again and again.
    #[test]
    fn agrees_with_the_model() {
        for version in [FhirVersion::R4, FhirVersion::Dstu2, FhirVersion::R5] {
            let model = Model::of(version);
            let mut lookups = Lookups::new();
            let mut rng = crate::test_rng::Rng(9);
            let types: Vec<TypeRef> = ["Patient", "Observation", "Bundle", "Extension", "Coding"]
                .iter()
                .filter_map(|name| model.type_at(name))
                .collect();
            let mut names: Vec<String> = Vec::new();
            for ty in &types {
                for element in ty.elements() {
                    names.push(element.name().to_string());
                    for choice in element.choices() {
                        let t = choice.name();
                        names.push(format!(
                            "{}{}{}",
                            element.name(),
                            t[..1].to_ascii_uppercase(),
                            &t[1..]
                        ));
                    }
                }
            }
            names.extend(
                [
                    "",
                    "x",
                    "valueQuantityx",
                    "extensio",
                    "modifierExtensionModifierX",
                ]
                .map(String::from),
            );
            for _ in 0..20_000 {
                let ty = types[rng.below(types.len())];
                let name = &names[rng.below(names.len())];
                let expected = ty.element(name).map(|found| (found, Traits::of(found)));
                assert_eq!(lookups.element(ty, None, name), expected, "{ty:?}.{name}");
            }
        }
    }
}
