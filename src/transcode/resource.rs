//! The response-path driver for FHIR XML of any resource: takes the inner body's frames and
//! turns them into XML with the streaming converter ([`JsonToXml`]), at most `frame_size`
//! bytes of input at a time, and hands the XML out in frames of at most `frame_size` bytes
//! (what the converter held to put elements in order comes out at once, within the reorder
//! limit, and is cut, without a copy).

use bytes::{Buf, Bytes};

use crate::config::Config;
use crate::frames::FrameQueue;
use crate::scan::ScanError;
use crate::xml::resource::{ConvertError, ConvertLimits, JsonToXml};

/// The driver. See the module docs.
pub(crate) struct ResourceTranscoder {
    converter: JsonToXml,
    /// Input not yet fed to the converter.
    pending: FrameQueue,
    frame_size: usize,
    /// Bytes of the inner body fed to the converter.
    position: u64,
    out: Vec<u8>,
    /// Output made and not handed out yet.
    ready: Bytes,
    /// Set once the converter has finished (or failed): nothing more comes out.
    done: bool,
}

/// The JSON is not FHIR JSON of the release: what the converter said (naming the element
/// path), and where in the inner body it was found.
#[derive(Debug)]
pub(crate) struct ResourceError {
    pub(crate) error: ConvertError,
    /// Bytes of the inner body fed when it was found.
    pub(crate) offset: u64,
}

impl From<ResourceError> for ScanError {
    fn from(e: ResourceError) -> Self {
        ScanError::new(
            format!("not FHIR JSON of the release: {}", e.error),
            e.offset,
        )
    }
}

impl std::fmt::Debug for ResourceTranscoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceTranscoder")
            .field("position", &self.position)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ResourceTranscoder {
    /// A driver for one response, in the configured release, holding at most `reorder_limit`
    /// bytes to put elements in order.
    pub(crate) fn new(config: &Config, reorder_limit: usize) -> Self {
        let limits = ConvertLimits {
            reorder_limit,
            max_depth: config.limits.max_depth,
        };
        ResourceTranscoder {
            converter: JsonToXml::new(config.fhir_version, limits),
            pending: FrameQueue::default(),
            frame_size: config.frame_size.max(1),
            position: 0,
            out: Vec::new(),
            ready: Bytes::new(),
            done: false,
        }
    }

    /// Takes a frame of the inner body.
    pub(crate) fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() && !self.done {
            self.pending.push_back(frame);
        }
    }

    /// The next output frame that the input at hand makes, if any.
    pub(crate) fn pull(&mut self) -> Result<Option<Bytes>, ResourceError> {
        if !self.ready.is_empty() {
            return Ok(self.take_ready());
        }
        while self.out.is_empty() {
            let Some(front) = self.pending.front_mut() else {
                return Ok(None);
            };
            let n = front.len().min(self.frame_size);
            let result = self.converter.feed(&front[..n], &mut self.out);
            front.advance(n);
            if front.is_empty() {
                self.pending.pop_front();
            }
            self.position += n as u64;
            if let Err(error) = result {
                return Err(self.fail(error));
            }
        }
        Ok(self.take_out())
    }

    /// The inner body has ended: the rest of the output, frame by frame, then `None`; an
    /// error when the document is incomplete or not FHIR.
    pub(crate) fn finish(&mut self) -> Result<Option<Bytes>, ResourceError> {
        if let Some(frame) = self.pull()? {
            return Ok(Some(frame));
        }
        if self.done {
            return Ok(None);
        }
        self.done = true;
        if let Err(error) = self.converter.finish(&mut self.out) {
            return Err(self.fail(error));
        }
        Ok(self.take_out())
    }

    /// Whether the output is complete (or broken off).
    pub(crate) fn is_done(&self) -> bool {
        self.done && self.out.is_empty() && self.ready.is_empty()
    }

    /// Drops everything after an error: nothing more comes out.
    pub(crate) fn abort(&mut self) {
        self.done = true;
        self.pending.clear();
        self.out = Vec::new();
        self.ready = Bytes::new();
    }

    fn fail(&mut self, error: ConvertError) -> ResourceError {
        self.abort();
        ResourceError {
            error,
            offset: self.position,
        }
    }

    fn take_out(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let capacity = self.out.capacity().min(2 * self.frame_size);
        let out = std::mem::replace(&mut self.out, Vec::with_capacity(capacity));
        self.ready = Bytes::from(out);
        self.take_ready()
    }

    /// The next frame of the output made, at most `frame_size` bytes.
    fn take_ready(&mut self) -> Option<Bytes> {
        let n = self.ready.len().min(self.frame_size);
        (n > 0).then(|| self.ready.split_to(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::Rng;

    fn convert(json: &[u8], splits: &mut Rng, frame_size: usize) -> Result<Vec<u8>, String> {
        let config = Config {
            frame_size,
            ..Config::default()
        };
        let mut t = ResourceTranscoder::new(&config, config.xml_reorder_limit());
        let mut xml = Vec::new();
        let mut rest = json;
        while !rest.is_empty() {
            let n = (splits.next() as usize % 40 + 1).min(rest.len());
            t.push(Bytes::copy_from_slice(&rest[..n]));
            rest = &rest[n..];
            while let Some(frame) = t.pull().map_err(|e| e.error.to_string())? {
                assert!(frame.len() <= frame_size, "bounded frames");
                xml.extend_from_slice(&frame);
            }
        }
        while let Some(frame) = t.finish().map_err(|e| e.error.to_string())? {
            assert!(frame.len() <= frame_size, "bounded frames");
            xml.extend_from_slice(&frame);
        }
        assert!(t.is_done());
        Ok(xml)
    }

    #[test]
    fn any_split_gives_the_same_xml() {
        let json = br#"{"resourceType":"Patient","name":[{"given":["A","B"],"family":"C"}],"active":true,"id":"p1"}"#;
        let mut whole = JsonToXml::new(crate::FhirVersion::R4, ConvertLimits::default());
        let mut expected = Vec::new();
        whole.feed(json, &mut expected).unwrap();
        whole.finish(&mut expected).unwrap();
        let mut rng = Rng(7);
        for frame_size in [1, 3, 16, 1 << 16] {
            for _ in 0..20 {
                assert_eq!(convert(json, &mut rng, frame_size).unwrap(), expected);
            }
        }
        assert!(String::from_utf8(expected)
            .unwrap()
            .contains(r#"<Patient xmlns="http://hl7.org/fhir"><id value="p1"/>"#));
    }

    #[test]
    fn errors_name_the_path_and_stop_the_output() {
        let json = br#"{"resourceType":"Patient","name":[{"givn":["A"]}]}"#;
        let error = convert(json, &mut Rng(1), 8).unwrap_err();
        assert!(error.starts_with("Patient.name[0]"), "{error}");
        let error = convert(br#"{"resourceType":"Patient""#, &mut Rng(1), 8).unwrap_err();
        assert!(error.contains("end of input"), "{error}");
    }
}
