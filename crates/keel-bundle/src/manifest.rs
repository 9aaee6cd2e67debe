//! The decoded manifest: sequence number, components (layers) and Keel policies.

use crate::cbor::{Key, Reader, Seen};
use crate::wire::*;
use crate::{
    sha256, Error, PublicKey, Target, DEFAULT_CONNECTIVITY_GRACE_TIME_S, DEFAULT_MAX_POLITENESS_TIME_S,
    DEFAULT_MAX_TRIAL_CRASHES, MAX_BUNDLE_SIZE, MAX_COMPONENTS, MAX_COMPONENT_ID_LEN, MAX_TEXT_LEN,
};

/// One component of the manifest: a layer, i.e. one flash image and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component<'a> {
    /// Component id (SUIT component identifier `[bstr]`): `"app"`, later `"visor"`,
    /// `"app-data"`. 1 to [`MAX_COMPONENT_ID_LEN`] bytes of `[a-z0-9-]`, starting with a letter.
    /// The layer travels as integrated payload `"#" + id`.
    pub id: &'a str,
    /// What the layer is written to.
    pub target: Target,
    /// Layer size in bytes (suit-parameter-image-size).
    pub size: u32,
    /// SHA-256 of the layer bytes (suit-parameter-image-digest); also the layer's address on
    /// the server.
    pub digest: [u8; 32],
}

impl<'a> Component<'a> {
    const EMPTY: Component<'static> = Component { id: "", target: Target::AppSlot, size: 0, digest: [0; 32] };

    /// Checks that `bytes` are this component's layer: same size and SHA-256.
    pub fn verify_layer(&self, bytes: &[u8]) -> Result<(), Error> {
        if bytes.len() != self.size as usize || sha256(bytes) != self.digest {
            return Err(Error::LayerDigestMismatch);
        }
        Ok(())
    }

    /// Checks that the layer fits the region `region_capacity` gives for it.
    pub fn check_fits(&self, region_capacity: impl Fn(&Component<'_>) -> Option<u32>) -> Result<(), Error> {
        match region_capacity(self) {
            None => Err(Error::NoRegion),
            Some(cap) if self.size > cap => Err(Error::LayerTooLarge),
            Some(_) => Ok(()),
        }
    }
}

/// The Keel policies of a manifest (SUIT has no place for them; they travel in the private-use
/// manifest member `-256`). Absent fields take the defaults of [`Policies::default`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policies<'a> {
    /// App name, at most [`MAX_TEXT_LEN`] bytes, no NUL. Default empty.
    pub app_name: &'a str,
    /// App version string, at most [`MAX_TEXT_LEN`] bytes, no NUL. Default empty.
    pub app_version: &'a str,
    /// Lowest visor version that may install the bundle, encoded by [`crate::visor_version`].
    /// Default 0 (any).
    pub min_visor_version: u32,
    /// Ed25519 public key allowed to open remote debugging sessions. `None` (the default):
    /// remote debugging is disabled for this app.
    pub debug_key: Option<PublicKey>,
    /// Crashes allowed while the update is on trial; the next one rolls back to the previous
    /// bundle. 1..=255, default [`DEFAULT_MAX_TRIAL_CRASHES`].
    pub max_trial_crashes: u8,
    /// Longest time in seconds the visor waits for the running app to accept an install before
    /// installing anyway. 0 (the default): install as soon as the update is verified.
    pub max_politeness_time_s: u32,
    /// The visor confirms the update by itself once the new app has run this many seconds with
    /// the cloud link up. 0: only the app's explicit confirmation ends the trial. Default
    /// [`DEFAULT_CONNECTIVITY_GRACE_TIME_S`].
    pub connectivity_grace_time_s: u32,
}

impl Default for Policies<'_> {
    fn default() -> Self {
        Policies {
            app_name: "",
            app_version: "",
            min_visor_version: 0,
            debug_key: None,
            max_trial_crashes: DEFAULT_MAX_TRIAL_CRASHES,
            max_politeness_time_s: DEFAULT_MAX_POLITENESS_TIME_S,
            connectivity_grace_time_s: DEFAULT_CONNECTIVITY_GRACE_TIME_S,
        }
    }
}

