//! A strict, borrowing CBOR reader on top of `minicbor::Decoder`.
//!
//! Every call maps a decoding failure to [`Error::Malformed`] naming the item that was expected,
//! and rejects what Keel bundles never contain: indefinite-length items and integers outside
//! `i64`. Nothing here recurses or allocates, so hostile input cannot exhaust the stack or heap.

use minicbor::data::Type;
use minicbor::Decoder;

use crate::Error;

/// A map key: SUIT and COSE use integers; integrated payloads use text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key<'b> {
    Int(i64),
    Text(&'b str),
}

pub(crate) struct Reader<'b> {
    d: Decoder<'b>,
}

impl<'b> Reader<'b> {
    pub(crate) fn new(bytes: &'b [u8]) -> Self {
        Reader { d: Decoder::new(bytes) }
    }

    pub(crate) fn position(&self) -> usize {
        self.d.position()
    }

    /// The input from `start` to the current position (a raw, still encoded item).
    pub(crate) fn raw_since(&self, start: usize) -> &'b [u8] {
        self.d.input().get(start..self.d.position()).unwrap_or(&[])
    }

    /// Fails unless the whole input has been consumed.
    pub(crate) fn end(&self, what: &'static str) -> Result<(), Error> {
        if self.d.position() == self.d.input().len() {
            Ok(())
        } else {
            Err(Error::TrailingBytes(what))
        }
    }

    fn datatype(&self) -> Option<Type> {
        self.d.datatype().ok()
    }

    /// Consumes a tag if there is one; it must be `tag`.
    pub(crate) fn optional_tag(&mut self, tag: u64, what: &'static str) -> Result<bool, Error> {
        if self.datatype() != Some(Type::Tag) {
            return Ok(false);
        }
        match self.d.tag() {
            Ok(t) if t.as_u64() == tag => Ok(true),
            _ => Err(Error::Malformed(what)),
        }
    }

    /// A definite-length array; returns its length.
    pub(crate) fn array(&mut self, what: &'static str) -> Result<u64, Error> {
        match self.d.array() {
            Ok(Some(n)) => Ok(n),
            _ => Err(Error::Malformed(what)),
        }
    }

    /// A definite-length map; returns its number of entries.
    pub(crate) fn map(&mut self, what: &'static str) -> Result<u64, Error> {
        match self.d.map() {
            Ok(Some(n)) => Ok(n),
            _ => Err(Error::Malformed(what)),
        }
    }

    pub(crate) fn uint(&mut self, what: &'static str) -> Result<u64, Error> {
        self.d.u64().map_err(|_| Error::Malformed(what))
    }

    /// An unsigned integer that must fit in a `u32`.
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        u32::try_from(self.uint(what)?).map_err(|_| Error::InvalidValue(what))
    }

    /// A signed or unsigned integer in `i64` range.
    pub(crate) fn int(&mut self, what: &'static str) -> Result<i64, Error> {
        self.d.i64().map_err(|_| Error::Malformed(what))
    }

    /// A definite-length byte string (borrowed).
    pub(crate) fn bytes(&mut self, what: &'static str) -> Result<&'b [u8], Error> {
        self.d.bytes().map_err(|_| Error::Malformed(what))
    }

    /// A byte string and the raw encoded item (head included).
    pub(crate) fn bytes_with_raw(&mut self, what: &'static str) -> Result<(&'b [u8], &'b [u8]), Error> {
        let start = self.position();
        let content = self.bytes(what)?;
        Ok((content, self.raw_since(start)))
    }

    /// A byte string of exactly `N` bytes.
    pub(crate) fn byte_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        self.bytes(what)?.try_into().map_err(|_| Error::InvalidValue(what))
    }

    /// A definite-length UTF-8 text string (borrowed).
    pub(crate) fn text(&mut self, what: &'static str) -> Result<&'b str, Error> {
        self.d.str().map_err(|_| Error::Malformed(what))
    }

    pub(crate) fn null(&mut self, what: &'static str) -> Result<(), Error> {
        self.d.null().map_err(|_| Error::Malformed(what))
    }

    /// A map key: an integer or a text string.
    pub(crate) fn key(&mut self, what: &'static str) -> Result<Key<'b>, Error> {
        match self.datatype() {
            Some(Type::String) => self.text(what).map(Key::Text),
            Some(
                Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int,
            ) => self.int(what).map(Key::Int),
            _ => Err(Error::Malformed(what)),
        }
    }

    /// Skips one complete item of any type (iteratively, without recursion).
    pub(crate) fn skip(&mut self, what: &'static str) -> Result<(), Error> {
        self.d.skip().map_err(|_| Error::Malformed(what))
    }
}

/// Tracks which of up to 64 known fields of one map have been seen.
pub(crate) struct Seen(u64);

impl Seen {
    pub(crate) fn new() -> Self {
        Seen(0)
    }

    /// Marks field `bit` as seen; fails with `DuplicateField` the second time.
    pub(crate) fn mark(&mut self, bit: u32, what: &'static str) -> Result<(), Error> {
        let m = 1u64 << (bit % 64);
        if self.0 & m != 0 {
            return Err(Error::DuplicateField(what));
        }
        self.0 |= m;
        Ok(())
    }

    pub(crate) fn has(&self, bit: u32) -> bool {
        self.0 & (1u64 << (bit % 64)) != 0
    }
}
