//! FHIR releases and the media types each one spells.

use http::HeaderValue;

use crate::negotiate::Spelling;

/// A FHIR release.
///
/// The layer reads Binary JSON of every release without being told which (`content` in DSTU2
/// and STU3, `data` from R4 on). The configured release decides what the layer writes where it
/// must choose: the `Accept` it sends to the inner service, the media types of the FHIR
/// responses it makes, and which elements FHIR XML may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum FhirVersion {
    /// DSTU2 (1.0): `application/json+fhir`, `application/xml+fhir`.
    Dstu2,
    /// STU3 (3.0).
    Stu3,
    /// R4 (4.0), the default.
    #[default]
    R4,
    /// R4B (4.3).
    R4B,
    /// R5 (5.0).
    R5,
}

impl FhirVersion {
    /// The FHIR JSON media type of this release, as sent in `Accept` to the inner service and
    /// on the OperationOutcomes the layer makes.
    pub(crate) fn json_media_type(self) -> &'static str {
        match self {
            FhirVersion::Dstu2 => "application/json+fhir",
            _ => "application/fhir+json",
        }
    }

    /// The value of the `fhirVersion` media type parameter that names this release
    /// (`application/fhir+xml; fhirVersion=4.0`).
    pub(crate) fn media_type_parameter(self) -> &'static str {
        match self {
            FhirVersion::Dstu2 => "1.0",
            FhirVersion::Stu3 => "3.0",
            FhirVersion::R4 => "4.0",
            FhirVersion::R4B => "4.3",
            FhirVersion::R5 => "5.0",
        }
    }

    /// The `Content-Type` of FHIR XML the layer writes: the spelling the client used, else
    /// the configured release's.
    pub(crate) fn xml_content_type(self, spelling: Spelling) -> HeaderValue {
        let dstu2 = match spelling {
            Spelling::Dstu2 => true,
            Spelling::Current => false,
            Spelling::Unspecified => self == FhirVersion::Dstu2,
        };
        HeaderValue::from_static(if dstu2 {
            "application/xml+fhir;charset=utf-8"
        } else {
            "application/fhir+xml;charset=utf-8"
        })
    }

    /// The `Content-Type` of FHIR JSON the layer writes (its OperationOutcomes).
    pub(crate) fn json_content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            FhirVersion::Dstu2 => "application/json+fhir;charset=utf-8",
            _ => "application/fhir+json;charset=utf-8",
        })
    }
}
