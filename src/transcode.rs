//! The response-path driver: plain synchronous code that takes the inner body's frames, decides
//! the representation as soon as the Binary shows enough of itself, and then turns the rest of
//! the frames into output frames. The Tower types only move frames in and out of it.
//!
//! Until the decision every frame is also held (kept whole, not copied), so that it can
//! be passed through untouched (FHIR JSON, not a Binary) or read again from the start when the
//! deciding member came after the payload. The usual order (`contentType` before `data`)
//! decides at the first byte of the payload, and nothing is read twice.

mod resource;

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderValue;

use crate::config::Config;
use crate::frames::FrameQueue;
use crate::negotiate::{Decision, Preference, Representation, Spelling};
use crate::policy::common_content_type;
use crate::scan::{
    Event, Field, Member, Members, PayloadElement, PayloadMode, ScanError, ScanLimits, Scanner,
};
use crate::xml;
use crate::FhirVersion;

pub(crate) use resource::{ResourceError, ResourceTranscoder};

/// What the response head should be, once decided.
#[derive(Debug)]
pub(crate) enum Head {
    /// Not a Binary, a Binary without payload, or FHIR JSON chosen: the inner body goes out as
    /// it came, starting with these frames.
    PassThrough(FrameQueue),
    /// The client accepts neither FHIR nor this Binary's content type.
    NotAcceptable {
        /// The Binary's content type.
        content_type: String,
    },
    /// The body is a resource other than a Binary, and the client accepts neither FHIR JSON
    /// nor FHIR XML.
    NotAcceptableResource,
    /// The document itself.
    Native {
        /// The Binary's content type, checked to be a media type and a header value.
        content_type: HeaderValue,
    },
    /// FHIR XML; the output starts with the XML up to the payload text.
    Xml {
        /// How the client spelled the XML media type.
        spelling: Spelling,
    },
    /// The body is not a valid Binary.
    Invalid(ScanError),
}

/// The Binary's own description of itself that goes into the head of the raw document.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Metadata<'a> {
    /// `id`, when it is a string.
    pub(crate) id: Option<Cow<'a, str>>,
    /// `meta.versionId`, when it is a string.
    pub(crate) version_id: Option<Cow<'a, str>>,
    /// `meta.lastUpdated`, when it is a string.
    pub(crate) last_updated: Option<Cow<'a, str>>,
    /// `securityContext.reference`, when it is a string.
    pub(crate) security_context: Option<Cow<'a, str>>,
}

/// What the driver is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading until the representation can be decided.
    Deciding,
    /// XML was chosen; reading on to the end of the object, within the reorder limit, so that
    /// every element that precedes the payload in XML is known before the payload is written.
    AwaitingElements,
    /// Producing output.
    Streaming,
}

/// The driver. See the module docs.
#[derive(Debug)]
pub(crate) struct Transcoder {
    preference: Preference,
    /// The decision when it does not depend on the content type.
    fixed: Option<Decision>,
    limits: ScanLimits,
    reorder_limit: usize,
    /// Held while reading on for the elements FHIR XML writes before the payload.
    xml_reorder_limit: usize,
    frame_size: usize,
    native_when_not_acceptable: bool,
    /// Whether the raw document is only counted (HEAD), not produced.
    count_only: bool,
    phase: Phase,
    /// Set once `resourceType` has shown the body is a Binary.
    is_binary: bool,
    scanner: Scanner,
    /// Input the scanner has not consumed yet. While deciding, its front frame is kept whole
    /// and the scanner's place in it is `front_offset`, so that nothing needs copying to be
    /// held.
    pending: FrameQueue,
    front_offset: usize,
    /// While deciding, the frames the scanner has consumed whole; with `pending`, every frame
    /// received.
    held: FrameQueue,
    /// Bytes received while deciding.
    held_len: usize,
    /// The members known at a decision that reads the held frames again (a replay starts a
    /// fresh scanner), and for FHIR XML; when the decision comes at the payload they stay in
    /// the scanner. Boxed, as most responses never need it.
    members: Option<Box<Members>>,
    /// Set once the output is complete or broken off: nothing more comes out.
    done: bool,
    /// How the client spelled the XML media type, once XML is chosen.
    xml_spelling: Option<Spelling>,
    /// What the XML output needs after the prefix, once it has started.
    xml: Option<XmlOutput>,
    /// Whether the payload was checked (not only skipped) while deciding.
    payload_validated: bool,
    fhir_version: FhirVersion,
    out: BytesMut,
}

/// The state of an XML rendering in progress.
#[derive(Debug)]
struct XmlOutput {
    version: FhirVersion,
    /// The payload element, when there is one (its text and the suffix are still to come).
    payload: Option<PayloadElement>,
}