fn valid_text(s: &str) -> bool {
    s.len() <= MAX_TEXT_LEN && !s.bytes().any(|b| b == 0)
}

impl<'a> Policies<'a> {
    /// Checks the value ranges (also done when decoding and building).
    pub fn validate(&self) -> Result<(), Error> {
        if !valid_text(self.app_name) {
            return Err(Error::InvalidValue("app name"));
        }
        if !valid_text(self.app_version) {
            return Err(Error::InvalidValue("app version"));
        }
        if self.max_trial_crashes == 0 {
            return Err(Error::InvalidValue("max trial crashes"));
        }
        Ok(())
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, Error> {
        const WHAT: &str = "Keel policies";
        let n = r.map(WHAT)?;
        let mut p = Policies::default();
        let mut seen = Seen::new();
        for _ in 0..n {
            match r.key(WHAT)? {
                Key::Int(POLICY_APP_NAME) => {
                    seen.mark(1, "app name")?;
                    p.app_name = r.text("app name")?;
                }
                Key::Int(POLICY_APP_VERSION) => {
                    seen.mark(2, "app version")?;
                    p.app_version = r.text("app version")?;
                }
                Key::Int(POLICY_MIN_VISOR_VERSION) => {
                    seen.mark(3, "min visor version")?;
                    p.min_visor_version = r.u32("min visor version")?;
                }
                Key::Int(POLICY_DEBUG_KEY) => {
                    seen.mark(4, "debug key")?;
                    p.debug_key = Some(r.byte_array("debug key")?);
                }
                Key::Int(POLICY_MAX_TRIAL_CRASHES) => {
                    seen.mark(5, "max trial crashes")?;
                    let v = r.uint("max trial crashes")?;
                    p.max_trial_crashes = u8::try_from(v).map_err(|_| Error::InvalidValue("max trial crashes"))?;
                }
                Key::Int(POLICY_MAX_POLITENESS_TIME) => {
                    seen.mark(6, "max politeness time")?;
                    p.max_politeness_time_s = r.u32("max politeness time")?;
                }
                Key::Int(POLICY_CONNECTIVITY_GRACE_TIME) => {
                    seen.mark(7, "connectivity grace time")?;
                    p.connectivity_grace_time_s = r.u32("connectivity grace time")?;
                }
                // Negative keys are optional extensions an older visor may ignore.
                Key::Int(k) if k < 0 => r.skip("ignorable Keel policy")?,
                _ => return Err(Error::Unsupported("Keel policy")),
            }
        }
        p.validate()?;
        Ok(p)
    }
}

/// A decoded manifest. It borrows its strings from the envelope bytes.
///
/// Obtained from [`crate::verify_envelope`] / [`crate::Envelope::verify`] (authenticated) or
/// [`crate::Envelope::manifest_unverified`] (digest checked, signature not).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// suit-manifest-sequence-number: grows with every bundle; the visor is to refuse a bundle
    /// whose number is lower than that of the bundle it runs (anti-rollback).
    pub sequence: u64,
    /// The Keel policies.
    pub policies: Policies<'a>,
    components: [Component<'a>; MAX_COMPONENTS],
    count: usize,
}

/// Checks a component id: 1..=16 bytes of `[a-z0-9-]`, starting with a letter.
pub(crate) fn valid_component_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_COMPONENT_ID_LEN
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Decodes `bstr .cbor SUIT_Digest` contents: `[-16, bstr(32)]`.
pub(crate) fn decode_digest(bytes: &[u8]) -> Result<[u8; 32], Error> {
    const WHAT: &str = "SUIT_Digest";
    let mut r = Reader::new(bytes);
    match r.array(WHAT)? {
        2 => {}
        n if n > 2 => return Err(Error::Unsupported("SUIT_Digest extensions")),
        _ => return Err(Error::Malformed(WHAT)),
    }
    if r.int("suit-digest-algorithm-id")? != ALG_SHA256 {
        return Err(Error::UnsupportedDigestAlgorithm);
    }
    let d = r.byte_array("suit-digest-bytes")?;
    r.end(WHAT)?;
    Ok(d)
}

impl<'a> Manifest<'a> {
    /// The components, in manifest order (1..=[`MAX_COMPONENTS`]).
    pub fn components(&self) -> &[Component<'a>] {
        self.components.get(..self.count).unwrap_or(&[])
    }

