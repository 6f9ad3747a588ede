//! The layer's options, shared by the layer, the service and the response path.

use crate::policy::SecurityPolicy;
use crate::scan::ScanLimits;
use crate::FhirVersion;

/// Everything the service needs to know. A few words, copied into each request's state: a copy
/// is cheaper than counting references to a shared one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) fhir_version: FhirVersion,
    pub(crate) limits: ScanLimits,
    pub(crate) reorder_buffer_limit: usize,
    /// For FHIR XML, when set; else `reorder_buffer_limit`.
    pub(crate) xml_reorder_limit: Option<usize>,
    pub(crate) read_whole_limit: usize,
    pub(crate) frame_size: usize,
    pub(crate) native_when_not_acceptable: bool,
    pub(crate) security_policy: SecurityPolicy,
    pub(crate) uploads: UploadOptions,
    /// The most FHIR JSON held from a FHIR XML request body before the inner service is
    /// called.
    pub(crate) xml_request_read_ahead: usize,
}

/// The options of raw uploads (`POST`/`PUT` of a document to the Binary endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UploadOptions {
    /// Largest raw document accepted, in bytes (default 1 GiB).
    pub(crate) max_upload_size: u64,
    /// Whether plain `application/json` and `application/xml` bodies are raw documents rather
    /// than FHIR resources (default false: FHIR clients label resources so).
    pub(crate) generic_types_as_documents: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            max_upload_size: 1 << 30,
            generic_types_as_documents: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fhir_version: FhirVersion::R4,
            limits: ScanLimits {
                max_depth: 128,
                max_metadata: 64 * 1024,
            },
            reorder_buffer_limit: 4 * 1024 * 1024,
            xml_reorder_limit: None,
            read_whole_limit: 256 * 1024,
            frame_size: 64 * 1024,
            native_when_not_acceptable: false,
            security_policy: SecurityPolicy::Standard,
            uploads: UploadOptions::default(),
            xml_request_read_ahead: 1 << 20,
        }
    }
}

impl Config {
    /// The most of the inner body held to put FHIR XML in element order.
    pub(crate) fn xml_reorder_limit(&self) -> usize {
        self.xml_reorder_limit.unwrap_or(self.reorder_buffer_limit)
    }
}