impl Transcoder {
    /// A driver for one response to a client with this preference; `fixed` is its decision
    /// when that does not depend on the content type (`preference.fixed()`, made at request
    /// time), and `count_only` says the raw document is only counted (`HEAD`).
    ///
    /// Inlined, so that it is built in the allocation that keeps it (see `Reading::new`).
    #[inline]
    pub(crate) fn new(
        preference: Preference,
        fixed: Option<Decision>,
        config: &Config,
        count_only: bool,
    ) -> Self {
        Transcoder {
            fixed,
            preference,
            limits: config.limits,
            reorder_limit: config.reorder_buffer_limit,
            xml_reorder_limit: config.xml_reorder_limit(),
            frame_size: config.frame_size,
            native_when_not_acceptable: config.native_when_not_acceptable,
            count_only,
            phase: Phase::Deciding,
            is_binary: false,
            scanner: Scanner::new(config.limits),
            pending: FrameQueue::default(),
            front_offset: 0,
            held: FrameQueue::default(),
            held_len: 0,
            members: None,
            done: false,
            xml_spelling: None,
            xml: None,
            payload_validated: false,
            fhir_version: config.fhir_version,
            out: BytesMut::new(),
        }
    }

    /// The inner body has `length` bytes and is read whole before the head goes out: FHIR XML
    /// may hold all of it, whatever its own reorder limit.
    pub(crate) fn read_whole(&mut self, length: u64) {
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        self.xml_reorder_limit = self.xml_reorder_limit.max(length);
    }

    /// Bytes of the inner body the scanner has consumed.
    pub(crate) fn input_position(&self) -> u64 {
        self.scanner.position()
    }

    /// Decoded (or counted) payload bytes so far.
    pub(crate) fn decoded_len(&self) -> u64 {
        self.scanner.decoded_len()
    }

    /// The members that hold `member`, as far as it is known: once the scanner has read it,
    /// or when it was known at the decision (a replay starts a fresh scanner that has not read
    /// it again yet). Members that come after the payload are known only once the scanner is
    /// past them.
    pub(crate) fn holder(&self, member: Member) -> Option<&Members> {
        [Some(self.scanner.members()), self.members.as_deref()]
            .into_iter()
            .flatten()
            .find(|members| members.raw(member).is_some())
    }

