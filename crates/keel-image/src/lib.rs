//! # Keel app image
//!
//! An app slot holds a 256-byte [`Header`] followed by the app's flat image (the bytes of its
//! execution region from the load address up, as produced from the app's ELF). The visor copies
//! the image into the execution region and only starts it if the header is well formed, the
//! image fits the region, and the SHA-256 digest over `header[..HASHED_LEN] ++ image` matches.
//!
//! All fields are little endian at fixed offsets (see `docs/image-format.md`). Parsing never
//! panics: every malformed header yields an [`ImageError`].
#![no_std]

use sha2::{Digest, Sha256};

/// Header size in bytes; the image starts right after it in the slot.
pub const HEADER_SIZE: usize = 256;
/// The header bytes covered by the digest (everything before the digest field).
pub const HASHED_LEN: usize = 0xA0;
/// `"KAPP"` little endian.
pub const MAGIC: u32 = 0x5050_414B;
/// Current header format version.
pub const FORMAT_VERSION: u16 = 1;
/// Length of the name field.
pub const NAME_LEN: usize = 32;
/// Length of the version string field.
pub const VERSION_LEN: usize = 32;

// Field offsets.
const O_MAGIC: usize = 0x00;
const O_FORMAT: usize = 0x04;
const O_HDR_SIZE: usize = 0x06;
const O_IMAGE_SIZE: usize = 0x08;
const O_LOAD_ADDR: usize = 0x0C;
const O_STACK_LIMIT: usize = 0x10;
const O_ABI_MAJOR: usize = 0x14;
const O_ABI_MINOR: usize = 0x16;
const O_FLAGS: usize = 0x18;
const O_NAME: usize = 0x20;
const O_VERSION: usize = 0x40;
const O_DEBUG_KEY: usize = 0x60;
// 0x80..0xA0 reserved (zero)
const O_DIGEST: usize = 0xA0;

/// What can be wrong with an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Fewer bytes than a header.
    Truncated,
    /// Magic is not `KAPP` (e.g. an erased or never-written slot).
    BadMagic,
    /// Unknown header format version or size.
    UnsupportedFormat,
    /// The image is empty, larger than the slot or than the execution region.
    BadSize,
    /// The load address is not the start of the execution region.
    BadLoadAddress,
    /// The app was built for an ABI this visor does not run: another major, or a newer minor.
    AbiTooNew,
    /// The digest does not match the contents.
    DigestMismatch,
    /// A reserved field is not zero.
    ReservedNotZero,
}

impl ImageError {
    /// Short description for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageError::Truncated => "truncated header",
            ImageError::BadMagic => "no app image (bad magic)",
            ImageError::UnsupportedFormat => "unsupported header format",
            ImageError::BadSize => "image size out of range",
            ImageError::BadLoadAddress => "load address is not the app execution region",
            ImageError::AbiTooNew => "app built for another ABI (other major or newer minor)",
            ImageError::DigestMismatch => "digest mismatch",
            ImageError::ReservedNotZero => "reserved header field not zero",
        }
    }
}

impl core::fmt::Display for ImageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Size of the image that follows the header.
    pub image_size: u32,
    /// Address the image is linked to run at (start of its vector table).
    pub load_addr: u32,
    /// Lowest address of the app's main stack (programmed into MSPLIM_NS), 0 for none.
    pub stack_limit: u32,
    /// ABI major version the app was built against.
    pub abi_major: u16,
    /// Minimum ABI minor version the app needs.
    pub abi_minor: u16,
    /// Flags, 0 for now.
    pub flags: u32,
    /// App name, NUL padded.
    pub name: [u8; NAME_LEN],
    /// App version string, NUL padded.
    pub version: [u8; VERSION_LEN],
    /// The X25519 public key allowed to open remote debugging sessions with this app; all zero:
    /// the app cannot be debugged. Covered by the digest, so by the bundle's signature too.
    pub debug_key: [u8; 32],
    /// SHA-256 over `header[..HASHED_LEN] ++ image`.
    pub digest: [u8; 32],
}

/// The execution environment a header is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Start of the app execution region.
    pub exec_base: u32,
    /// Size of the app execution region.
    pub exec_size: u32,
    /// Bytes available in the slot after the header.
    pub slot_capacity: u32,
    /// ABI offered by the visor: (major, minor).
    pub abi: (u16, u16),
}

fn rd32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn rd16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn str_field(b: &[u8]) -> &str {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("?")
}

