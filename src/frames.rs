//! A first-in, first-out queue of body frames that keeps its first frame inline.
//!
//! A small Binary usually arrives in one frame. The frames held while deciding, the input
//! not yet consumed and the frames replayed after the decision are then a single frame each;
//! keeping it inline saves the allocation a `VecDeque` makes for its first element.

use std::collections::VecDeque;

use bytes::Bytes;

/// The queue. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct FrameQueue {
    /// The front frame; None only when the queue is empty.
    first: Option<Bytes>,
    /// The frames after it.
    rest: VecDeque<Bytes>,
}

impl FrameQueue {
    /// A queue of one frame.
    #[cfg(test)]
    pub(crate) fn one(frame: Bytes) -> Self {
        FrameQueue {
            first: Some(frame),
            rest: VecDeque::new(),
        }
    }

    /// Adds `frame` at the back.
    pub(crate) fn push_back(&mut self, frame: Bytes) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Takes the front frame.
    pub(crate) fn pop_front(&mut self) -> Option<Bytes> {
        let front = self.first.take();
        self.first = self.rest.pop_front();
        front
    }

    /// The front frame.
    pub(crate) fn front(&self) -> Option<&Bytes> {
        self.first.as_ref()
    }

    /// The front frame, to consume part of it.
    pub(crate) fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.first.as_mut()
    }

    /// Adds the frames of `other` at the back, in their order.
    pub(crate) fn append(&mut self, other: FrameQueue) {
        if self.first.is_none() {
            *self = other;
            return;
        }
        self.rest.extend(other.first);
        self.rest.extend(other.rest);
    }

    /// Whether the queue holds no frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// Removes every frame.
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    /// The frames, front to back.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(&self.rest)
    }

    /// The total length of the frames.
    pub(crate) fn byte_len(&self) -> u64 {
        self.iter().map(|frame| frame.len() as u64).sum()
    }
}

impl From<Vec<Bytes>> for FrameQueue {
    fn from(frames: Vec<Bytes>) -> Self {
        let mut rest = VecDeque::from(frames);
        FrameQueue {
            first: rest.pop_front(),
            rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_come_out_in_the_order_they_went_in() {
        let mut queue = FrameQueue::default();
        assert!(queue.is_empty());
        assert_eq!(queue.pop_front(), None);
        for text in ["a", "bc", "def"] {
            queue.push_back(Bytes::from(text));
        }
        assert_eq!(queue.byte_len(), 6);
        queue.front_mut().unwrap().truncate(0);
        assert_eq!(queue.pop_front(), Some(Bytes::new()));
        queue.push_back(Bytes::from("gh"));
        let rest: Vec<&Bytes> = queue.iter().collect();
        assert_eq!(rest, ["bc", "def", "gh"]);
        assert_eq!(queue.pop_front(), Some(Bytes::from("bc")));
        assert_eq!(queue.pop_front(), Some(Bytes::from("def")));
        assert_eq!(queue.pop_front(), Some(Bytes::from("gh")));
        assert!(queue.is_empty());
        assert_eq!(queue.pop_front(), None);
    }

    #[test]
    fn a_vector_becomes_a_queue_in_its_order() {
        let queue = FrameQueue::from(vec![Bytes::from("x"), Bytes::from("yz")]);
        assert_eq!(queue.iter().collect::<Vec<_>>(), ["x", "yz"]);
        assert!(FrameQueue::from(Vec::new()).is_empty());
        let mut queue = queue;
        queue.clear();
        assert!(queue.is_empty());
        let mut queue = FrameQueue::one(Bytes::from("w"));
        assert_eq!(queue.pop_front(), Some(Bytes::from("w")));
        assert!(queue.is_empty());
        assert_eq!(queue.byte_len(), 0);
    }

    #[test]
    fn appending_keeps_both_orders() {
        let texts = |queue: &FrameQueue| queue.iter().map(|f| &f[..]).collect::<Vec<_>>().concat();
        let mut queue = FrameQueue::default();
        queue.append(FrameQueue::from(vec![Bytes::from("a"), Bytes::from("b")]));
        assert_eq!(queue.front(), Some(&Bytes::from("a")));
        queue.append(FrameQueue::one(Bytes::from("c")));
        queue.append(FrameQueue::default());
        queue.append(FrameQueue::from(vec![Bytes::from("d"), Bytes::from("e")]));
        assert_eq!(texts(&queue), b"abcde");
        assert_eq!(queue.pop_front(), Some(Bytes::from("a")));
        assert_eq!(texts(&queue), b"bcde");
    }
}