    /// What the Binary says about itself that the native head carries, as far as it is known.
    pub(crate) fn metadata(&self) -> Metadata<'_> {
        let [version_id, last_updated] = self
            .holder(Member::Meta)
            .map(|m| m.fields(Member::Meta, [Field::VersionId, Field::LastUpdated]))
            .unwrap_or_default();
        let [security_context] = self
            .holder(Member::SecurityContext)
            .map(|m| m.fields(Member::SecurityContext, [Field::Reference]))
            .unwrap_or_default();
        Metadata {
            id: self.holder(Member::Id).and_then(|m| m.str(Member::Id)),
            version_id,
            last_updated,
            security_context,
        }
    }

    /// Takes a frame while deciding; returns the head once it is decided.
    pub(crate) fn push_head(&mut self, frame: Bytes) -> Option<Head> {
        if frame.is_empty() {
            return None;
        }
        self.held_len += frame.len();
        self.pending.push_back(frame);
        self.advance_head()
    }

    /// The inner body ended while deciding.
    pub(crate) fn end_head(&mut self) -> Head {
        if let Err(e) = self.scanner.finish() {
            return Head::Invalid(e);
        }
        self.decide(Event::End).unwrap_or_else(|| {
            Head::Invalid(ScanError::new(
                "the Binary has no contentType",
                self.scanner.position(),
            ))
        })
    }

    fn advance_head(&mut self) -> Option<Head> {
        while let Some(front) = self.pending.front() {
            let (n, event) = match self
                .scanner
                .feed(&front[self.front_offset..], &mut self.out)
            {
                Ok(step) => step,
                Err(e) => return Some(Head::Invalid(e)),
            };
            self.front_offset += n;
            if self.front_offset == front.len() {
                self.front_offset = 0;
                if let Some(consumed) = self.pending.pop_front() {
                    self.held.push_back(consumed);
                }
            }
            if event == Event::NeedMore {
                continue;
            }
            if let Some(head) = self.decide(event) {
                return Some(head);
            }
            if event == Event::PayloadStart {
                // Undecided: find the end of the payload and decide after it. For XML, which
                // reads to the end of the object before writing, check the payload on the way
                // so that bad base64 is a 502 rather than a broken transfer.
                self.payload_validated = self.phase == Phase::AwaitingElements;
                self.scanner.set_payload_mode(if self.payload_validated {
                    PayloadMode::Validate
                } else {
                    PayloadMode::Skip
                });
            }
        }
        let limit = match self.phase {
            // Streaming can start only inside the payload; the members before it are bounded
            // by the scanner's metadata limit.
            Phase::AwaitingElements if self.scanner.payload_key().is_some() => {
                self.xml_reorder_limit
            }
            _ => self.reorder_limit,
        };
        if self.held_len > limit {
            if self.phase == Phase::AwaitingElements {
                // Too large to hold until the end: write the XML with the elements known so
                // far. An element that XML needs before the payload and that only shows up
                // after it then breaks the transfer (see `check_xml_order`).
                return Some(self.start_xml(false));
            }
            return Some(Head::Invalid(ScanError::new(
                format!(
                    "the Binary's resourceType and contentType were not found within the first {} bytes",
                    self.reorder_limit
                ),
                self.scanner.position(),
            )));
        }
        None
    }

    /// Tries to decide after `event`; None when more must be read.
    fn decide(&mut self, event: Event) -> Option<Head> {
        let closed = event == Event::End;
        if !self.is_binary {
            let members = self.scanner.members();
            match members.raw(Member::ResourceType) {
                // Compared as written first: no string is made for the usual spelling.
                Some(raw)
                    if raw == b"\"Binary\""
                        || members.str(Member::ResourceType).as_deref() == Some("Binary") =>
                {
                    if let Some(payload) = self.scanner.mistyped_payload() {
                        return Some(Head::Invalid(ScanError::new(
                            format!("`{}` is not a JSON string", payload.name()),
                            self.scanner.position(),
                        )));
                    }
                    self.is_binary = true;
                }
                // Some other resource: FHIR JSON or XML are its only representations.
                Some(_) => return Some(self.other_resource()),
                None if closed => return Some(self.pass_through()),
                None => return None,
            }
        }
        if self.phase == Phase::AwaitingElements {
            return closed.then(|| self.start_xml(true));
        }
        if let Some(Decision::Serve {
            representation: Representation::FhirXml,
            spelling,
        }) = self.fixed
        {
            // XML whatever the content type: hold on to the end of the object.
            return self.await_xml(spelling, closed);
        }
        if closed && self.scanner.payload_key().is_none() {
            // No document to serve: the resource is the answer, in the FHIR format the client
            // leans to.
            if self.preference.prefers_xml() {
                return self.await_xml(Spelling::Unspecified, closed);
            }
            return Some(self.pass_through());
        }
        // The payload may yet turn out to be missing, so the raw document can only be chosen
        // at (or after) the payload.
        if event != Event::PayloadStart && !self.scanner.payload_done() {
            return None;
        }
        let content_type = match self.scanner.members().raw(Member::ContentType) {
            None if closed => {
                return Some(Head::Invalid(ScanError::new(
                    "the Binary has no contentType",
                    self.scanner.position(),
                )))
            }
            None => return None,
            Some(raw) => {
                let members = self.scanner.members();
                match plain_common_content_type(raw).map_or_else(
                    || checked_content_type(members.str(Member::ContentType)),
                    Ok,
                ) {
                    Ok(content_type) => content_type,
                    Err(message) => {
                        return Some(Head::Invalid(ScanError::new(
                            message,
                            self.scanner.position(),
                        )))
                    }
                }
            }
        };
        // Made only when needed: a decision fixed at request time does not read it.
        let text = || content_type.to_str().unwrap_or_default();
        // A decision fixed at request time is what `resolve` gives for any content type.
        let decision = match self
            .fixed
            .unwrap_or_else(|| self.preference.resolve(text()))
        {
            Decision::NotAcceptable if self.native_when_not_acceptable => Decision::Serve {
                representation: Representation::Native,
                spelling: Spelling::Unspecified,
            },
            decision => decision,
        };
        match decision {
            Decision::NotAcceptable => Some(Head::NotAcceptable {
                content_type: text().to_owned(),
            }),
            Decision::Serve {
                representation: Representation::FhirJson,
                ..
            } => Some(self.pass_through()),
            Decision::Serve {
                representation: Representation::Native,
                ..
            } => {
                let mode = if self.count_only {
                    PayloadMode::Validate
                } else {
                    PayloadMode::Decode
                };
                if event == Event::PayloadStart {
                    // Nothing of the payload has been read yet: go on from here, with the
                    // members where they are.
                    self.scanner.set_payload_mode(mode);
                    self.stop_holding();
                } else {
                    self.members = Some(Box::new(self.scanner.take_members()));
                    self.replay(mode);
                }
                self.phase = Phase::Streaming;
                Some(Head::Native { content_type })
            }
            Decision::Serve {
                representation: Representation::FhirXml,
                spelling,
            } => self.await_xml(spelling, closed),
        }
    }

    /// XML is chosen: starts it when the object is closed, else reads on.
    fn await_xml(&mut self, spelling: Spelling, closed: bool) -> Option<Head> {
        self.phase = Phase::AwaitingElements;
        self.xml_spelling = Some(spelling);
        closed.then(|| self.start_xml(true))
    }

    /// Writes the XML up to the payload text and goes on with the payload (read again from
    /// the start) as XML attribute text. `closed`: the whole object has been read.
    fn start_xml(&mut self, closed: bool) -> Head {
        let mut payload = self.scanner.payload_key();
        if payload.is_some() && closed {
            // base64Binary has no empty value in XML: a payload that decodes to nothing is
            // written as no payload. Its length is known once it has been checked.
            let decoded = if self.payload_validated {
                Ok(self.scanner.decoded_len())
            } else {
                self.validate_held_payload()
            };
            match decoded {
                Ok(0) => payload = None,
                Ok(_) => {}
                Err(e) => return Head::Invalid(e),
            }
        }
        let members = self.members.insert(Box::new(self.scanner.take_members()));
        let version = xml_version(self.fhir_version, payload);
        let mut prefix = Vec::new();
        if let Err(e) = xml::binary_prefix(&members.to_map(), payload, version, &mut prefix) {
            return Head::Invalid(ScanError::new(e.to_string(), self.scanner.position()));
        }
        self.out.extend_from_slice(&prefix);
        if payload.is_some() {
            self.replay(PayloadMode::Text);
        } else {
            // The object is closed and the document complete: only the end of the body (which
            // must be whitespace) is left for this scanner.
            self.stop_holding();
        }
        self.xml = Some(XmlOutput { version, payload });
        self.phase = Phase::Streaming;
        Head::Xml {
            spelling: self.xml_spelling.unwrap_or(Spelling::Unspecified),
        }
    }

    /// Reads the held frames again, up to the end of the payload, checking it; returns its
    /// decoded length.
    fn validate_held_payload(&self) -> Result<u64, ScanError> {
        let mut scanner = Scanner::new(self.limits);
        scanner.set_payload_mode(PayloadMode::Validate);
        let mut none = BytesMut::new();
        for frame in self.held.iter().chain(self.pending.iter()) {
            let mut rest = &frame[..];
            while !rest.is_empty() && !scanner.payload_done() {
                let (n, _) = scanner.feed(rest, &mut none)?;
                rest = &rest[n..];
            }
        }
        Ok(scanner.decoded_len())
    }

    /// Fails when the scanner has met an element that XML writes before the payload but that
    /// was not known when the prefix was written.
    fn check_xml_order(&self) -> Result<(), ScanError> {
        let Some(XmlOutput {
            payload: Some(payload),
            ..
        }) = &self.xml
        else {
            return Ok(());
        };
        let late = self.scanner.members().keys().find(|key| {
            *key != payload.extension_key()
                && !self.members.as_ref().is_some_and(|m| m.contains_key(key))
        });
        match late {
            Some(key) => Err(ScanError::new(
                format!(
                    "the Binary's `{key}` comes after its payload, in a document larger than the reorder buffer; FHIR XML needs it before the payload"
                ),
                self.scanner.position(),
            )),
            None => Ok(()),
        }
    }

    /// Reads everything held again from the start, with a fresh scanner in `mode`.
    fn replay(&mut self, mode: PayloadMode) {
        self.scanner = Scanner::new(self.limits);
        self.scanner.set_payload_mode(mode);
        self.pending = self.take_received();
    }

    /// A resource other than a Binary: passed through (the response path renders it as XML
    /// when the client prefers XML), unless the client accepts neither FHIR JSON (nor plain
    /// JSON) nor FHIR XML.
    fn other_resource(&mut self) -> Head {
        // Plain `application/json` is FHIR JSON here, as FHIR servers take it.
        let not_acceptable = |t| self.preference.resolve(t) == Decision::NotAcceptable;
        if not_acceptable("application/fhir+json")
            && not_acceptable("application/json")
            && !self.preference.prefers_xml()
            && !self.native_when_not_acceptable
        {
            return Head::NotAcceptableResource;
        }
        self.pass_through()
    }

    fn pass_through(&mut self) -> Head {
        Head::PassThrough(self.take_received())
    }

    /// Every frame received while deciding, whole and in order; nothing is held any more.
    fn take_received(&mut self) -> FrameQueue {
        let mut received = std::mem::take(&mut self.held);
        received.append(std::mem::take(&mut self.pending));
        self.front_offset = 0;
        self.held_len = 0;
        received
    }

    /// The scanner goes on from where it is: what it has consumed is no longer held.
    fn stop_holding(&mut self) {
        self.held.clear();
        self.held_len = 0;
        if let Some(front) = self.pending.front_mut() {
            front.advance(self.front_offset);
        }
        self.front_offset = 0;
    }

    /// Takes a frame of the inner body after the head.
    pub(crate) fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.pending.push_back(frame);
        }
    }

    /// The next output frame made from the input at hand; None when more input is needed.
    pub(crate) fn pull(&mut self) -> Result<Option<Bytes>, ScanError> {
        if self.done {
            return Ok(None);
        }
        let target = self.frame_size.div_ceil(2);
        while self.out.len() < target {
            let Some(front) = self.pending.front_mut() else {
                break;
            };
            let take = front.len().min(self.frame_size);
            // Room for this input's output at once.
            self.out.reserve(self.scanner.output_room(&front[..take]));
            let result = self.scanner.feed(&front[..take], &mut self.out);
            let checked = match result {
                Ok((n, event)) => {
                    front.advance(n);
                    if front.is_empty() {
                        self.pending.pop_front();
                    }
                    if event == Event::Member {
                        self.check_xml_order()
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                self.abort();
                return Err(e);
            }
        }
        Ok(self.take_out())
    }

    /// The inner body ended: returns the output frames still to come, one a call, then
    /// `Ok(None)` once the document is checked to be complete.
    pub(crate) fn finish(&mut self) -> Result<Option<Bytes>, ScanError> {
        if let Some(frame) = self.pull()? {
            return Ok(Some(frame));
        }
        if self.done {
            return Ok(None);
        }
        self.done = true;
        self.scanner.finish()?;
        let Some(XmlOutput {
            version,
            payload: Some(payload),
        }) = self.xml
        else {
            return Ok(None);
        };
        let mut suffix = Vec::new();
        xml::binary_suffix(
            &self.scanner.members().to_map(),
            payload,
            version,
            &mut suffix,
        )
        .map_err(|e| ScanError::new(e.to_string(), self.scanner.position()))?;
        Ok(Some(Bytes::from(suffix)))
    }

    /// Whether the output is complete (or broken off).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    fn take_out(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            // Taken whole rather than split off: a buffer filled to its capacity becomes
            // `Bytes` without a shared header to allocate.
            Some(std::mem::take(&mut self.out).freeze())
        }
    }

    /// Drops everything after an error: nothing more comes out.
    pub(crate) fn abort(&mut self) {
        self.done = true;
        self.pending.clear();
        self.out.clear();
    }
}