impl Header {
    /// Parses and checks a header against `target` (everything except the digest).
    pub fn parse(bytes: &[u8], target: &Target) -> Result<Header, ImageError> {
        if bytes.len() < HEADER_SIZE {
            return Err(ImageError::Truncated);
        }
        let b = &bytes[..HEADER_SIZE];
        if rd32(b, O_MAGIC) != MAGIC {
            return Err(ImageError::BadMagic);
        }
        if rd16(b, O_FORMAT) != FORMAT_VERSION || rd16(b, O_HDR_SIZE) as usize != HEADER_SIZE {
            return Err(ImageError::UnsupportedFormat);
        }
        if b[0x1C..0x20].iter().chain(&b[O_DEBUG_KEY + 32..O_DIGEST]).chain(&b[O_DIGEST + 32..]).any(|&x| x != 0) {
            return Err(ImageError::ReservedNotZero);
        }
        let mut h = Header {
            image_size: rd32(b, O_IMAGE_SIZE),
            load_addr: rd32(b, O_LOAD_ADDR),
            stack_limit: rd32(b, O_STACK_LIMIT),
            abi_major: rd16(b, O_ABI_MAJOR),
            abi_minor: rd16(b, O_ABI_MINOR),
            flags: rd32(b, O_FLAGS),
            name: [0; NAME_LEN],
            version: [0; VERSION_LEN],
            debug_key: [0; 32],
            digest: [0; 32],
        };
        h.debug_key.copy_from_slice(&b[O_DEBUG_KEY..O_DEBUG_KEY + 32]);
        h.name.copy_from_slice(&b[O_NAME..O_NAME + NAME_LEN]);
        h.version.copy_from_slice(&b[O_VERSION..O_VERSION + VERSION_LEN]);
        h.digest.copy_from_slice(&b[O_DIGEST..O_DIGEST + 32]);
        // A vector table needs at least the initial SP and the reset vector.
        if h.image_size < 8 || h.image_size > target.exec_size || h.image_size > target.slot_capacity {
            return Err(ImageError::BadSize);
        }
        if h.flags != 0 {
            return Err(ImageError::ReservedNotZero);
        }
        if h.load_addr != target.exec_base {
            return Err(ImageError::BadLoadAddress);
        }
        if h.abi_major != target.abi.0 || h.abi_minor > target.abi.1 {
            return Err(ImageError::AbiTooNew);
        }
        Ok(h)
    }

    /// The app name as text.
    pub fn name_str(&self) -> &str {
        str_field(&self.name)
    }

    /// The app version as text.
    pub fn version_str(&self) -> &str {
        str_field(&self.version)
    }

    /// The debug key, if the app may be debugged.
    pub fn debug_key(&self) -> Option<[u8; 32]> {
        self.debug_key.iter().any(|&b| b != 0).then_some(self.debug_key)
    }

    /// The same header for the same `image` with `key` as its debug key (digest recomputed).
    pub fn with_debug_key(&self, key: Option<[u8; 32]>, image: &[u8]) -> Header {
        let mut h = *self;
        h.debug_key = key.unwrap_or([0; 32]);
        let mut hasher = ImageHasher::new(&h.to_bytes());
        hasher.update(image);
        h.digest = hasher.finish();
        h
    }

    /// Serialises the header, with `digest` as given.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[O_MAGIC..O_MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
        b[O_FORMAT..O_FORMAT + 2].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[O_HDR_SIZE..O_HDR_SIZE + 2].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
        b[O_IMAGE_SIZE..O_IMAGE_SIZE + 4].copy_from_slice(&self.image_size.to_le_bytes());
        b[O_LOAD_ADDR..O_LOAD_ADDR + 4].copy_from_slice(&self.load_addr.to_le_bytes());
        b[O_STACK_LIMIT..O_STACK_LIMIT + 4].copy_from_slice(&self.stack_limit.to_le_bytes());
        b[O_ABI_MAJOR..O_ABI_MAJOR + 2].copy_from_slice(&self.abi_major.to_le_bytes());
        b[O_ABI_MINOR..O_ABI_MINOR + 2].copy_from_slice(&self.abi_minor.to_le_bytes());
        b[O_FLAGS..O_FLAGS + 4].copy_from_slice(&self.flags.to_le_bytes());
        b[O_NAME..O_NAME + NAME_LEN].copy_from_slice(&self.name);
        b[O_VERSION..O_VERSION + VERSION_LEN].copy_from_slice(&self.version);
        b[O_DEBUG_KEY..O_DEBUG_KEY + 32].copy_from_slice(&self.debug_key);
        b[O_DIGEST..O_DIGEST + 32].copy_from_slice(&self.digest);
        b
    }
}

/// Incremental digest: feed the header, then the image in any number of chunks.
pub struct ImageHasher(Sha256);

impl ImageHasher {
    /// Starts a digest over the hashed part of `header`.
    pub fn new(header: &[u8; HEADER_SIZE]) -> Self {
        let mut h = Sha256::new();
        h.update(&header[..HASHED_LEN]);
        ImageHasher(h)
    }
    /// Adds image bytes.
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }
    /// The final digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// Builds a complete slot content (header ++ image) for `image` linked at `load_addr`.