    /// The component with id `id`.
    pub fn component(&self, id: &str) -> Option<&Component<'a>> {
        self.components().iter().find(|c| c.id == id)
    }

    /// Sum of all layer sizes.
    pub fn total_size(&self) -> u64 {
        self.components().iter().map(|c| u64::from(c.size)).sum()
    }

    /// Checks that every layer fits its region; see [`Component::check_fits`].
    pub fn check_regions(&self, region_capacity: impl Fn(&Component<'_>) -> Option<u32>) -> Result<(), Error> {
        self.components().iter().try_for_each(|c| c.check_fits(&region_capacity))
    }

    /// Decodes the contents of the `suit-manifest` bstr.
    pub(crate) fn decode(bytes: &'a [u8]) -> Result<Self, Error> {
        const WHAT: &str = "SUIT_Manifest";
        let mut r = Reader::new(bytes);
        let n = r.map(WHAT)?;
        let mut seen = Seen::new();
        let mut sequence = 0;
        let mut common: &[u8] = &[];
        let mut policies = Policies::default();
        for _ in 0..n {
            match r.key(WHAT)? {
                Key::Int(MANIFEST_VERSION) => {
                    seen.mark(1, "suit-manifest-version")?;
                    if r.uint("suit-manifest-version")? != 1 {
                        return Err(Error::UnsupportedManifestVersion);
                    }
                }
                Key::Int(MANIFEST_SEQUENCE_NUMBER) => {
                    seen.mark(2, "suit-manifest-sequence-number")?;
                    sequence = r.uint("suit-manifest-sequence-number")?;
                }
                Key::Int(MANIFEST_COMMON) => {
                    seen.mark(3, "suit-common")?;
                    common = r.bytes("suit-common")?;
                }
                Key::Int(MANIFEST_KEEL_POLICIES) => {
                    seen.mark(4, "Keel policies")?;
                    policies = Policies::decode(&mut r)?;
                }
                _ => return Err(Error::Unsupported("SUIT_Manifest member")),
            }
        }
        r.end(WHAT)?;
        for (bit, name) in [(1, "suit-manifest-version"), (2, "suit-manifest-sequence-number"), (3, "suit-common")] {
            if !seen.has(bit) {
                return Err(Error::MissingField(name));
            }
        }
        let mut m = Manifest { sequence, policies, components: [Component::EMPTY; MAX_COMPONENTS], count: 0 };
        m.decode_common(common)?;
        if m.total_size() > MAX_BUNDLE_SIZE as u64 {
            return Err(Error::TooLarge);
        }
        Ok(m)
    }

    fn decode_common(&mut self, bytes: &'a [u8]) -> Result<(), Error> {
        const WHAT: &str = "SUIT_Common";
        let mut r = Reader::new(bytes);
        let n = r.map(WHAT)?;
        let mut seen = Seen::new();
        let mut shared: &[u8] = &[];
        for _ in 0..n {
            match r.key(WHAT)? {
                Key::Int(COMMON_COMPONENTS) => {
                    seen.mark(1, "suit-components")?;
                    self.decode_components(&mut r)?;
                }
                Key::Int(COMMON_SHARED_SEQUENCE) => {
                    seen.mark(2, "suit-shared-sequence")?;
                    shared = r.bytes("suit-shared-sequence")?;
                }
                _ => return Err(Error::Unsupported("SUIT_Common member")),
            }
        }
        r.end(WHAT)?;
        if !seen.has(1) {
            return Err(Error::MissingField("suit-components"));
        }
        if !seen.has(2) {
            return Err(Error::MissingField("suit-shared-sequence"));
        }
        self.decode_shared_sequence(shared)
    }

    fn decode_components(&mut self, r: &mut Reader<'a>) -> Result<(), Error> {
        let n = r.array("suit-components")?;
        if n == 0 {
            return Err(Error::MissingField("suit-components: no component"));
        }
        if n > MAX_COMPONENTS as u64 {
            return Err(Error::TooManyComponents);
        }
        for i in 0..n as usize {
            match r.array("SUIT_Component_Identifier")? {
                1 => {}
                0 => return Err(Error::InvalidValue("component id")),
                _ => return Err(Error::Unsupported("component identifier with more than one element")),
            }
            let id = core::str::from_utf8(r.bytes("SUIT_Component_Identifier")?)
                .map_err(|_| Error::InvalidValue("component id"))?;
            if !valid_component_id(id) {
                return Err(Error::InvalidValue("component id"));
            }
            if self.components().iter().any(|c| c.id == id) {
                return Err(Error::InvalidValue("duplicate component id"));
            }
            if let Some(c) = self.components.get_mut(i) {
                c.id = id;
            }
            self.count = i + 1;
        }
        Ok(())
    }

    fn decode_shared_sequence(&mut self, bytes: &'a [u8]) -> Result<(), Error> {
        const WHAT: &str = "suit-shared-sequence";
        let mut r = Reader::new(bytes);
        let n = r.array(WHAT)?;
        if n % 2 != 0 {
            return Err(Error::Malformed(WHAT));
        }
        // Per component: bit 0 digest, bit 1 size, bit 2 target, bit 3 parameters given.
        let mut have = [0u8; MAX_COMPONENTS];
        let mut index = 0usize;
        for _ in 0..n / 2 {
            let cmd = r.int("SUIT command")?;
            match u64::try_from(cmd) {
                Ok(DIRECTIVE_SET_COMPONENT_INDEX) => {
                    let i = r.uint("suit-directive-set-component-index")?;
                    if i >= self.count as u64 {
                        return Err(Error::InvalidValue("component index"));
                    }
                    index = i as usize;
                }
                Ok(DIRECTIVE_OVERRIDE_PARAMETERS) => {
                    let (Some(c), Some(h)) = (self.components.get_mut(index), have.get_mut(index)) else {
                        return Err(Error::InvalidValue("component index"));
                    };
                    if *h & 8 != 0 {
                        return Err(Error::DuplicateField("suit-directive-override-parameters"));
                    }
                    *h = 8 | decode_parameters(&mut r, c)?;
                }
                _ => return Err(Error::Unsupported("SUIT command")),
            }
        }
        r.end(WHAT)?;
        for h in have.iter().take(self.count) {
            if h & 1 == 0 {
                return Err(Error::MissingField("suit-parameter-image-digest"));
            }
            if h & 2 == 0 {
                return Err(Error::MissingField("suit-parameter-image-size"));
            }
            if h & 4 == 0 {
                return Err(Error::MissingField("Keel target parameter"));
            }
        }
        Ok(())
    }
}

/// Decodes one `SUIT_Parameters` map into `c`; returns which of digest (1), size (2) and
/// target (4) it set.
fn decode_parameters(r: &mut Reader<'_>, c: &mut Component<'_>) -> Result<u8, Error> {
    const WHAT: &str = "SUIT_Parameters";
    let n = r.map(WHAT)?;
    let mut have = 0u8;
    let mut seen = Seen::new();
    for _ in 0..n {
        match r.key(WHAT)? {
            Key::Int(PARAM_IMAGE_DIGEST) => {
                seen.mark(1, "suit-parameter-image-digest")?;
                c.digest = decode_digest(r.bytes("suit-parameter-image-digest")?)?;
                have |= 1;
            }
            Key::Int(PARAM_IMAGE_SIZE) => {
                seen.mark(2, "suit-parameter-image-size")?;
                let size = r.uint("suit-parameter-image-size")?;
                if size == 0 {
                    return Err(Error::InvalidValue("suit-parameter-image-size"));
                }
                if size > MAX_BUNDLE_SIZE as u64 {
                    return Err(Error::TooLarge);
                }
                c.size = size as u32;
                have |= 2;
            }
            Key::Int(PARAM_KEEL_TARGET) => {
                seen.mark(3, "Keel target parameter")?;
                c.target = Target::from_wire(r.uint("Keel target parameter")?).ok_or(Error::UnknownTarget)?;
                have |= 4;
            }
            _ => return Err(Error::Unsupported("SUIT parameter")),
        }
    }
    Ok(have)
}
