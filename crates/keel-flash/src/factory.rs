//! Factory data: the device's identity, written once at provisioning into the
//! [`FACTORY`](crate::layout::FACTORY) partition and only read by the visor afterwards.
//!
//! Layout (little endian), format version 1:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 4 | magic `"KFAC"` |
//! | 0x04 | 2 | format version (1) |
//! | 0x06 | 2 | length of the record in bytes (0xC0) |
//! | 0x08 | 16 | device id (random, shown as `kd` + 32 hex digits) |
//! | 0x18 | 32 | device secret key (X25519 static key of the cloud link) |
//! | 0x38 | 32 | pinned server public key (all zero until provisioned for a server) |
//! | 0x58 | 64 | server host name or address, NUL padded |
//! | 0x98 | 2 | server port |
//! | 0x9A | 32 | trusted update signer: Ed25519 public key of bundle signatures (all zero: none, every update is refused) |
//! | 0xBA | 2 | reserved, zero |
//! | 0xBC | 4 | CRC-32 of bytes 0x00..0xBC |

use crate::crc32;

/// Size of the factory record.
pub const FACTORY_LEN: usize = 0xC0;
const MAGIC: u32 = 0x4341_464B; // "KFAC"

/// Decoded factory data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Factory {
    /// Device id.
    pub device_id: [u8; 16],
    /// Device secret key.
    pub device_key: [u8; 32],
    /// Pinned server public key.
    pub server_key: [u8; 32],
    /// Server host, NUL padded.
    pub server_host: [u8; 64],
    /// Server port.
    pub server_port: u16,
    /// Ed25519 public key whose bundle signatures the visor trusts (all zero: none).
    pub signer_key: [u8; 32],
}

/// Why factory data could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactoryError {
    /// The partition does not start with a factory record (unprovisioned device).
    Missing,
    /// Unknown format version.
    UnsupportedVersion,
    /// CRC mismatch.
    Corrupt,
}

impl Factory {
    /// Parses the record at the start of `b`.
    pub fn parse(b: &[u8]) -> Result<Factory, FactoryError> {
        if b.len() < FACTORY_LEN {
            return Err(FactoryError::Missing);
        }
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if w(0) != MAGIC {
            return Err(FactoryError::Missing);
        }
        if u16::from_le_bytes([b[4], b[5]]) != 1 || u16::from_le_bytes([b[6], b[7]]) as usize != FACTORY_LEN {
            return Err(FactoryError::UnsupportedVersion);
        }
        if w(0xBC) != crc32(&b[..0xBC]) {
            return Err(FactoryError::Corrupt);
        }
        let mut f = Factory {
            device_id: [0; 16],
            device_key: [0; 32],
            server_key: [0; 32],
            server_host: [0; 64],
            server_port: u16::from_le_bytes([b[0x98], b[0x99]]),
            signer_key: [0; 32],
        };
        f.signer_key.copy_from_slice(&b[0x9A..0xBA]);
        f.device_id.copy_from_slice(&b[0x08..0x18]);
        f.device_key.copy_from_slice(&b[0x18..0x38]);
        f.server_key.copy_from_slice(&b[0x38..0x58]);
        f.server_host.copy_from_slice(&b[0x58..0x98]);
        Ok(f)
    }

    /// Serialises the record.
    pub fn to_bytes(&self) -> [u8; FACTORY_LEN] {
        let mut b = [0u8; FACTORY_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&1u16.to_le_bytes());
        b[6..8].copy_from_slice(&(FACTORY_LEN as u16).to_le_bytes());
        b[0x08..0x18].copy_from_slice(&self.device_id);
        b[0x18..0x38].copy_from_slice(&self.device_key);
        b[0x38..0x58].copy_from_slice(&self.server_key);
        b[0x58..0x98].copy_from_slice(&self.server_host);
        b[0x98..0x9A].copy_from_slice(&self.server_port.to_le_bytes());
        b[0x9A..0xBA].copy_from_slice(&self.signer_key);
        let c = crc32(&b[..0xBC]);
        b[0xBC..0xC0].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// The device id as the app sees it: `kd` followed by 32 lowercase hex digits.
    pub fn device_id_ascii(&self) -> [u8; 34] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 34];
        out[0] = b'k';
        out[1] = b'd';
        for (i, byte) in self.device_id.iter().enumerate() {
            out[2 + 2 * i] = HEX[(byte >> 4) as usize];
            out[3 + 2 * i] = HEX[(byte & 15) as usize];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Factory {
        Factory {
            device_id: [0xAB; 16],
            device_key: [1; 32],
            server_key: [2; 32],
            server_host: [0; 64],
            server_port: 7447,
            signer_key: [3; 32],
        }
    }

    #[test]
    fn roundtrip_and_ascii_id() {
        let f = sample();
        assert_eq!(Factory::parse(&f.to_bytes()).unwrap(), f);
        assert_eq!(&f.device_id_ascii(), b"kdabababababababababababababababab");
    }

    #[test]
    fn rejects_missing_and_corrupt_records() {
        assert_eq!(Factory::parse(&[0xFF; FACTORY_LEN]), Err(FactoryError::Missing));
        assert_eq!(Factory::parse(&[0; 10]), Err(FactoryError::Missing));
        let mut b = sample().to_bytes();
        b[0x20] ^= 1;
        assert_eq!(Factory::parse(&b), Err(FactoryError::Corrupt));
        let mut b = sample().to_bytes();
        b[4] = 2;
        assert_eq!(Factory::parse(&b), Err(FactoryError::UnsupportedVersion));
    }
}