/// Returns the header; the caller writes `header.to_bytes()` followed by `image`.
pub fn build_header(
    image: &[u8],
    load_addr: u32,
    stack_limit: u32,
    name: &str,
    version: &str,
    abi: (u16, u16),
) -> Header {
    let mut h = Header {
        image_size: image.len() as u32,
        load_addr,
        stack_limit,
        abi_major: abi.0,
        abi_minor: abi.1,
        flags: 0,
        name: [0; NAME_LEN],
        version: [0; VERSION_LEN],
        debug_key: [0; 32],
        digest: [0; 32],
    };
    let n = name.len().min(NAME_LEN - 1);
    h.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    let v = version.len().min(VERSION_LEN - 1);
    h.version[..v].copy_from_slice(&version.as_bytes()[..v]);
    let mut hasher = ImageHasher::new(&h.to_bytes());
    hasher.update(image);
    h.digest = hasher.finish();
    h
}

/// Checks `image` against the digest in `header`.
pub fn verify(header: &Header, image: &[u8]) -> Result<(), ImageError> {
    if image.len() != header.image_size as usize {
        return Err(ImageError::BadSize);
    }
    let mut hasher = ImageHasher::new(&header.to_bytes());
    hasher.update(image);
    if hasher.finish() == header.digest {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec::Vec;

    const T: Target = Target { exec_base: 0x0020_0000, exec_size: 0x20_0000, slot_capacity: 0x20_0000, abi: (1, 0) };

    fn sample() -> (Header, Vec<u8>) {
        let image: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        (build_header(&image, T.exec_base, 0x2800_0000, "hello", "1.2.3", (1, 0)), image)
    }

    #[test]
    fn build_parse_verify_roundtrip() {
        let (h, img) = sample();
        let p = Header::parse(&h.to_bytes(), &T).unwrap();
        assert_eq!(p, h);
        assert_eq!(p.name_str(), "hello");
        assert_eq!(p.version_str(), "1.2.3");
        verify(&p, &img).unwrap();
    }

    #[test]
    fn any_flipped_image_or_header_bit_is_detected() {
        let (h, img) = sample();
        for i in [0usize, 1, 500, 999] {
            let mut bad = img.clone();
            bad[i] ^= 0x10;
            assert_eq!(verify(&h, &bad), Err(ImageError::DigestMismatch));
        }
        let mut hb = h.to_bytes();
        hb[O_STACK_LIMIT] ^= 1;
        let p = Header::parse(&hb, &T).unwrap();
        assert_eq!(verify(&p, &img), Err(ImageError::DigestMismatch));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        let (h, _) = sample();
        let good = h.to_bytes();
        assert_eq!(Header::parse(&good[..100], &T), Err(ImageError::Truncated));
        assert_eq!(Header::parse(&[0xFF; HEADER_SIZE], &T), Err(ImageError::BadMagic));
        let mut b = good;
        b[O_FORMAT] = 9;
        assert_eq!(Header::parse(&b, &T), Err(ImageError::UnsupportedFormat));
        let mut b = good;
        b[0x90] = 1;
        assert_eq!(Header::parse(&b, &T), Err(ImageError::ReservedNotZero));
        // 0x60..0x80 is the debug key: any value parses, and it is covered by the digest.
        let mut b = good;
        b[0x70] = 1;
        assert_eq!(Header::parse(&b, &T).map(|h| h.debug_key[0x10]), Ok(1));
        let mut b = good;
        b[O_FLAGS] = 1;
        assert_eq!(Header::parse(&b, &T), Err(ImageError::ReservedNotZero), "no flags are defined yet");
        let mut b = good;
        b[O_IMAGE_SIZE..O_IMAGE_SIZE + 4].copy_from_slice(&0x40_0000u32.to_le_bytes());
        assert_eq!(Header::parse(&b, &T), Err(ImageError::BadSize));
        let mut b = good;
        b[O_IMAGE_SIZE..O_IMAGE_SIZE + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&b, &T), Err(ImageError::BadSize));
        let mut b = good;
        b[O_LOAD_ADDR] = 4;
        assert_eq!(Header::parse(&b, &T), Err(ImageError::BadLoadAddress));
        let mut b = good;
        b[O_ABI_MINOR] = 1;
        assert_eq!(Header::parse(&b, &T), Err(ImageError::AbiTooNew));
    }

    #[test]
    fn verify_rejects_wrong_length() {
        let (h, img) = sample();
        assert_eq!(verify(&h, &img[..999]), Err(ImageError::BadSize));
    }
}