/// The Binary's `contentType`, checked to be a media type that can stand in a header.
fn checked_content_type(text: Option<Cow<'_, str>>) -> Result<HeaderValue, String> {
    let Some(text) = text else {
        return Err("the Binary's contentType is not a string".into());
    };
    if let Some((known, _)) = common_content_type(text.as_bytes()) {
        return Ok(known.clone());
    }
    if is_bare_media_type(&text) {
        // Visible ASCII only: a valid header value, kept without another copy when owned.
        let bytes = match text {
            Cow::Borrowed(text) => Bytes::copy_from_slice(text.as_bytes()),
            Cow::Owned(text) => Bytes::from(text),
        };
        return HeaderValue::from_maybe_shared(bytes)
            .map_err(|_| "the Binary's contentType cannot be sent as a header".into());
    }
    parsed_content_type(&text)
}

/// The static header value of a common content type (see
/// [`COMMON_CONTENT_TYPES`](crate::policy::COMMON_CONTENT_TYPES)) written
/// plainly as a JSON string (`"application/pdf"`), read as it stands in the text.
fn plain_common_content_type(json: &[u8]) -> Option<HeaderValue> {
    let text = json.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    common_content_type(text).map(|(known, _)| known.clone())
}

/// [`checked_content_type`] for any text, with the media type parser.
fn parsed_content_type(text: &str) -> Result<HeaderValue, String> {
    let trimmed = text.trim_matches([' ', '\t']);
    if trimmed.is_empty() {
        return Err("the Binary's contentType is empty".into());
    }
    let header = HeaderValue::from_str(text).map_err(|_| {
        format!(
            "the Binary's contentType {:?} cannot be sent as a header (control characters)",
            text
        )
    })?;
    let media_type = mediatype::MediaType::parse(trimmed)
        .map_err(|e| format!("the Binary's contentType {text:?} is not a media type: {e}"))?;
    if !is_concrete(&media_type) {
        return Err(format!(
            "the Binary's contentType {text:?} is not a media type: a wildcard, a name outside \
             RFC 6838's characters or an empty parameter value"
        ));
    }
    Ok(header)
}

