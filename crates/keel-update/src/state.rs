//! The persistent update state: what the journal stores, and its 116-byte encoding.

/// An app slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `app-a`.
    A,
    /// `app-b`.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Index 0 (A) or 1 (B).
    pub fn index(self) -> usize {
        self as usize
    }

    /// `"A"` or `"B"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

/// How a trial install gets confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Only by the app (the confirm system call); the grace time passing without it rolls back.
    ByApp,
    /// Also by the visor, once the app has run for the grace time with the cloud link up the
    /// whole time; the grace time passing without the link rolls back.
    ByLink,
}

/// Trial policy from the bundle's manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrialPolicy {
    /// App crashes (faults or watchdog) during the trial that roll back (at least 1).
    pub max_crashes: u8,
    /// Seconds the trial may run unconfirmed.
    pub grace_s: u32,
    /// Who may confirm.
    pub confirm: Confirm,
}

impl Default for TrialPolicy {
    fn default() -> Self {
        TrialPolicy { max_crashes: 3, grace_s: 60, confirm: Confirm::ByLink }
    }
}

/// Why an update did not complete: the one list of reason codes, defined in `keel-abi` (the
/// journal stores the code as one byte; the values never change).
pub use keel_proto::msg::UpdateReason as Reason;

/// How the last update ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Installed and confirmed.
    Confirmed,
    /// Installed, then rolled back to the previous app.
    RolledBack(Reason),
    /// Refused before anything was written.
    Refused(Reason),
    /// Failed while downloading or installing; the running app is unchanged.
    Failed(Reason),
}

/// A download in progress (into the slot that is not active).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Downloading {
    /// Manifest sequence number.
    pub seq: u64,
    /// SHA-256 of the layer (from the verified manifest).
    pub digest: [u8; 32],
    /// Layer size.
    pub size: u32,
    /// Bytes written and journaled (page aligned, or `size`): the download resumes here.
    pub done: u32,
    /// Trial policy to apply once installed.
    pub policy: TrialPolicy,
}

/// An installed update on trial (in the slot that is not active).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trial {
    /// Manifest sequence number.
    pub seq: u64,
    /// Boots of the trial image so far.
    pub boots: u8,
    /// Crashes of the trial app so far.
    pub crashes: u8,
    /// Trial policy.
    pub policy: TrialPolicy,
}

/// What the update process is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing.
    Idle,
    /// Downloading into the inactive slot.
    Downloading(Downloading),
    /// Trial of the inactive slot's image.
    Trial(Trial),
}

/// The whole persistent state. A device without a journal record is in
/// [`UpdateState::FACTORY`]: slot A active, nothing installed by update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdateState {
    /// The slot with the confirmed app.
    pub active: Slot,
    /// Manifest sequence of the confirmed app (0: factory image). Offers must be above it.
    pub installed_seq: u64,
    /// Current phase.
    pub phase: Phase,
    /// The last update that ended: its sequence number and outcome.
    pub last: Option<(u64, Outcome)>,
}

impl UpdateState {
    /// The state of a device no update ever touched.
    pub const FACTORY: UpdateState = UpdateState { active: Slot::A, installed_seq: 0, phase: Phase::Idle, last: None };

    /// Encoded size.
    pub const LEN: usize = 84;
    const VERSION: u8 = 1;

    /// Encodes into `LEN` bytes (little endian).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = Self::VERSION;
        b[1] = self.active.index() as u8;
        b[8..16].copy_from_slice(&self.installed_seq.to_le_bytes());
        let put_policy = |b: &mut [u8; Self::LEN], p: &TrialPolicy| {
            b[7] = p.max_crashes;
            b[72..76].copy_from_slice(&p.grace_s.to_le_bytes());
            b[76] = match p.confirm {
                Confirm::ByApp => 0,
                Confirm::ByLink => 1,
            };
        };
        match &self.phase {
            Phase::Idle => b[2] = 0,
            Phase::Downloading(d) => {
                b[2] = 1;
                b[16..24].copy_from_slice(&d.seq.to_le_bytes());
                b[32..64].copy_from_slice(&d.digest);
                b[64..68].copy_from_slice(&d.size.to_le_bytes());
                b[68..72].copy_from_slice(&d.done.to_le_bytes());
                put_policy(&mut b, &d.policy);
            }
            Phase::Trial(t) => {
                b[2] = 2;
                b[16..24].copy_from_slice(&t.seq.to_le_bytes());
                b[5] = t.boots;
                b[6] = t.crashes;
                put_policy(&mut b, &t.policy);
            }
        }
        if let Some((seq, o)) = self.last {
            let (kind, reason) = match o {
                Outcome::Confirmed => (1, 0),
                Outcome::RolledBack(r) => (2, r as u8),
                Outcome::Refused(r) => (3, r as u8),
                Outcome::Failed(r) => (4, r as u8),
            };
            b[3] = kind;
            b[4] = reason;
            b[24..32].copy_from_slice(&seq.to_le_bytes());
        }
        b
    }

    /// Decodes; `None` for bytes no version of [`Self::encode`] produces.
    pub fn decode(b: &[u8]) -> Option<UpdateState> {
        if b.len() < Self::LEN || b[0] != Self::VERSION {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let active = match b[1] {
            0 => Slot::A,
            1 => Slot::B,
            _ => return None,
        };
        let policy = TrialPolicy {
            max_crashes: b[7],
            grace_s: u32_at(72),
            confirm: match b[76] {
                0 => Confirm::ByApp,
                1 => Confirm::ByLink,
                _ => return None,
            },
        };
        let phase = match b[2] {
            0 => Phase::Idle,
            1 => {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&b[32..64]);
                let d = Downloading { seq: u64_at(16), digest, size: u32_at(64), done: u32_at(68), policy };
                if d.done > d.size {
                    return None;
                }
                Phase::Downloading(d)
            }
            2 => Phase::Trial(Trial { seq: u64_at(16), boots: b[5], crashes: b[6], policy }),
            _ => return None,
        };
        let last = match b[3] {
            0 => None,
            kind => {
                let r = Reason::from_u8(b[4]);
                let o = match (kind, r) {
                    (1, _) => Outcome::Confirmed,
                    (2, Some(r)) => Outcome::RolledBack(r),
                    (3, Some(r)) => Outcome::Refused(r),
                    (4, Some(r)) => Outcome::Failed(r),
                    _ => return None,
                };
                Some((u64_at(24), o))
            }
        };
        Some(UpdateState { active, installed_seq: u64_at(8), phase, last })
    }
}
