//! The element lookups of one conversion: each type's index of JSON names
//! ([`NameIndex`], shared by the process) found once by type, so that a key is one lookup in
//! it.

use crate::model::{ElementMatch, JsonKind, NameIndex, TypeKind, TypeRef};

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
const SINGLE_STRING: u8 = 32;

impl Traits {
    pub(crate) fn of(found: ElementMatch) -> Traits {
        let e = found.element;
        let bit = |yes: bool, bit: u8| if yes { bit } else { 0 };
        Traits {
            bits: bit(e.is_array(), ARRAY)
                | bit(e.is_attribute(), ATTRIBUTE)
                | bit(e.is_xhtml(), XHTML)
                | bit(e.is_choice(), CHOICE)
                | bit(e.is_resource_typed(), RESOURCE_TYPED)
                | bit(
                    found.ty.kind() == TypeKind::Primitive(JsonKind::String)
                        && !e.is_array()
                        && !e.is_attribute()
                        && !e.is_xhtml(),
                    SINGLE_STRING,
                ),
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

    /// A string primitive that does not repeat, is no attribute and not the narrative: the
    /// most common member, written as `<name value=".."/>`.
    pub(crate) fn is_single_string(self) -> bool {
        self.bits & SINGLE_STRING != 0
    }

    /// [`ElementRef::is_resource_typed`].
    pub(crate) fn is_resource_typed(self) -> bool {
        self.bits & RESOURCE_TYPED != 0
    }
}

/// Element lookups, by the name indexes of the types met.
pub(crate) struct Lookups {
    /// By [`TypeRef::id`]: the place in `types` of the type's lookups plus one, 0 before
    /// they are made (two bytes a type of the release, the few types met whole).
    places: Vec<u16>,
    types: Vec<TypeLookups>,
}

/// The lookups of one type: its name index, and the traits of the elements it found, by
/// entry.
struct TypeLookups {
    index: &'static NameIndex,
    traits: Box<[Option<Traits>]>,
}

impl Lookups {
    pub(crate) fn new() -> Lookups {
        Lookups {
            places: Vec::new(),
            types: Vec::new(),
        }
    }

    /// The element that `json_name` names in `ty`, by [`TypeRef::element`].
    #[inline]
    pub(crate) fn element(
        &mut self,
        ty: TypeRef,
        json_name: &str,
    ) -> Option<(ElementMatch, Traits)> {
        let place = usize::from(self.places.get(ty.id()).copied().unwrap_or(0));
        let lookups = match place.checked_sub(1) {
            Some(at) => &mut self.types[at],
            None => self.add(ty),
        };
        let (at, found) = lookups.index.find_at(json_name)?;
        let traits = match lookups.traits.get(at) {
            Some(Some(traits)) => *traits,
            _ => {
                let traits = Traits::of(found);
                if let Some(slot) = lookups.traits.get_mut(at) {
                    *slot = Some(traits);
                }
                traits
            }
        };
        Some((found, traits))
    }

    #[cold]
    fn add(&mut self, ty: TypeRef) -> &mut TypeLookups {
        let id = ty.id();
        if self.places.len() <= id {
            self.places.resize(id + 1, 0);
        }
        let index = ty.name_index();
        self.types.push(TypeLookups {
            index,
            traits: vec![None; index.len()].into_boxed_slice(),
        });
        self.places[id] =
            u16::try_from(self.types.len()).expect("type indexes are u16 by construction");
        let last = self.types.len() - 1;
        &mut self.types[last]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::FhirVersion;

    /// What the lookups give is what the model gives, for every element name of several types,
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
                assert_eq!(lookups.element(ty, name), expected, "{ty:?}.{name}");
            }
        }
    }
}
