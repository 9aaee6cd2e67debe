//! A compact flash layout and test images shared by the update tests.
#![allow(dead_code)]

use keel_flash::layout::Partition;
use keel_flash::sim::SimFlash;
use keel_flash::{Nor, PAGE_SIZE};
use keel_image::{build_header, Target, HEADER_SIZE};
use keel_update::{Confirm, Offer, TrialPolicy, Updater};
use sha2::{Digest, Sha256};

pub const JOURNAL: Partition = Partition { name: "journal", offset: 0, size: 2 * PAGE_SIZE };
pub const SLOT_A: Partition = Partition { name: "app-a", offset: 2 * PAGE_SIZE, size: 8 * PAGE_SIZE };
pub const SLOT_B: Partition = Partition { name: "app-b", offset: 10 * PAGE_SIZE, size: 8 * PAGE_SIZE };
pub const FLASH: u32 = 18 * PAGE_SIZE;

pub const TARGET: Target =
    Target { exec_base: 0x0020_0000, exec_size: 0x0020_0000, slot_capacity: 8 * PAGE_SIZE - 256, abi: (1, 0) };

pub fn updater() -> Updater {
    Updater::new(JOURNAL, SLOT_A, SLOT_B, TARGET)
}

/// Slot bytes (header ++ image) of app `version`, `len` image bytes.
pub fn image(version: &str, len: usize) -> Vec<u8> {
    let body: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(version.as_bytes()[0])).collect();
    let h = build_header(&body, 0x0020_0000, 0, "app", version, (1, 0));
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(&body);
    v
}

pub fn offer(seq: u64, layer: &[u8], policy: TrialPolicy) -> Offer {
    Offer { seq, digest: Sha256::digest(layer).into(), size: layer.len() as u32, policy }
}

pub fn policy() -> TrialPolicy {
    TrialPolicy { max_crashes: 3, grace_s: 60, confirm: Confirm::ByApp }
}

/// A factory device: `v1` in slot A, the journal erased.
pub fn factory(v1: &[u8]) -> Nor<SimFlash> {
    let mut f = Nor::new(SimFlash::new(FLASH));
    let mut padded = v1.to_vec();
    padded.resize(v1.len().div_ceil(16) * 16, 0xFF);
    let pages = (padded.len() as u32).div_ceil(PAGE_SIZE);
    f.erase_range(SLOT_A.offset, SLOT_A.offset + pages * PAGE_SIZE).unwrap();
    f.program(SLOT_A.offset, &padded).unwrap();
    f
}

/// The version string in a slot's valid image.
pub fn version_in(up: &Updater, f: &Nor<SimFlash>, slot: keel_update::Slot) -> Option<String> {
    up.check_slot(f, slot).ok().map(|h| h.version_str().to_string())
}

pub const HEADER: usize = HEADER_SIZE;