/// Whether `text` is a bare `type/subtype` or `type/subtype+suffix` of RFC 6838 names, without
/// parameters or spaces: what almost every Binary has, and a subset of what `mediatype` and
/// [`is_concrete`] accept together, so it needs no parser.
fn is_bare_media_type(text: &str) -> bool {
    fn name(part: &str) -> bool {
        (1..=127).contains(&part.len())
            && part.as_bytes()[0].is_ascii_alphanumeric()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.".contains(&b))
    }
    let Some((kind, rest)) = text.split_once('/') else {
        return false;
    };
    name(kind)
        && match rest.split_once('+') {
            Some((subtype, suffix)) => name(subtype) && name(suffix),
            None => name(rest),
        }
}

/// Whether a parsed media type is one a document can have: the parser also takes wildcards,
/// `%`, `'` and `*` in names and empty parameter values (`charset=`), none of which a
/// Content-Type may carry (RFC 6838 names, RFC 9110 parameter values).
fn is_concrete(media_type: &mediatype::MediaType<'_>) -> bool {
    fn restricted(c: char) -> bool {
        c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c)
    }
    fn name(text: &str) -> bool {
        text.starts_with(|c: char| c.is_ascii_alphanumeric()) && text.chars().all(restricted)
    }
    let names = [
        Some(&media_type.ty),
        Some(&media_type.subty),
        media_type.suffix.as_ref(),
    ];
    names.into_iter().flatten().all(|n| name(n.as_str()))
        && media_type.params.iter().all(|(key, value)| {
            let value = value.as_str();
            name(key.as_str())
                && (value.starts_with('"') || (!value.is_empty() && value.chars().all(restricted)))
        })
}