/// The option methods of [`BinaryNegotiationLayer`](crate::BinaryNegotiationLayer) and
/// [`BinaryNegotiation`](crate::BinaryNegotiation), written once for both: each type has a
/// `config: Config` field.
macro_rules! option_methods {
    () => {
        /// The FHIR release the layer speaks where it must choose (default R4): DSTU2 makes it send
        /// `Accept: application/json+fhir` to the inner service and label its own FHIR responses
        /// with the DSTU2 media types. Binary JSON of every release is read either way.
        pub fn fhir_version(mut self, version: $crate::FhirVersion) -> Self {
            self.config.fhir_version = version;
            self
        }

        /// The most of the inner body held in memory while the Binary cannot be decided yet
        /// (default 4 MiB).
        ///
        /// The raw document can only be served once `resourceType` and `contentType` are known.
        /// When a server writes them after `data` (the official HL7 examples put `data` before
        /// `meta`; DSTU2 packages sort keys, so `content` comes before `contentType`), the layer
        /// holds what it has read until they show up. A Binary that does not show them within this
        /// limit is answered with 502 Bad Gateway.
        pub fn reorder_buffer_limit(mut self, bytes: usize) -> Self {
            self.config.reorder_buffer_limit = bytes;
            self
        }

        /// The most of the inner body held to write FHIR XML in element order (default: the
        /// [`reorder_buffer_limit`](Self::reorder_buffer_limit), 4 MiB).
        ///
        /// FHIR XML writes a Binary's `id`, `meta`, `contentType` and `securityContext` before its
        /// payload, and another resource's elements in definition order; the JSON may have them
        /// later (the HL7 examples put `meta` after `data`). So the layer reads a Binary up to this
        /// far before writing its XML, and holds up to this much of another resource to reorder
        /// it. A Binary whose payload goes on past the limit is streamed with the elements known
        /// by then; one that shows an element XML needs earlier only after that breaks the
        /// transfer rather than leave the element out. Everything held stays in memory until the
        /// client has read what comes before it: a server with slow clients bounds its memory per
        /// response with this. The members before a Binary's payload are always read (they are
        /// bounded by [`max_metadata_size`](Self::max_metadata_size)).
        pub fn xml_reorder_limit(mut self, bytes: usize) -> Self {
            self.config.xml_reorder_limit = Some(bytes);
            self
        }

        /// Inner bodies of at most this many bytes, when their size is known in advance
        /// (`Content-Length`), are read whole before the response head goes out (default 256 KiB).
        ///
        /// Such responses get a `Content-Length` for the decoded document, and any fault in the
        /// Binary becomes a 502 rather than a broken transfer. Larger bodies are streamed.
        ///
        /// The same number of bytes of decoded output is kept before the head goes out when a
        /// streamed document is asked for a range, or under a condition whose validators are not
        /// known yet (see the [crate documentation](crate#conditional-and-range-requests)).
        pub fn read_whole_limit(mut self, bytes: usize) -> Self {
            self.config.read_whole_limit = bytes;
            self
        }

        /// Largest total size, in bytes of JSON text, of the Binary's elements other than its
        /// payload (`id`, `meta`, `securityContext`, ...) that the layer keeps (default 64 KiB).
        /// A Binary with more is answered with 502 Bad Gateway.
        pub fn max_metadata_size(mut self, bytes: usize) -> Self {
            self.config.limits.max_metadata = bytes;
            self
        }

        /// Deepest nesting of JSON objects and arrays accepted, the Binary itself counting as one
        /// level (default 128). Deeper documents are answered with 502 Bad Gateway.
        pub fn max_depth(mut self, levels: usize) -> Self {
            self.config.limits.max_depth = levels.max(1);
            self
        }

        /// Most bytes of the inner body read for one frame of output (default 64 KiB), which
        /// bounds the size of the frames the layer produces.
        pub fn frame_size(mut self, bytes: usize) -> Self {
            self.config.frame_size = bytes.max(1);
            self
        }

        /// Serve the raw document instead of 406 Not Acceptable when the client's `Accept` allows
        /// neither FHIR nor the Binary's content type (default false: 406 with an
        /// OperationOutcome, as FHIR servers do). An unknown `_format` is answered with 406 either
        /// way: it names a format the server cannot produce.
        pub fn serve_native_when_not_acceptable(mut self, yes: bool) -> Self {
            self.config.native_when_not_acceptable = yes;
            self
        }

        /// How the raw document is presented to browsers (default
        /// [`SecurityPolicy::Standard`](crate::SecurityPolicy::Standard):
        /// active content such as HTML or SVG is sandboxed and downloaded, passive content such as
        /// a PDF or an image is shown inline). `X-Content-Type-Options: nosniff` is sent whatever
        /// the policy.
        pub fn security_policy(mut self, policy: $crate::SecurityPolicy) -> Self {
            self.config.security_policy = policy;
            self
        }

        /// Largest raw document a client may upload, in bytes (default 1 GiB, as Google's Cloud
        /// Healthcare API). An upload whose `Content-Length` says more is answered with 413
        /// before the inner service is called; one of unknown length that grows past it is
        /// broken off (the inner service's request body fails) and answered with 413. FHIR XML
        /// that grows past it within the [read-ahead](Self::xml_request_read_ahead) is
        /// answered with 413 before the call.
        pub fn max_upload_size(mut self, bytes: u64) -> Self {
            self.config.uploads.max_upload_size = bytes;
            self
        }

        /// The most FHIR JSON held from a FHIR XML request body before the inner service is
        /// called (default 1 MiB).
        ///
        /// A `POST` or `PUT` of a resource in FHIR XML reaches the inner service as FHIR JSON.
        /// The layer converts the body before it calls the inner service, until the body ends
        /// or the JSON made of it reaches this size:
        ///
        /// - the body ends within the limit and is FHIR: the inner service gets the whole JSON
        ///   with an exact `Content-Length` (servers that refuse chunked uploads take it);
        /// - the body is not FHIR XML, is not well-formed, grows over
        ///   [`max_upload_size`](Self::max_upload_size), fails or ends before its
        ///   `Content-Length` within the limit: the client gets 400 (413 for the size) with an
        ///   OperationOutcome, and the inner service is not called;
        /// - the limit is reached first: the inner service is called with a chunked body that
        ///   gives what was converted, then goes on converting as the XML arrives. A fault in the
        ///   rest makes that body end with an error, never with a complete resource, and the
        ///   client still gets 400 (413) whatever the inner service answers.
        ///
        /// The memory of a request is bounded by this (plus one frame, see
        /// [`frame_size`](Self::frame_size)), and the inner service, made ready, waits for the
        /// client for as long as the read-ahead takes. `0` calls the inner service at once.
        /// Raw documents (any other `Content-Type`) are not read ahead: their size and headers
        /// are checked before the call, and their bytes cannot be malformed.
        pub fn xml_request_read_ahead(mut self, bytes: usize) -> Self {
            self.config.xml_request_read_ahead = bytes;
            self
        }

        /// Treat uploads labelled plain `application/json` or `application/xml` as raw
        /// documents to store in a Binary (default false: they are FHIR resources, as FHIR
        /// clients label them: JSON goes to the inner service as it is, XML as the equivalent
        /// FHIR JSON). For deployments whose clients upload JSON or XML files as documents.
        /// `application/fhir+json` and `application/fhir+xml` are FHIR either way.
        pub fn generic_json_and_xml_as_documents(mut self, yes: bool) -> Self {
            self.config.uploads.generic_types_as_documents = yes;
            self
        }
    };
}

pub(crate) use option_methods;