/// The release whose XML schema the output follows: the configured one, unless the payload
/// member says the document is of the other era (`content` before R4, `data` from R4 on).
fn xml_version(configured: FhirVersion, payload: Option<PayloadElement>) -> FhirVersion {
    match (payload, configured) {
        (Some(PayloadElement::Content), FhirVersion::R4 | FhirVersion::R4B | FhirVersion::R5) => {
            FhirVersion::Stu3
        }
        (Some(PayloadElement::Data), FhirVersion::Dstu2 | FhirVersion::Stu3) => FhirVersion::R4,
        _ => configured,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn transcoder(accept: Option<&str>, query: Option<&str>, reorder_limit: usize) -> Transcoder {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(http::header::ACCEPT, accept.parse().unwrap());
        }
        let preference = Preference::from_request(query, &headers, "4.0");
        let config = Config {
            reorder_buffer_limit: reorder_limit,
            frame_size: 16,
            ..Config::default()
        };
        Transcoder::new(preference.clone(), preference.fixed(), &config, false)
    }

    /// Feeds `frames` until the head is decided, then the rest; returns the head, the frames
    /// fed before it was decided, and the output.
    fn run(t: &mut Transcoder, frames: &[&str]) -> (Head, usize, Result<Vec<u8>, ScanError>) {
        run_with(t, frames, 16 + 12)
    }

    /// [`run`], the output frames after the head of at most `max_frame` bytes.
    fn run_with(
        t: &mut Transcoder,
        frames: &[&str],
        max_frame: usize,
    ) -> (Head, usize, Result<Vec<u8>, ScanError>) {
        let mut frames = frames.iter().map(|f| Bytes::copy_from_slice(f.as_bytes()));
        let mut fed = 0;
        let head = loop {
            match frames.next() {
                Some(frame) => {
                    fed += 1;
                    if let Some(head) = t.push_head(frame) {
                        break head;
                    }
                }
                None => break t.end_head(),
            }
        };
        let mut output = Vec::new();
        let result = (|| {
            for frame in frames {
                t.push(frame);
                while let Some(out) = t.pull()? {
                    assert!(out.len() <= max_frame, "bounded frames");
                    output.extend_from_slice(&out);
                }
            }
            while let Some(out) = t.finish()? {
                output.extend_from_slice(&out);
            }
            Ok(output)
        })();
        (head, fed, result)
    }

    #[test]
    fn common_content_types_are_bare_media_types() {
        for (header, _) in &crate::policy::COMMON_CONTENT_TYPES {
            let text = header.to_str().unwrap();
            assert!(is_bare_media_type(text), "{text}");
            let header = checked_content_type(Some(Cow::Borrowed(text))).unwrap();
            assert_eq!(header, parsed_content_type(text).unwrap(), "{text}");
            let json = format!("\"{text}\"");
            assert_eq!(
                plain_common_content_type(json.as_bytes()),
                Some(header),
                "{text}"
            );
        }
        // Anything else goes through the JSON string and the checks.
        for json in [
            r#""application\/pdf""#,
            r#""Application/pdf""#,
            r#""application/pdf ""#,
            r#""application/pdf"#,
            "application/pdf",
            r#""image/gif""#,
        ] {
            assert_eq!(plain_common_content_type(json.as_bytes()), None, "{json}");
        }
    }

    #[test]
    fn bare_media_types_are_ones_the_parser_accepts() {
        for bare in [
            "application/pdf",
            "image/svg+xml",
            "application/fhir+json",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ] {
            assert!(is_bare_media_type(bare), "{bare}");
            assert!(parsed_content_type(bare).is_ok(), "{bare}");
        }
        // Not bare, left to the parser.
        for other in [
            "text/x-c++src",
            "text/plain; charset=utf-8",
            " text/plain",
            "*/*",
            "text/*",
            "text",
            "text/",
            "/plain",
            "a/b+",
            "a/+b",
            "a/.b",
            "a%/b",
        ] {
            assert!(!is_bare_media_type(other), "{other}");
        }
        // Random texts over the characters that matter: whatever is bare, the parser accepts.
        let alphabet = b"aZ09/+.-;= \"*%'!#_^$&";
        let mut rng = crate::test_rng::Rng(0x2545_F491_4F6C_DD1D);
        let mut bare = 0;
        for _ in 0..200_000 {
            // Two parts around a slash, each up to five characters.
            let mut bits = rng.next();
            let mut part = |text: &mut String| {
                for _ in 0..bits % 6 {
                    bits >>= 3;
                    text.push(char::from(alphabet[bits as usize % alphabet.len()]));
                }
                bits >>= 5;
            };
            let mut text = String::new();
            part(&mut text);
            text.push('/');
            part(&mut text);
            if is_bare_media_type(&text) {
                bare += 1;
                assert!(parsed_content_type(&text).is_ok(), "{text:?}");
            }
        }
        assert!(bare > 500, "the texts reach the bare case ({bare})");
    }

    #[test]
    fn the_head_is_decided_at_the_first_byte_of_the_payload() {
        let mut t = transcoder(None, None, 1 << 20);
        let (head, fed, output) = run(
            &mut t,
            &[
                r#"{"resourceType":"Binary","contentType":"text/plain","data":"SGVsbG8g"#,
                r#"d29ybGQ="}"#,
            ],
        );
        assert!(matches!(head, Head::Native { ref content_type } if content_type == "text/plain"));
        assert_eq!(fed, 1, "decided before the rest of the payload arrived");
        assert_eq!(output.unwrap(), b"Hello world");
    }

    #[test]
    fn a_content_type_after_the_payload_replays_what_was_held() {
        let mut t = transcoder(None, None, 1 << 20);
        let (head, fed, output) = run(
            &mut t,
            &[
                r#"{"resourceType":"Binary","data":"SGVsbG8g"#,
                r#"d29ybGQ=","contentType":"text/plain""#,
                "}",
            ],
        );
        assert!(matches!(head, Head::Native { .. }), "{head:?}");
        assert_eq!(fed, 2);
        assert_eq!(output.unwrap(), b"Hello world");
    }

    #[test]
    fn other_resources_and_fhir_json_pass_the_held_frames_through() {
        let frames = [r#"{"id":"1","resourceType":"Pat"#, r#"ient","x":1}"#];
        let mut t = transcoder(None, None, 1 << 20);
        let (head, _, _) = run(&mut t, &frames);
        let Head::PassThrough(held) = head else {
            panic!("{head:?}")
        };
        assert_eq!(
            held.iter().map(|f| &f[..]).collect::<Vec<_>>().concat(),
            frames.concat().as_bytes()
        );

        let mut t = transcoder(
            Some("application/fhir+json;q=0.9, image/*;q=0.5"),
            None,
            1 << 20,
        );
        let frames = [
            r#"{"resourceType":"Binary","contentType":"image/png","da"#,
            r#"ta":"QQ=="}"#,
        ];
        let (head, fed, _) = run(&mut t, &frames);
        let Head::PassThrough(held) = head else {
            panic!("{head:?}")
        };
        assert_eq!(fed, 2);
        assert_eq!(
            held.iter().map(|f| &f[..]).collect::<Vec<_>>().concat(),
            frames.concat().as_bytes()
        );
    }

    #[test]
    fn not_acceptable_and_over_the_limit() {
        let mut t = transcoder(Some("application/pdf"), None, 1 << 20);
        let (head, _, _) = run(
            &mut t,
            &[r#"{"resourceType":"Binary","contentType":"image/png","data":"QQ=="}"#],
        );
        assert!(
            matches!(head, Head::NotAcceptable { ref content_type } if content_type == "image/png")
        );

        let mut t = transcoder(None, None, 32);
        let (head, _, _) = run(
            &mut t,
            &[
                r#"{"resourceType":"Binary","data":""#,
                "QUFBQUFBQUFBQUFB",
                "QUFB",
                r#"","contentType":"a/b"}"#,
            ],
        );
        let Head::Invalid(e) = head else {
            panic!("{head:?}")
        };
        assert!(e.message().contains("within the first 32 bytes"), "{e}");
    }

    #[test]
    fn xml_waits_for_every_element_then_writes_them_in_order() {
        let mut t = transcoder(None, Some("_format=xml"), 1 << 20);
        let (head, fed, output) = run(
            &mut t,
            &[
                r#"{"resourceType":"Binary","data":"SGVs"#,
                r#"bG8=","contentType":"text/plain","#,
                r#""id":"x"}"#,
            ],
        );
        assert!(matches!(head, Head::Xml { .. }), "{head:?}");
        assert_eq!(fed, 3);
        let xml = String::from_utf8(output.unwrap()).unwrap();
        assert!(
            xml.ends_with(r#"<Binary xmlns="http://hl7.org/fhir"><id value="x"/><contentType value="text/plain"/><data value="SGVsbG8="/></Binary>"#),
            "{xml}"
        );
    }

    /// A transcoder for `_format=xml` with a reorder limit of 1 MiB and `xml_limit` for XML.
    fn xml_transcoder(xml_limit: usize) -> Transcoder {
        let preference = Preference::from_request(Some("_format=xml"), &HeaderMap::new(), "4.0");
        let config = Config {
            reorder_buffer_limit: 1 << 20,
            xml_reorder_limit: Some(xml_limit),
            frame_size: 16,
            ..Config::default()
        };
        Transcoder::new(preference.clone(), preference.fixed(), &config, false)
    }

    #[test]
    fn xml_reads_ahead_no_further_than_its_own_limit() {
        let payload = "QUFB".repeat(40);
        let frames = [
            r#"{"resourceType":"Binary","contentType":"text/plain","data":""#,
            &payload[..80],
            &payload[80..],
            r#"","id":"late"}"#,
        ];
        // Within the limit: the late `id` is found and written first.
        let mut t = xml_transcoder(1024);
        let (head, fed, output) = run_with(&mut t, &frames, 256);
        assert!(matches!(head, Head::Xml { .. }), "{head:?}");
        assert_eq!(fed, 4);
        let xml = String::from_utf8(output.unwrap()).unwrap();
        assert!(
            xml.contains(&format!(
                r#"<id value="late"/><contentType value="text/plain"/><data value="{payload}"/>"#
            )),
            "{xml}"
        );
        // Past it: streaming starts inside the payload, and the late `id` breaks the output.
        let mut t = xml_transcoder(100);
        let (head, fed, output) = run_with(&mut t, &frames, 256);
        assert!(matches!(head, Head::Xml { .. }), "{head:?}");
        assert_eq!(fed, 2, "the head goes out once the limit is passed");
        let error = output.unwrap_err();
        assert!(
            error.message().contains("`id` comes after its payload"),
            "{error}"
        );
        // Without late elements the whole document streams.
        let mut t = xml_transcoder(100);
        let (_, fed, output) = run_with(&mut t, &[frames[0], frames[1], frames[2], r#""}"#], 256);
        assert_eq!(fed, 2);
        let xml = String::from_utf8(output.unwrap()).unwrap();
        assert!(
            xml.ends_with(&format!(
                r#"<contentType value="text/plain"/><data value="{payload}"/></Binary>"#
            )),
            "{xml}"
        );
    }

    #[test]
    fn xml_waits_for_the_payload_whatever_its_limit() {
        // The members before the payload are more than the XML limit: they are all read and
        // written before the payload, which is not left out.
        let id = "x".repeat(60);
        let first = format!(r#"{{"resourceType":"Binary","id":"{id}","#);
        let frames = [
            &first[..],
            r#""contentType":"text/plain","#,
            r#""data":"QUFB"}"#,
        ];
        let mut t = xml_transcoder(16);
        let (head, _, output) = run(&mut t, &frames);
        assert!(matches!(head, Head::Xml { .. }), "{head:?}");
        let xml = String::from_utf8(output.unwrap()).unwrap();
        assert!(
            xml.ends_with(&format!(r#"<id value="{id}"/><contentType value="text/plain"/><data value="QUFB"/></Binary>"#)),
            "{xml}"
        );
    }

    #[test]
    fn bad_base64_before_the_xml_head_is_found_before_it() {
        let mut t = transcoder(None, Some("_format=xml"), 1 << 20);
        let (head, _, _) = run(
            &mut t,
            &[r#"{"resourceType":"Binary","contentType":"text/plain","data":"SG!s"}"#],
        );
        let Head::Invalid(e) = head else {
            panic!("{head:?}")
        };
        assert!(e.message().contains("invalid base64 character '!'"), "{e}");
    }
}
